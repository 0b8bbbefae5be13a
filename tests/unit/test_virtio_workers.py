"""The worker threads devices hand blocking work to."""

import threading

import pytest

from pcivm.virtio.workers import WorkerThreads


def test_every_job_runs_and_shutdown_waits_for_them():
    done = []
    lock = threading.Lock()

    def handler(job):
        with lock:
            done.append(job)

    workers = WorkerThreads(3, "t", handler)
    for i in range(200):
        workers.submit(i)
    workers.shutdown()
    assert sorted(done) == list(range(200))


def test_jobs_run_concurrently_up_to_the_thread_count():
    # The three jobs and this test's helper meet here: only if the jobs run at once.
    started = threading.Barrier(4, timeout=5)
    release = threading.Event()
    results = []

    def handler(job):
        started.wait()
        release.wait(5)
        results.append(job)

    workers = WorkerThreads(3, "t", handler)
    for i in range(3):
        workers.submit(i)
    threading.Thread(target=lambda: (started.wait(), release.set()), daemon=True).start()
    workers.shutdown()
    assert sorted(results) == [0, 1, 2]
    assert len(workers._threads) == 3


def test_threads_start_only_when_the_ones_there_are_busy():
    gate = threading.Event()
    workers = WorkerThreads(4, "t", lambda job: gate.wait(5))
    workers.submit(1)
    assert len(workers._threads) == 1
    workers.submit(2)
    assert len(workers._threads) == 2
    gate.set()
    workers.shutdown()


def test_a_failing_job_does_not_stop_its_thread(caplog):
    done = []

    def handler(job):
        if job == "bad":
            raise RuntimeError("boom")
        done.append(job)

    workers = WorkerThreads(1, "t", handler)
    workers.submit("bad")
    workers.submit("good")
    workers.shutdown()
    assert done == ["good"]
    assert "a job failed" in caplog.text


def test_submit_after_shutdown_is_refused():
    workers = WorkerThreads(1, "t", lambda job: None)
    workers.shutdown()
    with pytest.raises(RuntimeError):
        workers.submit(1)


def test_the_threads_tell_the_kernel_what_they_are():
    # top -H and a benchmark's per-thread CPU see "io <device>", not "python".
    def os_thread_name():
        with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
            return f.read().rstrip("\n")

    names = []
    workers = WorkerThreads(1, "virtio-blk0", lambda job: names.append(os_thread_name()))
    workers.submit(None)
    workers.shutdown()
    assert names == ["io virtio-blk0"]
