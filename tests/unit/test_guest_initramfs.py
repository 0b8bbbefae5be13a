"""What goes into the guest's initramfs, from a made-up kernel module tree."""

import gzip
import lzma
import stat

import pytest

from pcivm.errors import GuestImageError
from pcivm.guest import cpio, initramfs
from pcivm.guest.modules import parse_modules_dep

MODULES = {
    "virtio_ring": [],
    "virtio": ["virtio_ring"],
    "virtio_pci_modern_dev": [],
    "virtio_pci_legacy_dev": [],
    "virtio_pci": ["virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio", "virtio_ring"],
    "virtio_blk": ["virtio", "virtio_ring"],
    "failover": [],
    "net_failover": ["failover"],
    "virtio_net": ["net_failover", "virtio", "virtio_ring"],
    "virtio-rng": ["virtio", "virtio_ring"],
    "virtio_balloon": ["virtio", "virtio_ring"],
    "virtio_console": ["virtio", "virtio_ring"],
}


@pytest.fixture
def members(tmp_path):
    lines = []
    for name, deps in MODULES.items():
        (tmp_path / f"{name}.ko").write_bytes(f"module {name}".encode())
        lines.append(f"{name}.ko: " + " ".join(f"{d}.ko" for d in deps))
    graph = parse_modules_dep("\n".join(lines))
    entries = initramfs.entries(
        b"BUSYBOX", tmp_path, graph, b"LEGACY", ("virtio_ring", "virtio_pci_legacy_dev", "virtio")
    )
    return {e.name: e for e in entries}


def load_list(members, guest):
    text = members[initramfs.LOAD_LIST.format(guest=guest)].data.decode()
    return [line.split() for line in text.splitlines()]


def test_console_node_and_executable_init(members):
    console = members["dev/console"]
    assert stat.S_ISCHR(console.mode) and (console.rdev_major, console.rdev_minor) == (5, 1)
    assert members["init"].mode & 0o111 and members["init"].data.startswith(b"#!/bin/busybox sh")
    assert members["bin/busybox"].data == b"BUSYBOX"


def test_directories_come_before_their_contents(members):
    names = list(members)
    for name in names:
        parent = name.rpartition("/")[0]
        if parent:
            assert names.index(parent) < names.index(name), name


def test_modern_guest_loads_the_stock_virtio_pci_after_its_dependencies(members):
    order = load_list(members, "modern")
    names = [name for name, _ in order]
    assert set(names) == {n.replace("-", "_") for n in MODULES}
    assert names.index("virtio_pci_modern_dev") < names.index("virtio_pci")
    assert names.index("failover") < names.index("net_failover") < names.index("virtio_net")
    path = dict(order)["virtio_pci"]
    assert members[path.lstrip("/")].data == b"module virtio_pci"


def test_old_guest_loads_its_own_virtio_pci_and_never_the_stock_one(members):
    order = dict(load_list(members, "legacy"))
    assert members[order["virtio_pci"].lstrip("/")].data == b"LEGACY"
    assert order["virtio_pci"].endswith("/virtio_pci.ko")  # the module keeps its name
    assert "virtio_pci_modern_dev" not in order
    assert list(order).count("virtio_pci") == 1
    assert "virtio_rng" in order


def test_the_whole_archive_round_trips(members):
    archive = cpio.pack(members.values())
    assert {e.name for e in cpio.unpack(archive)} == set(members)


def test_compressed_modules_are_unpacked(tmp_path):
    (tmp_path / "a.ko.xz").write_bytes(lzma.compress(b"plain"))
    (tmp_path / "b.ko.gz").write_bytes(gzip.compress(b"plain"))
    (tmp_path / "c.ko").write_bytes(b"plain")
    assert {initramfs.module_bytes(tmp_path / n) for n in ("a.ko.xz", "b.ko.gz", "c.ko")} == {
        b"plain"
    }
    (tmp_path / "d.ko.zst").write_bytes(b"?")
    with pytest.raises(GuestImageError):
        initramfs.module_bytes(tmp_path / "d.ko.zst")
