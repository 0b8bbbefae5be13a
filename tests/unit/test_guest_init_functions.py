"""The guest /init's shell functions, run with busybox sh and busybox awk as in the guest
(against a made-up /proc/cmdline and sysfs)."""

import json
import os
import shutil
import subprocess
from importlib import resources

import pytest

FUNCTIONS = resources.files("pcivm.guest") / "functions.sh"
BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox (busybox-static) not installed")


@pytest.fixture
def guest_sh(tmp_path):
    """Run a snippet after sourcing functions.sh, with busybox's sh, awk and readlink
    first on PATH and PCIVM_CMDLINE/SYS/PROC pointing into tmp_path."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for applet in ("sh", "awk", "readlink", "printf"):
        (bindir / applet).symlink_to(BUSYBOX)

    def run(snippet: str, cmdline: str = "", check: bool = True) -> subprocess.CompletedProcess:
        (tmp_path / "cmdline").write_text(cmdline + "\n")
        env = dict(
            os.environ,
            PATH=f"{bindir}:{os.environ['PATH']}",
            PCIVM_CMDLINE=str(tmp_path / "cmdline"),
            PCIVM_SYS=str(tmp_path / "sys"),
            PCIVM_PROC=str(tmp_path / "proc"),
        )
        return subprocess.run(
            [BUSYBOX, "sh", "-c", f'. "{FUNCTIONS}"; {snippet}'],
            env=env,
            capture_output=True,
            text=True,
            check=check,
        )

    return run


def test_words_split_at_spaces_outside_quotes(guest_sh):
    cmdline = 'console=ttyS0 quiet pcivm.run=\'echo $((6*7))\' a="b c" d"e f"g'
    out = guest_sh("cmdline_words", cmdline).stdout
    assert out.splitlines() == [
        "console=ttyS0",
        "quiet",
        "pcivm.run=echo $((6*7))",
        "a=b c",
        "de fg",
    ]


def test_single_quotes_keep_double_quotes_and_vice_versa(guest_sh):
    cmdline = 'pcivm.run=\'echo "hi"\' x="it\'s"'
    assert guest_sh("cmdline_words", cmdline).stdout.splitlines() == [
        'pcivm.run=echo "hi"',
        "x=it's",
    ]


def test_value_of_a_quoted_run_command(guest_sh):
    out = guest_sh("cmdline_value pcivm.run", "quiet pcivm.run='echo $((6*7))' pcivm.probe=1")
    assert out.stdout == "echo $((6*7))\n"


def test_last_occurrence_wins_and_prefixes_do_not_match(guest_sh):
    out = guest_sh(
        "cmdline_value pcivm.guest", "pcivm.guest=modern pcivm.guestx=no pcivm.guest=legacy"
    )
    assert out.stdout == "legacy\n"


def test_absent_key_fails(guest_sh):
    assert guest_sh("cmdline_value pcivm.run", "quiet pcivm.probe=1", check=False).returncode == 1


def test_empty_run_value_is_present(guest_sh):
    result = guest_sh("cmdline_value pcivm.run", "pcivm.run= quiet", check=False)
    assert (result.returncode, result.stdout) == (0, "\n")


@pytest.mark.parametrize(
    ("cmdline", "on"),
    [("pcivm.probe=1", True), ("pcivm.probe", True), ("pcivm.probe=0", False), ("quiet", False)],
)
def test_probe_flag(guest_sh, cmdline, on):
    assert (guest_sh("cmdline_flag pcivm.probe", cmdline, check=False).returncode == 0) is on


def test_module_params_for_one_module(guest_sh):
    cmdline = (
        "virtio_pci.force_legacy=1 virtio-blk.queue_depth=64 virtio_pcix.bad=1 "
        "other.x=2 virtio_pci.note='a b' pcivm.run='virtio_pci.no=1'"
    )
    assert guest_sh("module_params virtio_pci", cmdline).stdout.splitlines() == [
        "force_legacy=1",
        'note="a b"',
    ]
    assert guest_sh("module_params virtio_blk", cmdline).stdout.splitlines() == ["queue_depth=64"]


def _fake_pci_device(sys_root, bdf, *, device, driver, resources, virtio=None):
    devices = sys_root / "devices" / "pci0000:00"
    dev = devices / bdf
    dev.mkdir(parents=True)
    for name, value in [
        ("vendor", "0x1af4"),
        ("device", device),
        ("subsystem_vendor", "0x1af4"),
        ("subsystem_device", "0x0004"),
        ("revision", "0x00"),
        ("class", "0x00ff00"),
    ]:
        (dev / name).write_text(value + "\n")
    (dev / "resource").write_text(
        "".join(f"0x{s:016x} 0x{e:016x} 0x{f:016x}\n" for s, e, f in resources)
    )
    bus = sys_root / "bus" / "pci"
    (bus / "devices").mkdir(parents=True, exist_ok=True)
    (bus / "devices" / bdf).symlink_to(dev)
    if driver:
        (bus / "drivers" / driver).mkdir(parents=True, exist_ok=True)
        (dev / "driver").symlink_to(bus / "drivers" / driver)
    if virtio:
        name, features, vdriver = virtio
        vdev = dev / name
        vdev.mkdir()
        (vdev / "device").write_text("0x0004\n")
        (vdev / "features").write_text(features + "\n")
        vbus = sys_root / "bus" / "virtio"
        (vbus / "devices").mkdir(parents=True, exist_ok=True)
        (vbus / "devices" / name).symlink_to(vdev)
        if vdriver:
            (vbus / "drivers" / vdriver).mkdir(parents=True, exist_ok=True)
            (vdev / "driver").symlink_to(vbus / "drivers" / vdriver)


IO, MEM, PREFETCH, MEM64, UNSET = 0x100, 0x200, 0x2000, 0x100000, 0x20000000
MODERN_FEATURES = "0" * 28 + "1100" + "1" + "0" * 31  # bit 32: VIRTIO_F_VERSION_1
LEGACY_FEATURES = "0" * 28 + "1100" + "0" * 32


def test_probe_json_describes_devices_bars_and_text(guest_sh, tmp_path):
    sys_root = tmp_path / "sys"
    big = 0x7FFF_FFFF_C000  # above 2^32: 64-bit BARs must keep every digit
    _fake_pci_device(
        sys_root,
        "0000:00:02.0",
        device="0x1005",
        driver="virtio-pci",
        resources=[
            (0xC080, 0xC09F, IO | 0x40101),
            (0xFEBFE000, 0xFEBFEFFF, MEM | 0x40000),
            (0, 0, 0),
            (0, 0, 0),
            (big, big + 0x3FFF, MEM | PREFETCH | MEM64 | 0x40000),
            (0, 0x1F, IO | UNSET),  # a BAR Linux could not place: not "set"
            (0x3F6, 0x3F6, IO),  # one byte long
        ],
        virtio=("virtio0", MODERN_FEATURES, "virtio_rng"),
    )
    _fake_pci_device(
        sys_root,
        "0000:00:03.0",
        device="0x1044",
        driver=None,
        resources=[(0, 0, 0)] * 13 + [(0x1000, 0x1FFF, IO)],  # bridge window 13
        virtio=("virtio1", LEGACY_FEATURES, None),
    )
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "uptime").write_text("3.45 1.00\n")
    (proc / "ioports").write_text('0000-0cf7 : PCI Bus 0000:00\n  c080-c09f : "odd\\name"\tx\n')
    (proc / "iomem").write_text("00000000-00000fff : Reserved\n")
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(
        "[    0.100000] pci 0000:00:02.0: BAR 0 [io  0xc080-0xc09f]\n"
        "[    0.200000] Unrelated line\n"
        "[    0.300000] virtio_pci: probe of 0000:00:03.0 failed with error -5\n"
        "[    0.400000] pci 0000:01:00.0: bridge window [io  size 0x1000]: can't assign; no space\n"
    )
    out = guest_sh(
        f'probe_json 6.1.0-test legacy "{kmsg}" "virtio_net failover"', "quiet pcivm.probe=1"
    )
    lines = out.stdout.splitlines()
    assert lines[0] == "===PCIVM-PROBE-BEGIN===" and lines[2] == "===PCIVM-PROBE-END==="
    report = json.loads(lines[1])

    assert report["kernel"] == "6.1.0-test"
    assert report["guest"] == "legacy"
    assert report["cmdline"] == "quiet pcivm.probe=1"
    assert report["insmod_failed"] == ["virtio_net", "failover"]
    assert report["uptime"] == 3.45
    first, second = report["pci"]
    assert first["bdf"] == "0000:00:02.0" and first["device"] == "0x1005"
    assert first["driver"] == "virtio-pci" and second["driver"] is None
    assert first["bars"] == [
        {
            "index": 0,
            "start": "0xc080",
            "size": "0x20",
            "type": "io",
            "prefetch": False,
            "mem64": False,
        },
        {
            "index": 1,
            "start": "0xfebfe000",
            "size": "0x1000",
            "type": "mem",
            "prefetch": False,
            "mem64": False,
        },
        {
            "index": 4,
            "start": hex(big),
            "size": "0x4000",
            "type": "mem",
            "prefetch": True,
            "mem64": True,
        },
        {
            "index": 6,
            "start": "0x3f6",
            "size": "0x1",
            "type": "io",
            "prefetch": False,
            "mem64": False,
        },
    ]
    assert second["bars"] == [
        {
            "index": 13,
            "start": "0x1000",
            "size": "0x1000",
            "type": "io",
            "prefetch": False,
            "mem64": False,
        }
    ]
    rng, unbound = report["virtio"]
    assert rng == {
        "name": "virtio0",
        "device_id": "0x0004",
        "driver": "virtio_rng",
        "features": MODERN_FEATURES,
        "pci_bdf": "0000:00:02.0",
        "interface": "modern",
    }
    assert unbound["driver"] is None and unbound["interface"] is None
    assert report["ioports"] == '0000-0cf7 : PCI Bus 0000:00\n  c080-c09f : "odd\\name"\tx'
    assert report["kmsg"] == [
        "pci 0000:00:02.0: BAR 0 [io  0xc080-0xc09f]",
        "virtio_pci: probe of 0000:00:03.0 failed with error -5",
        "pci 0000:01:00.0: bridge window [io  size 0x1000]: can't assign; no space",
    ]


def test_probe_json_escapes_control_characters(guest_sh, tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "iomem").write_bytes(b"a\x01b\x1fc\r\n")
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("")
    out = guest_sh(f'probe_json k modern "{kmsg}" ""')
    report = json.loads(out.stdout.splitlines()[1])
    assert report["iomem"] == "a\x01b\x1fc\r"
    assert report["pci"] == [] and report["virtio"] == [] and report["uptime"] is None
