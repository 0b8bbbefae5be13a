"""The `pcivm` command: QEMU-style options run a VM; a leading word names a subcommand.

Every user-facing error is a `PcivmError`: one line on stderr and a non-zero status.
Anything else is a bug: a one-line summary, and the traceback only with --debug.
"""

from __future__ import annotations

import importlib
import logging
import sys

from pcivm import __version__
from pcivm.errors import PcivmError

# Subcommand word -> module with `main(argv: list[str]) -> int`. Imported lazily so that
# `pcivm box` starts without loading the VMM.
SUBCOMMANDS = {
    "box": "pcivm.box_command",
    "guest": "pcivm.guest.cli",
    "plan": "pcivm.plan_command",
}

INTERNAL_ERROR_STATUS = 70  # EX_SOFTWARE

USAGE = """\
usage: pcivm [QEMU-style options]      run a virtual machine
       pcivm box [--check] [--] COMMAND...   run COMMAND where a hardware-assisted KVM exists
       pcivm guest build|path          build the guest image / print its kernel and initramfs
       pcivm plan [--json] [run options]   the PCI resource plan, without booting
       pcivm --version | -h
"""


def _wants_debug(argv: list[str]) -> bool:
    return "--debug" in argv or "-d" in argv


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="pcivm: %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _wants_debug(argv[:1] if argv and argv[0] in SUBCOMMANDS else argv)
    _setup_logging(debug)
    try:
        return _dispatch(argv)
    except PcivmError as exc:
        print(f"pcivm: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("pcivm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal bug: say so in one line unless debugging
        if debug:
            raise
        print(
            f"pcivm: internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
            file=sys.stderr,
        )
        return INTERNAL_ERROR_STATUS


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]])
        return module.main(argv[1:])
    if argv in (["-h"], ["--help"], []):
        print(USAGE, end="")
        return 0 if argv else 1
    if argv == ["--version"]:
        print(f"pcivm {__version__}")
        return 0
    from pcivm.run import run_vm

    return run_vm(argv)
