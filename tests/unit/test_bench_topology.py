"""The topology and block I/O benchmarks' pure helpers: argv generation and parsing."""

from bench.blk import dd_bytes, drive_arg, guest_command, parse_guest, reads_completed
from bench.topology import (
    IO_SPACE,
    PER_BRIDGE,
    compare_functions,
    config_exits,
    parse_exit_groups,
    parse_maxrss,
    plan_argv,
    topology,
)


def test_small_topologies_stay_on_the_root_bus():
    t = topology(1)
    assert (t.bridges, t.root_devices, t.io_less_devices) == (0, 1, 0)
    assert t.devices(io_less=True) == ["pci-testdev,id=td0.1"]
    assert topology(30).bridges == 0


def test_bridges_hold_31_devices_and_io_space_runs_out_after_seven():
    t = topology(32)
    assert (t.bridges, t.root_devices, t.io_bridges) == (1, 1, 1)
    t = topology(256)
    assert (t.bridges, t.root_devices, t.io_bridges) == (8, 8, 7)
    assert t.io_less_devices == PER_BRIDGE
    # seven 8 KiB windows and a 4 KiB granule for the root bus fill the 60 KiB
    assert 7 * 8192 + 4096 <= IO_SPACE < 8 * 8192 + 4096
    devices = t.devices(io_less=True)
    assert len(devices) == 256 + 8
    assert devices[0] == "pci-bridge,id=br1,chassis_nr=1"
    assert devices[1] == "pci-testdev,id=td1.1,bus=br1,addr=0x1"
    assert sum("bar1=none" in d for d in devices) == PER_BRIDGE
    assert all("bar1=none" in d for d in devices if "bus=br8," in d)
    assert not any("bar1" in d for d in t.devices(io_less=False))


def test_plan_argv():
    assert plan_argv(["a", "b"]) == [
        "-M",
        "pc",
        "-kernel",
        "(none)",
        "-device",
        "a",
        "-device",
        "b",
    ]


def test_parse_maxrss_and_exit_groups():
    stderr = (
        "pcivm: exits by device (3.10 s):\n"
        "  port IO  serial (COM1)                  1500\n"
        "  port IO  PCI conf1                      2400\n"
        "  MMIO     virtio-blk notify              7\n"
        "  total 3907\n"
        "  busiest PCI config registers (bus:slot.fn+register: accesses):\n"
        "    00:01.0+0x000 12\n"
        "topology-maxrss-kib 123456\n"
    )
    assert parse_maxrss(stderr) == 123456 * 1024
    assert parse_maxrss("nothing") is None
    groups, seconds = parse_exit_groups(stderr)
    assert seconds == 3.10
    assert groups == {
        "port IO serial (COM1)": 1500,
        "port IO PCI conf1": 2400,
        "MMIO virtio-blk notify": 7,
    }
    assert config_exits(groups) == 2400
    assert config_exits({}) is None


def test_compare_functions_ignores_the_pci_domain():
    report = {"pci": [{"bdf": "0000:00:00.0"}, {"bdf": "0000:01:01.0"}]}
    assert compare_functions(report, ["00:00.0", "01:01.0", "01:02.0"]) == (2, ["01:02.0"])
    assert compare_functions(None, ["00:00.0"]) == (0, ["00:00.0"])


def test_blk_guest_lines():
    console = (
        "===PCIVM-RUN-BEGIN===\r\n"
        "BLK-STAT seq0 10 0 80 0 0 0 0 0 0 0 0\r\n"
        "=S0=\r\n=S1=\r\n"
        "BLK-STAT seq1 1034 0 2097232 0 0 0 0 0 0 0 0\r\n"
        "BLK-QUEUE max_segments=254\r\n"
        "BLK-DD 0 1024+0 records out\r\n"
        "BLK-RR 0 randread: threads=4 block=4096 seconds=10.001 ops=5000 iops=499.9 errors=0\n"
    )
    guest = parse_guest(console)
    assert reads_completed(guest["stat"], "seq0", "seq1") == 1024
    assert reads_completed(guest["stat"], "rand0", "rand1") is None
    assert guest["dd"][0] == 0 and dd_bytes(guest["dd"][1]) == 1 << 30
    assert guest["queue"] == {"max_segments": "254"}
    assert dd_bytes("1023+1 records out") is None
    assert guest["rr"]["status"] == 0 and guest["rr"]["ops"] == "5000"
    assert dd_bytes("dd: can't open") is None
    assert guest_command(1024, 4, 10.0) == "blkbench /dev/vda 1024 4 10"
    assert drive_arg("/x.img") == "file=/x.img,if=virtio,format=raw,readonly=on"
