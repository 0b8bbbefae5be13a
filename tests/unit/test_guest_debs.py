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
