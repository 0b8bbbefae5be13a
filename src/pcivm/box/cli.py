"""`pcivm box [options] [--] COMMAND...`: run COMMAND where a hardware-assisted KVM exists.

The caller (pcivm.box_command) supplies the kernel provider; everything else is here.
Errors are one line (plus the console's tail when the machine fails to start).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field

from pcivm.box import terminal
from pcivm.box.api import AUTO, DIRECT, TCG, KernelProvider, choose_runner_kind, start_runner
from pcivm.box.detect import host_kvm_kind
from pcivm.box.errors import (
    STATUS_BOX_FAILED,
    STATUS_TIMED_OUT,
    BoxError,
    BoxStartError,
    BoxTimeoutError,
)
from pcivm.box.qemu import CACHE_MODES, MachineConfig, find_qemu, find_virtiofsd
from pcivm.box.runners import TcgRunner

USAGE = """\
usage: pcivm box [--check] [--tcg | --direct] [--timeout SECONDS]
                 [--memory MIB] [--cpus N] [--cache MODE] [--debug] [--] COMMAND [ARG...]

Run COMMAND where a hardware-assisted KVM exists: on this host when its /dev/kvm is
hardware-assisted, otherwise in a QEMU TCG machine with emulated AMD SVM that sees this
host's files at the same paths. The exit status, stdout and stderr are the command's.

  --check            say which KVM this host has and whether the box is needed
  --tcg, --direct    force the TCG machine, or running directly on this host
  --timeout SECONDS  kill COMMAND after this long (exit status 124)
  --memory MIB       the machine's memory (default 4096)
  --cpus N           the machine's vCPUs (default 2)
  --cache MODE       virtiofs cache mode: none (default) or auto (see docs/box.md)
  --debug            log what the box does on stderr
"""

STATUS_USAGE = 2
# After this many ^C the box stops forwarding them and tears the machine down.
INTERRUPTS_BEFORE_TEARDOWN = 3


class UsageProblem(ValueError):
    pass


class Terminated(BaseException):
    """SIGTERM or SIGHUP before the command runs: unwind so the machine is torn down."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signum)


@contextlib.contextmanager
def _terminated_by_signals():
    def terminate(signum, _frame):
        raise Terminated(signum)

    signals = (signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, terminate) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class BoxArgs:
    command: list[str] = field(default_factory=list)
    check: bool = False
    help: bool = False
    debug: bool = False
    mode: str = AUTO
    timeout: float | None = None
    memory_mib: int = MachineConfig.memory_mib
    cpus: int = MachineConfig.cpus
    cache: str = MachineConfig.cache

    def machine_config(self) -> MachineConfig:
        return MachineConfig(memory_mib=self.memory_mib, cpus=self.cpus, cache=self.cache)


def parse_args(argv: list[str]) -> BoxArgs:
    """Options up to `--` or the first word that is not one; the rest is the command."""
    args = BoxArgs()
    flags = {"--check": "check", "-h": "help", "--help": "help", "--debug": "debug", "-d": "debug"}
    modes = {"--tcg": TCG, "--direct": DIRECT}
    valued = {
        "--timeout": ("timeout", float),
        "--memory": ("memory_mib", int),
        "--cpus": ("cpus", int),
        "--cache": ("cache", _cache_mode),
    }
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-":
            break
        name, eq, inline = word.partition("=")
        if word in flags:
            setattr(args, flags[word], True)
        elif word in modes:
            args.mode = modes[word]
        elif name in valued:
            attr, convert = valued[name]
            if not eq:
                i += 1
                if i == len(argv):
                    raise UsageProblem(f"{name} needs a value")
                inline = argv[i]
            try:
                value = convert(inline)
            except ValueError:
                raise UsageProblem(f"{name}: bad value {inline!r}") from None
            if isinstance(value, int | float) and value <= 0:
                raise UsageProblem(f"{name} must be positive")
            setattr(args, attr, value)
        else:
            raise UsageProblem(f"unknown option {word}")
        i += 1
    args.command = argv[i:]
    if not args.command and not (args.check or args.help):
        raise UsageProblem("no command given")
    return args


def _cache_mode(word: str) -> str:
    if word not in CACHE_MODES:
        raise ValueError(word)
    return word


def main(argv: list[str], kernel_provider: KernelProvider) -> int:
    try:
        args = parse_args(argv)
    except UsageProblem as exc:
        print(f"pcivm box: {exc}\n{USAGE}", file=sys.stderr, end="")
        return STATUS_USAGE
    if args.help:
        print(USAGE, end="")
        return 0
    if args.debug:
        logging.getLogger("pcivm.box").setLevel(logging.DEBUG)
    try:
        with _terminated_by_signals():
            if args.check:
                return check(args, kernel_provider)
            return run_command(args, kernel_provider)
    except Terminated as exc:
        return 128 + exc.signum
    except BoxTimeoutError as exc:
        print(f"pcivm box: {exc}", file=sys.stderr)
        return STATUS_TIMED_OUT
    except BoxStartError as exc:
        print(f"pcivm box: {exc.details()}", file=sys.stderr)
        return STATUS_BOX_FAILED
    except BoxError as exc:
        print(f"pcivm box: {exc}", file=sys.stderr)
        return STATUS_BOX_FAILED


def check(args: BoxArgs, kernel_provider: KernelProvider) -> int:
    kvm = host_kvm_kind()
    print(f"host KVM: {kvm.kind}: {kvm.reason}")
    if choose_runner_kind(kvm, args.mode) == DIRECT:
        print("box: not needed, commands run directly on this host")
        return 0
    print("box: needed, commands run in a QEMU TCG machine with emulated AMD SVM")
    config = args.machine_config()
    problems = 0
    for name, found in (("QEMU", find_qemu(config)), ("virtiofsd", find_virtiofsd(config))):
        print(f"{name}: {found or 'MISSING'}")
        problems += found is None
    try:
        kernel = kernel_provider()
        kernel.check()
        print(f"kernel: {kernel.release} ({kernel.bzimage})")
    except BoxError as exc:
        print(f"kernel: MISSING: {exc}")
        problems += 1
    print("box: ready" if not problems else "box: cannot start (see above)")
    return 0 if not problems else 1


def run_command(args: BoxArgs, kernel_provider: KernelProvider) -> int:
    runner = start_runner(kernel_provider, args.mode, args.machine_config())
    try:
        if not isinstance(runner, TcgRunner):
            # The host's own terminal, signals and descriptors serve the command as they are.
            return runner.run(args.command, timeout=args.timeout)
        return _run_in_machine(runner, args)
    except BrokenPipeError:
        # Our stdout's reader went away (`| head`): end as a shell pipeline member would.
        _silence_stdout()
        return 128 + signal.SIGPIPE
    finally:
        runner.close()


def _run_in_machine(runner: TcgRunner, args: BoxArgs) -> int:
    interactive = terminal.is_terminal(0) and terminal.is_terminal(1)
    stdin = sys.stdin.buffer if _fd_open(0) else None
    forwarded = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]
    previous = {signum: signal.getsignal(signum) for signum in forwarded}
    interrupts = 0

    def forward(signum, _frame):
        nonlocal interrupts
        interrupts += signum == signal.SIGINT
        if interrupts >= INTERRUPTS_BEFORE_TEARDOWN:
            raise KeyboardInterrupt
        runner.send_signal(signum)

    for signum in forwarded:
        signal.signal(signum, forward)
    try:
        if not interactive:
            return runner.run(args.command, stdin=stdin, timeout=args.timeout)
        return _run_interactive(runner, args, stdin)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_interactive(runner: TcgRunner, args: BoxArgs, stdin) -> int:
    resized = []
    previous = signal.signal(signal.SIGWINCH, lambda *_: resized.append(True))

    def forward_resize() -> None:
        if resized:
            resized.clear()
            runner.resize(*terminal.window_size(1))

    try:
        with terminal.raw_mode(0):
            return runner.run(
                args.command,
                stdin=stdin,
                timeout=args.timeout,
                tty=True,
                winsize=terminal.window_size(1),
                on_turn=forward_resize,
            )
    finally:
        signal.signal(signal.SIGWINCH, previous)


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
