"""bench/blk.py's jobs and its per-boot table when a baseline checkout runs alongside."""

from types import SimpleNamespace

import bench.blk as blk
import pytest
from bench.blk import BASELINE, Boot, build_jobs, parse_args, per_boot


def _image(tmp_path):
    return SimpleNamespace(kernel=SimpleNamespace(bzimage=tmp_path / "bzImage"))


def test_a_baseline_checkout_adds_a_pcivm_job_with_its_own_source(tmp_path):
    checkout = tmp_path / "older"
    (checkout / "src" / "pcivm").mkdir(parents=True)
    (checkout / "src" / "pcivm" / "__init__.py").write_text("")
    args = parse_args(["--baseline", str(checkout)])
    jobs = build_jobs(_image(tmp_path), tmp_path / "initrd", tmp_path / "disk.img", args)
    assert [j["name"] for j in jobs] == ["pcivm", BASELINE, "qemu"]
    pcivm, baseline, _ = jobs
    assert baseline["argv"] == ["env", f"PYTHONPATH={checkout / 'src'}", *pcivm["argv"]]
    plain = build_jobs(_image(tmp_path), tmp_path / "initrd", tmp_path / "disk.img", parse_args([]))
    assert [j["name"] for j in plain] == ["pcivm", "qemu"]


def test_a_baseline_that_is_not_a_checkout_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--baseline", str(tmp_path)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a checkout of pcivm" in err[0]


def test_every_boot_is_listed_with_its_rates_and_cpu():
    def boot(vmm, rnd, mbps, iops, user):
        seq = blk.Test(seconds=2.0, requests=10, work=mbps * 2e6)
        rand = blk.Test(seconds=10.0, requests=iops * 10, work=iops * 10, user=user * iops * 10)
        return Boot(name=vmm, vmm=vmm, round=rnd, seq=seq, rand=rand)

    boots = [boot("qemu", 0, 90.0, 1200, 170e-6), boot(BASELINE, 0, 80.0, 700, 900e-6)]
    lines = per_boot(boots)
    table = "\n".join(lines)
    assert lines[0] == "Every boot:"
    assert BASELINE in table and "qemu" in table
    row = next(line for line in lines if BASELINE in line)
    assert "80.0" in row and "700" in row and "900" in row


def test_threads_are_grouped_by_what_they_do():
    assert [blk.thread_role(n) for n in ("vcpu0", "vcpu12", "kick virtio-blk0", "io disk1")] == [
        "vcpu",
        "vcpu",
        "kick",
        "io",
    ]
    assert [blk.thread_role(n) for n in ("CPU 1/KVM", "worker", "python3")] == [
        "CPU",
        "worker",
        "python",
    ]


def test_cpu_per_request_is_reported_by_thread():
    def sample(t, kick, vcpu):
        return {"t": t, "kvm": {}, "cpu": None, "threads": {"kick": kick, "vcpu": vcpu}}

    samples = {
        "=S0=": sample(0.0, [1.0, 2.0], [0.5, 0.5]),
        "=S1=": sample(1.0, [1.3, 3.0], [0.5001, 0.5]),  # 3 ms + 10 ms, 1 us + 0 a request
    }
    seq = blk.window(samples, "=S0=", "=S1=")
    seq.requests = 100
    assert seq.threads["kick"] == pytest.approx((0.3, 1.0))
    boot = Boot(name="pcivm", vmm="pcivm", round=0, seq=seq, rand=blk.Test())
    lines = blk.by_thread({"pcivm": [boot], "qemu": []})
    assert lines[0].startswith("CPU per request by thread")
    assert lines[1] == "  pcivm sequential: kick 3,000 + 10,000"  # vcpu: under 2%, left out
    assert blk.by_thread({"pcivm": [], "qemu": []}) == []
