"""Boot the guest N times in one process (inside the box) and report each boot as JSON.

Usage: boot_loop.py N TIMEOUT_S OUTDIR -- <pcivm options>

One process imports pcivm once: a Python start costs seconds in the box. Each boot gets
its own console file; a boot that outlives TIMEOUT_S is a hang: the VMM's interrupt state
is captured, the VM stopped, and the last console lines kept for the report.
"""

import faulthandler
import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from pcivm.options import parse_options
from pcivm.spec import SerialSpec
from pcivm.vmm import Vmm

HANG_STATUS = 124


def main() -> int:
    count, timeout, outdir = int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
    spec = parse_options(sys.argv[sys.argv.index("--") + 1 :])
    boots = []
    for i in range(count):
        console = outdir / f"boot{i}.log"
        vmm = Vmm(replace(spec, serial=SerialSpec("file", console)))
        hang = {}
        returned = threading.Event()

        def watchdog(vmm=vmm, hang=hang, i=i, console=console, returned=returned):
            hang["state"] = vmm.state_report()
            vmm.stop(HANG_STATUS, "hung")
            # A VM stuck while being built (a read or an ioctl that does not return) never
            # sees the stop: report the boot and end the process rather than hang the test.
            if returned.wait(30):
                return
            text = console.read_text(errors="replace") if console.exists() else ""
            stuck = {"status": HANG_STATUS, "seconds": None, "report_end": False,
                     "state": hang["state"] + " (did not stop within 30 s)",
                     "console_tail": text.splitlines()[-15:]}  # fmt: skip
            print(json.dumps(stuck), flush=True)
            print(f"boot {i} did not stop", file=sys.stderr, flush=True)
            os._exit(1)

        timer = threading.Timer(timeout, watchdog)
        timer.daemon = True
        timer.start()
        # Last resort, from C and without the GIL: every thread's stack, then exit.
        faulthandler.dump_traceback_later(timeout + 60, exit=True)
        started = time.monotonic()
        status = vmm.run()
        returned.set()
        timer.cancel()
        faulthandler.cancel_dump_traceback_later()
        text = console.read_text(errors="replace")
        boots.append(
            {
                "status": status,
                "seconds": round(time.monotonic() - started, 2),
                "report_end": "===PCIVM-PROBE-END===" in text,
                "state": hang.get("state"),
                "console_tail": text.splitlines()[-15:] if hang or status else [],
                # What the process still holds once the VM is gone: a leak grows these.
                "open_fds": len(os.listdir("/proc/self/fd")),
                "threads": threading.active_count(),
            }
        )
        print(json.dumps(boots[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
