"""Which KVM a host has, decided from /proc/cpuinfo, /sys/module and /dev/kvm."""

import pytest

from pcivm.box.detect import ABSENT, HARDWARE, PVM, cpu_virt_flags, host_kvm_kind

INTEL = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx ssse3\n"
AMD = "processor\t: 0\nflags\t\t: fpu vme svm npt lbrv\n"
NONE = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr\n"


@pytest.fixture
def host(tmp_path):
    def make(cpuinfo: str, modules=(), dev_kvm=True):
        (tmp_path / "cpuinfo").write_text(cpuinfo)
        sys_module = tmp_path / "module"
        for module in ("kvm", *modules):
            (sys_module / module).mkdir(parents=True, exist_ok=True)
        dev = tmp_path / "kvm"
        if dev_kvm:
            dev.write_bytes(b"")
        return host_kvm_kind(tmp_path / "cpuinfo", sys_module, dev)

    return make


def test_vmx_with_an_openable_dev_kvm_is_hardware(host):
    kind = host(INTEL, modules=["kvm_intel"])
    assert kind.kind == HARDWARE
    assert kind.hardware_assisted
    assert "vmx" in kind.reason


def test_svm_is_hardware_too(host):
    assert host(AMD, modules=["kvm_amd"]).kind == HARDWARE


def test_the_kvm_pvm_module_means_pvm_even_if_the_cpu_had_flags(host):
    kind = host(INTEL, modules=["kvm_pvm"])
    assert kind.kind == PVM
    assert not kind.hardware_assisted
    assert "kvm_pvm" in kind.reason


def test_no_virtualization_flags_is_absent(host):
    kind = host(NONE)
    assert kind.kind == ABSENT
    assert "neither vmx nor svm" in kind.reason


def test_flags_without_dev_kvm_is_absent(host):
    kind = host(AMD, dev_kvm=False)
    assert kind.kind == ABSENT
    assert "does not exist" in kind.reason


def test_unreadable_cpuinfo_is_absent(tmp_path):
    kind = host_kvm_kind(tmp_path / "missing", tmp_path, tmp_path / "kvm")
    assert kind.kind == ABSENT


def test_flags_are_read_from_flags_lines_only():
    assert cpu_virt_flags("model name\t: svm-like vmx cpu\nflags\t: fpu\n") == set()
    assert cpu_virt_flags(AMD + INTEL) == {"svm", "vmx"}
