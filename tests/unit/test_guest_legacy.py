"""Pieces of the old guest's module build that need no download."""

import pytest

from pcivm.errors import GuestImageError
from pcivm.guest import legacy


def test_source_package_follows_the_kernel_series():
    assert legacy.source_package("6.1.0-56-cloud-amd64") == "linux-source-6.1"
    assert legacy.source_package("6.12.9-amd64") == "linux-source-6.12"
    with pytest.raises(GuestImageError):
        legacy.source_package("weird")


def test_headers_makefile_points_into_the_private_root(tmp_path):
    release = "6.1.0-56-cloud-amd64"
    makefile = legacy.headers_dir(tmp_path, release) / "Makefile"
    makefile.parent.mkdir(parents=True)
    makefile.write_text("include /usr/src/linux-headers-6.1.0-56-common/Makefile\n")
    legacy.point_makefile_at(tmp_path, release)
    expected = f"include {tmp_path}/usr/src/linux-headers-6.1.0-56-common/Makefile\n"
    assert makefile.read_text() == expected
    # again, after the cache moved: still one root, the new one
    moved = tmp_path / "moved"
    (moved / "usr").mkdir(parents=True)
    (tmp_path / "usr").rename(moved / "usr")
    legacy.point_makefile_at(moved, release)
    assert legacy.headers_dir(moved, release).joinpath("Makefile").read_text() == (
        f"include {moved}/usr/src/linux-headers-6.1.0-56-common/Makefile\n"
    )


def test_stub_declines_the_modern_interface():
    stub = legacy.stub_sources()
    assert "return -ENODEV;" in stub["legacy_stub.c"].decode()
    kbuild = stub["Kbuild"].decode()
    assert "obj-m := virtio_pci.o" in kbuild and "virtio_pci_modern.o" not in kbuild
