"""Debian packages fetched with `apt-get download` and unpacked without installing them.

The guest image and the box are built only from Debian packages: their versions decide
when a cached build is stale, so resolving a version is separate from fetching it.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

from pcivm.errors import GuestImageError

log = logging.getLogger(__name__)

# The metapackage whose dependency names the kernel the guest and the box run.
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise GuestImageError(f"{argv[0]}: not found (a Debian host with apt is needed)") from exc
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise GuestImageError(f"{' '.join(argv[:3])}: {detail}")
    return proc.stdout


def candidate_version(package: str) -> str:
    """The version apt would download for `package` (needs `apt-get update` first)."""
    out = _run(["apt-cache", "policy", package])
    match = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    if not match or match.group(1) == "(none)":
        raise GuestImageError(f"package {package} is not known to apt (run 'apt-get update' first)")
    return match.group(1)


def candidate_records(packages: list[str]) -> dict[str, dict[str, str]]:
    """The control fields of the version apt would download of each package, in one call.

    One `apt-cache` run costs about half a second (it loads the whole cache), and the
    image's freshness is checked on every use, so all packages are asked at once.
    """
    out = _run(["apt-cache", "show", "--no-all-versions", *packages])
    records: dict[str, dict[str, str]] = {}
    for paragraph in out.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+):[ \t]*(.*)$", paragraph, re.M))
        if "Package" in fields:
            records.setdefault(fields["Package"], fields)
    missing = [p for p in packages if p not in records]
    if missing:
        raise GuestImageError(
            f"package {missing[0]} is not known to apt (run 'apt-get update' first)"
        )
    return records


def pinned_dependency(fields: dict[str, str], prefix: str) -> tuple[str, str]:
    """The first `Depends` entry named `prefix...` with an exact `(= version)` pin."""
    for entry in fields.get("Depends", "").split(","):
        match = re.fullmatch(r"\s*(\S+)\s*\(=\s*([^)\s]+)\s*\)\s*", entry)
        if match and match.group(1).startswith(prefix):
            return match.group(1), match.group(2)
    raise GuestImageError(f"{fields.get('Package', '?')} has no pinned dependency on {prefix}*")


def parse_depends(field: str) -> list[tuple[str, str | None, str | None]]:
    """`a (= 1), b (>= 2) | c` -> [("a", "=", "1"), ("b", ">=", "2")]: the first
    alternative of each entry, with its version relation if it has one."""
    entries = []
    for entry in field.split(","):
        first = entry.split("|")[0].strip()
        match = re.fullmatch(r"(\S+?)(?::\S+)?\s*(?:\(\s*([<>=]+)\s*([^)\s]+)\s*\))?", first)
        if match:
            entries.append((match.group(1), match.group(2), match.group(3)))
    return entries


def version_satisfies(version: str, relation: str, wanted: str) -> bool:
    """dpkg's own comparison (`>=`, `<<`, ...) of two Debian versions."""
    op = {">=": "ge", "<=": "le", ">>": "gt", "<<": "lt", "=": "eq", ">": "ge", "<": "le"}
    proc = subprocess.run(
        ["dpkg", "--compare-versions", version, op[relation], wanted], check=False
    )
    return proc.returncode == 0


def dependency_versions(package: str, version: str, prefixes: tuple[str, ...]) -> dict[str, str]:
    """The dependencies of `package` at `version` named `prefix...`, each with the version
    to fetch: the pinned one for `(= v)`, else the candidate, checked against the relation.

    A kernel's headers pin their -common headers exactly but take any newer linux-kbuild,
    and the archive keeps only the newest kbuild: the pinned version may be gone."""
    out = _run(["apt-cache", "show", f"{package}={version}"])
    fields = dict(re.findall(r"^([\w-]+):[ \t]*(.*)$", out.split("\n\n")[0], re.M))
    chosen = {}
    for name, relation, wanted in parse_depends(fields.get("Depends", "")):
        if not name.startswith(prefixes):
            continue
        if relation == "=":
            chosen[name] = wanted
            continue
        candidate = candidate_version(name)
        if relation and not version_satisfies(candidate, relation, wanted):
            raise GuestImageError(
                f"{package} {version} needs {name} ({relation} {wanted}); apt offers {candidate}"
            )
        chosen[name] = candidate
    return chosen


def kernel_package() -> str:
    """The versioned kernel package `linux-image-cloud-amd64` depends on."""
    out = _run(["apt-cache", "depends", KERNEL_METAPACKAGE])
    for line in out.splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if match:
            return match.group(1)
    raise GuestImageError(f"{KERNEL_METAPACKAGE} names no kernel package")


def kernel_release(kernel_pkg: str) -> str:
    """`linux-image-6.1.0-56-cloud-amd64` -> `6.1.0-56-cloud-amd64` (uname -r)."""
    return kernel_pkg.removeprefix("linux-image-")


def download(package: str, dest: Path, version: str | None = None) -> Path:
    """Fetch the .deb of `package` (its candidate unless `version` is given) into `dest`
    (once) and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = candidate_version(package)
    existing = _find_deb(dest, package, version)
    if existing:
        return existing
    log.info("downloading %s %s", package, version)
    try:
        _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=dest)
    except GuestImageError as exc:
        raise GuestImageError(f"cannot download {package} from the Debian archive: {exc}") from exc
    found = _find_deb(dest, package, version)
    if not found:
        raise GuestImageError(f"apt-get download {package} left no .deb in {dest}")
    return found


def _find_deb(dest: Path, package: str, version: str) -> Path | None:
    # apt-get names files package_version_arch.deb with ':' in an epoch quoted as %3a.
    quoted = version.replace(":", "%3a")
    for path in dest.glob(f"{package}_*.deb"):
        if path.name.startswith(f"{package}_{quoted}_"):
            return path
    return None


def extract(deb: Path, root: Path) -> None:
    """Unpack a .deb's files under `root` (no maintainer scripts run)."""
    root.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(root)])


def extract_member(deb: Path, member: str, dest: Path) -> Path:
    """Unpack one file of a .deb's data (e.g. `./usr/src/linux-source-6.1.tar.xz`) into
    `dest`, keeping its path below `dest`, without unpacking the rest."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise GuestImageError("dpkg-deb: not found (a Debian host with apt is needed)") from exc
    with fsys:
        tar = subprocess.run(
            ["tar", "-x", "-C", str(dest), member],
            stdin=fsys.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
    if fsys.returncode != 0 or tar.returncode != 0:
        detail = (tar.stderr.strip().splitlines() or ["failed"])[-1]
        raise GuestImageError(f"cannot unpack {member} from {deb.name}: {detail}")
    return dest / member
