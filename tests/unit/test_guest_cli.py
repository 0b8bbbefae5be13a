"""`pcivm guest`: output, and one line for a user-facing failure."""

from pathlib import Path

from pcivm import cli
from pcivm.errors import GuestImageError
from pcivm.guest import cli as guest_cli
from pcivm.guest.image import GuestImage, KernelTree

IMAGE = GuestImage(
    kernel=KernelTree("6.1.0-56-cloud-amd64", Path("/c/bzImage"), Path("/c/modules")),
    initrd=Path("/c/initrd.gz"),
    vmlinux=Path("/c/vmlinux"),
)


def test_path_prints_kernel_then_initrd(monkeypatch, capsys):
    monkeypatch.setattr(guest_cli, "ensure_image", lambda: IMAGE)
    assert cli.main(["guest", "path"]) == 0
    assert capsys.readouterr().out == "/c/bzImage\n/c/initrd.gz\n"


def test_path_vmlinux(monkeypatch, capsys):
    monkeypatch.setattr(guest_cli, "ensure_image", lambda: IMAGE)
    assert cli.main(["guest", "path", "--vmlinux"]) == 0
    assert capsys.readouterr().out == "/c/vmlinux\n/c/initrd.gz\n"


def test_an_unbuildable_image_is_one_line_and_a_failure(monkeypatch, capsys):
    def fail():
        raise GuestImageError("cannot download busybox-static from the Debian archive: E: x")

    monkeypatch.setattr(guest_cli, "ensure_image", fail)
    assert cli.main(["guest", "build"]) != 0
    err = capsys.readouterr().err
    assert err == "pcivm: cannot download busybox-static from the Debian archive: E: x\n"


def test_unknown_subcommand_is_a_usage_error(capsys):
    assert cli.main(["guest", "frobnicate"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pcivm: guest:")
