"""bench/blk_trace.py's reading of ftrace's output into per-request phases."""

import pytest
from bench.blk_trace import PHASES, parse_trace, phases, summary

VCPU, KICK, OTHER = 125, 123, 999


def line(tid: int, seconds: float, text: str) -> str:
    return f"          thread-{tid}     [001] .....   {seconds:.6f}: {text}"


def request(t: float) -> list[str]:
    """One cut 1 MiB read as pcivm does it, starting with the kick at `t` (ms apart)."""
    ms = 0.001
    return [
        line(VCPU, t, "kvm_mmio: mmio write len 2 gpa 0x17fffff000 val 0x0"),
        line(KICK, t + 1 * ms, "sys_io_uring_enter(fd: 10, to_submit: 1, min_complete: 0)"),
        line(KICK, t + 1.1 * ms, "sys_io_uring_enter -> 0x1"),
        line(KICK, t + 1.2 * ms, "sys_preadv2(fd: 8, vec: 7f40fe0099d0, vlen: e, pos_l: 0)"),
        line(KICK, t + 3 * ms, "sys_preadv2 -> 0x80000"),
        line(KICK, t + 3.1 * ms, "sys_io_uring_enter(fd: 10, to_submit: 0, min_complete: 1)"),
        line(KICK, t + 3.5 * ms, "sys_io_uring_enter -> 0x0"),
        line(KICK, t + 4 * ms, "kvm_msi_set_irq: dst 0 vec 36 (Fixed|physical|edge)"),
        line(VCPU, t + 4.3 * ms, "kvm_entry: vcpu 0, rip 0xffffffffa2617a0b"),
        # another thread's read and another 2-byte write: not this request's
        line(OTHER, t + 4.4 * ms, "sys_preadv2(fd: 3, vec: 1, vlen: 1, pos_l: 0)"),
        line(VCPU, t + 4.5 * ms, "kvm_mmio: mmio write len 2 gpa 0xfebd0000 val 0x1"),
        line(VCPU, t + 4.6 * ms, "kvm_entry: vcpu 0, rip 0xffffffffa2617a0b"),
    ]


def test_each_request_is_cut_into_its_phases():
    text = "\n".join(["# tracer: nop", *request(1.0), *request(1.006), *request(1.012)])
    events = parse_trace(text, {VCPU, KICK})
    assert all(e.thread in (VCPU, KICK) for e in events)
    found = phases(events)
    # Two requests end with a next kick; the third is cut off by the trace's end.
    expected = {"wake": 1.0, "copy": 2.5, "finish": 0.5, "resume": 0.3, "guest": 1.7}
    for phase in PHASES:
        assert found[phase] == pytest.approx([expected[phase] / 1000] * 2)
    figures = summary(found)
    assert figures["requests"] == 2
    assert figures["period"] == pytest.approx(6000)


def test_a_kick_answered_without_a_read_is_left_out():
    text = "\n".join(
        [
            line(VCPU, 1.0, "kvm_mmio: mmio write len 2 gpa 0x1000 val 0x0"),
            line(KICK, 1.001, "kvm_msi_set_irq: dst 0 vec 36 (Fixed|physical|edge)"),
            line(VCPU, 1.002, "kvm_entry: vcpu 0, rip 0x1"),
            line(VCPU, 1.003, "kvm_mmio: mmio write len 2 gpa 0x1000 val 0x0"),
        ]
    )
    assert summary(phases(parse_trace(text, {VCPU, KICK})))["requests"] == 0
