"""The command lines the box builds for QEMU and virtiofsd."""

from pathlib import Path

from pcivm.box.qemu import MachineConfig, kernel_cmdline, qemu_argv, virtiofsd_argv


def argv_for(config=None):
    return qemu_argv(
        "qemu-system-x86_64",
        Path("/k/bzImage"),
        Path("/w/initramfs.cpio"),
        Path("/w/console.log"),
        Path("/w/fs.sock"),
        Path("/w/control.sock"),
        config or MachineConfig(),
    )


def option(argv, name):
    """Every value given to `name` in argv."""
    return [argv[i + 1] for i, word in enumerate(argv) if word == name]


def test_tcg_with_the_max_cpu_gives_the_box_emulated_svm():
    argv = argv_for()
    assert option(argv, "-accel") == ["tcg"]
    assert option(argv, "-cpu") == ["max"]


def test_memory_is_a_shared_memfd_backend_for_virtiofs():
    argv = argv_for(MachineConfig(memory_mib=2048, cpus=1))
    assert option(argv, "-m") == ["2048M"]
    assert option(argv, "-smp") == ["1"]
    assert option(argv, "-object") == ["memory-backend-memfd,id=mem,size=2048M,share=on"]
    assert option(argv, "-machine") == ["q35,memory-backend=mem"]


def test_the_console_goes_to_a_file_never_to_stdout():
    argv = argv_for()
    assert option(argv, "-serial") == ["file:/w/console.log"]
    assert option(argv, "-display") == ["none"]
    assert "-nodefaults" in argv


def test_the_host_fs_and_the_control_port_are_wired():
    argv = argv_for()
    devices = option(argv, "-device")
    chardevs = option(argv, "-chardev")
    assert "vhost-user-fs-pci,chardev=fs,tag=host" in devices
    assert "virtserialport,chardev=ctl,name=pcivm.box" in devices
    assert "socket,id=fs,path=/w/fs.sock" in chardevs
    assert "socket,id=ctl,path=/w/control.sock,server=on,wait=off" in chardevs


def test_the_kernel_boots_the_box_initramfs_and_ends_qemu_on_panic():
    argv = argv_for()
    assert option(argv, "-kernel") == ["/k/bzImage"]
    assert option(argv, "-initrd") == ["/w/initramfs.cpio"]
    assert option(argv, "-append") == [kernel_cmdline()]
    assert "panic=-1" in kernel_cmdline().split()
    assert "-no-reboot" in argv


def test_virtiofsd_shares_root_with_the_chosen_cache_and_sandbox():
    argv = virtiofsd_argv("/usr/lib/qemu/virtiofsd", Path("/w/fs.sock"), MachineConfig())
    assert argv[:2] == ["/usr/lib/qemu/virtiofsd", "--socket-path=/w/fs.sock"]
    options = option(argv, "-o")
    assert "source=/" in options
    assert "cache=none" in options
    assert "sandbox=chroot" in options
