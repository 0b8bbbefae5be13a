"""The reference QEMU command line and how its console is read."""

import json
from pathlib import Path

import pytest

from pcivm import reference
from pcivm.guest.probe import PROBE_BEGIN, PROBE_END
from pcivm.reference import GuestBoot, ReferenceRunError, RunnerTimeout

BOOT = GuestBoot(kernel=Path("/img/bzImage"), initrd=Path("/img/initrd.gz"))


def option_values(argv, option):
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


def test_direct_kernel_boot_with_console_on_stdout():
    argv = reference.qemu_argv(BOOT)
    assert argv[0] == "qemu-system-x86_64"
    assert option_values(argv, "-kernel") == ["/img/bzImage"]
    assert option_values(argv, "-initrd") == ["/img/initrd.gz"]
    assert option_values(argv, "-serial") == ["stdio"]
    assert option_values(argv, "-M") == ["pc"] and option_values(argv, "-m") == ["1G"]
    for flag in ("-nodefaults", "-nographic", "-no-reboot", "-enable-kvm"):
        assert flag in argv
    assert "-accel" not in argv and "-netdev" not in argv


def test_append_asks_for_the_probe_report_quietly():
    (append,) = option_values(reference.qemu_argv(BOOT), "-append")
    assert append.split() == ["console=ttyS0", "quiet", "pcivm.probe=1"]


def test_old_guest_run_command_and_extra_words():
    boot = GuestBoot(
        kernel=BOOT.kernel,
        initrd=BOOT.initrd,
        guest="legacy",
        probe=False,
        run="dd if=/dev/hwrng bs=16 count=1 | od",
        append=["virtio_pci.force_legacy=1"],
    )
    append = reference.kernel_append(boot)
    assert "pcivm.guest=legacy" in append and "pcivm.probe" not in append
    assert 'pcivm.run="dd if=/dev/hwrng bs=16 count=1 | od"' in append
    assert append.endswith(" virtio_pci.force_legacy=1")


def test_run_command_with_a_double_quote_is_refused():
    with pytest.raises(ValueError, match="double quote"):
        reference.kernel_append(GuestBoot(kernel=BOOT.kernel, initrd=BOOT.initrd, run='echo "x"'))


def test_devices_machine_and_tcg():
    boot = GuestBoot(
        kernel=BOOT.kernel,
        initrd=BOOT.initrd,
        machine="q35",
        accel="tcg",
        devices=["pcie-root-port,id=rp1", "virtio-rng-pci,bus=rp1"],
        extra_args=["-drive", "if=none,id=d0,file=disk.img,format=raw"],
    )
    argv = reference.qemu_argv(boot)
    assert option_values(argv, "-device") == ["pcie-root-port,id=rp1", "virtio-rng-pci,bus=rp1"]
    assert option_values(argv, "-M") == ["q35"]
    assert option_values(argv, "-accel") == ["tcg"] and option_values(argv, "-cpu") == ["max"]
    assert "-enable-kvm" not in argv
    assert argv[-2:] == ["-drive", "if=none,id=d0,file=disk.img,format=raw"]


def test_unknown_accelerator_is_refused():
    with pytest.raises(ValueError, match="accelerator"):
        reference.qemu_argv(GuestBoot(kernel=BOOT.kernel, initrd=BOOT.initrd, accel="hvf"))


REPORT = {"kernel": "k", "guest": "modern", "pci": [], "virtio": []}
CONSOLE = (
    "SeaBIOS\r\n===PCIVM-RUN-BEGIN===\r\n42\r\n===PCIVM-RUN-EXIT=0===\r\n"
    f"{PROBE_BEGIN}\r\n{json.dumps(REPORT)}\r\n{PROBE_END}\r\n[ 3.3] reboot: Power down\r\n"
)


def test_the_runner_gets_the_argv_and_timeout_and_the_console_is_parsed():
    seen = []

    def runner(argv, timeout):
        seen.append((argv, timeout))
        return 0, CONSOLE.encode()

    result = reference.run_reference(BOOT, runner=runner, timeout=33)
    assert seen == [(reference.qemu_argv(BOOT), 33)]
    assert result.report == REPORT
    assert (result.run_exit, result.run_output) == (0, "42\n")
    assert result.returncode == 0 and "SeaBIOS" in result.console


def test_no_report_is_an_error_with_the_status_and_console_tail():
    def runner(argv, timeout):
        return (
            1,
            b"qemu-system-x86_64: -device virtio-foo: 'virtio-foo' is not a valid device model\n",
        )

    with pytest.raises(ReferenceRunError, match="status 1.*not a valid device model"):
        reference.run_reference(BOOT, runner=runner)


def test_timeout_names_the_last_console_lines():
    def runner(argv, timeout):
        raise RunnerTimeout(b"line one\r\n[ 5.0] virtio_blk: stuck\r\n")

    with pytest.raises(ReferenceRunError, match=r"within 7 s.*virtio_blk: stuck"):
        reference.run_reference(BOOT, runner=runner, timeout=7)


def test_host_runner_times_out_and_keeps_the_output():
    with pytest.raises(RunnerTimeout) as caught:
        reference.host_runner(["sh", "-c", "echo started; sleep 30"], timeout=0.5)
    assert caught.value.output == b"started\n"


def test_host_runner_without_qemu_is_one_clear_error():
    with pytest.raises(ReferenceRunError, match="not found"):
        reference.host_runner(["/nonexistent/qemu-system-x86_64"], timeout=1)


def test_pcivm_takes_the_same_options_as_qemu():
    from pcivm.reference import GuestBoot, pcivm_argv, qemu_argv

    boot = GuestBoot(kernel=Path("/k"), initrd=Path("/i"), accel="tcg", run="true")
    pcivm = pcivm_argv(boot)
    assert pcivm[1:3] == ["-m", "pcivm"]
    qemu_kvm = qemu_argv(GuestBoot(kernel=Path("/k"), initrd=Path("/i"), run="true"))
    assert pcivm[3:] == qemu_kvm[1:]
    assert "-accel" not in pcivm and "tcg" not in pcivm
