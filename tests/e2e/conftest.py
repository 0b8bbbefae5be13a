"""End-to-end tests run where a hardware-assisted KVM exists: the session's `box`.

One box serves the whole session: started on first use, torn down at the end. On hosts
with a hardware-assisted /dev/kvm it runs commands directly; elsewhere (PVM hosts such as
this project's machines) in a QEMU TCG machine with emulated SVM. Tests skip only when
neither is possible.

    status, stdout, stderr = box.run_capture([...], timeout=60)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pcivm.box import BoxStartError, host_kvm_kind, start_runner
from pcivm.box.machine import STUCK_REPORT
from pcivm.box.qemu import MachineConfig, find_qemu

E2E_DIR = Path(__file__).parent
CONSOLE_TAIL_LINES = 80

_session_box = None  # the running box, for failure reports


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def box():
    global _session_box
    kvm = host_kvm_kind()
    if not kvm.hardware_assisted and find_qemu(MachineConfig()) is None:
        pytest.skip(
            f"no hardware-assisted KVM ({kvm.reason}) and no qemu-system-x86_64 for the box"
        )
    from pcivm.box_command import kernel_provider

    try:
        runner = start_runner(kernel_provider)
    except BoxStartError as exc:
        pytest.fail(exc.details(), pytrace=False)
    _session_box = runner
    try:
        yield runner
    finally:
        _session_box = None
        runner.close()


@pytest.fixture(scope="session")
def runner(box):
    """Runs a VMM (QEMU or pcivm) in the box, for pcivm.reference.run_reference."""
    from pcivm.reference import box_runner

    return box_runner(box)


@pytest.fixture(scope="session")
def image():
    """The guest image, built (or found current) once per session."""
    from pcivm.guest.image import ensure_image

    return ensure_image()


def _console_log() -> Path | None:
    machine = getattr(_session_box, "machine", None)
    return machine.console_log if machine is not None else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "box" in getattr(item, "fixturenames", ()):
        log = _console_log()
        if log is not None and log.exists():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-CONSOLE_TAIL_LINES:])
            report.sections.append(("box console", f"{log}\n{tail}"))
            stuck = log.with_name(STUCK_REPORT)
            if stuck.exists():
                report.sections.append(("stuck box", stuck.read_text(errors="replace")))
