"""Reading apt's answers (apt itself is replaced by canned output)."""

import pytest

from pcivm.errors import GuestImageError
from pcivm.guest import debs

SHOW = """\
Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
Description: Linux for x86-64 cloud (meta-package)

Package: busybox-static
Version: 1:1.35.0-4+deb12u1+b1
Depends: libc6
"""


def test_candidate_records_in_one_call(monkeypatch):
    calls = []
    monkeypatch.setattr(debs, "_run", lambda argv, cwd=None: calls.append(argv) or SHOW)
    records = debs.candidate_records(["linux-image-cloud-amd64", "busybox-static"])
    assert len(calls) == 1
    assert records["busybox-static"]["Version"] == "1:1.35.0-4+deb12u1+b1"
    assert debs.pinned_dependency(records["linux-image-cloud-amd64"], "linux-image-") == (
        "linux-image-6.1.0-56-cloud-amd64",
        "6.1.192-2",
    )


def test_unknown_package_names_itself(monkeypatch):
    monkeypatch.setattr(debs, "_run", lambda argv, cwd=None: SHOW)
    with pytest.raises(GuestImageError, match="no-such-package"):
        debs.candidate_records(["busybox-static", "no-such-package"])


def test_unpinned_dependency_is_an_error():
    with pytest.raises(GuestImageError, match="no pinned dependency"):
        debs.pinned_dependency(
            {"Package": "x", "Depends": "linux-image-foo, libc6 (>= 2)"}, "linux-image-"
        )


def test_missing_apt_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(GuestImageError, match="apt-cache: not found"):
        debs.candidate_records(["busybox-static"])


HEADERS_SHOW = """\
Package: linux-headers-6.1.0-56-cloud-amd64
Version: 6.1.192-2
Depends: linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2), \
linux-compiler-gcc-12-x86
"""


def test_parse_depends_keeps_relations_and_first_alternatives():
    assert debs.parse_depends("a (= 1.0-2), b (>= 2:3) | c, d:any, e") == [
        ("a", "=", "1.0-2"),
        ("b", ">=", "2:3"),
        ("d", None, None),
        ("e", None, None),
    ]


def test_headers_take_exact_common_and_any_newer_kbuild(monkeypatch):
    # The archive keeps only the newest linux-kbuild: the headers' own version may be gone.
    def fake_run(argv, cwd=None):
        if argv[:2] == ["apt-cache", "show"]:
            return HEADERS_SHOW
        assert argv[:2] == ["apt-cache", "policy"]
        return f"{argv[2]}:\n  Installed: (none)\n  Candidate: 6.1.192-3\n"

    monkeypatch.setattr(debs, "_run", fake_run)
    chosen = debs.dependency_versions(
        "linux-headers-6.1.0-56-cloud-amd64", "6.1.192-2", ("linux-headers-", "linux-kbuild-")
    )
    assert chosen == {"linux-headers-6.1.0-56-common": "6.1.192-2", "linux-kbuild-6.1": "6.1.192-3"}


def test_a_candidate_too_old_for_the_relation_is_an_error(monkeypatch):
    def fake_run(argv, cwd=None):
        if argv[:2] == ["apt-cache", "show"]:
            return HEADERS_SHOW
        return "x:\n  Candidate: 6.1.176-1\n"

    monkeypatch.setattr(debs, "_run", fake_run)
    with pytest.raises(GuestImageError, match=r"linux-kbuild-6.1 \(>= 6.1.192-2\).*6.1.176-1"):
        debs.dependency_versions("linux-headers-x", "6.1.192-2", ("linux-kbuild-",))
