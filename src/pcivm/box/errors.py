"""Errors of the box. The CLI prints each as one line; none is an internal bug."""

from __future__ import annotations

# Exit statuses of `pcivm box` itself, chosen apart from a command's own statuses the way
# `timeout` (124) and container runners (125) do.
STATUS_TIMED_OUT = 124
STATUS_BOX_FAILED = 125
STATUS_NOT_FOUND = 127


class BoxError(Exception):
    """The box cannot do what was asked: something is missing or the machine failed."""


class BoxSetupError(BoxError):
    """Something the box needs is missing on the host (QEMU, virtiofsd, the kernel...)."""


class BoxStartError(BoxError):
    """The box machine did not come up; carries the tail of its console log."""

    def __init__(self, message: str, console_tail: str = "", log_dir: str | None = None):
        self.console_tail = console_tail
        self.log_dir = log_dir
        super().__init__(message)

    def details(self) -> str:
        lines = [str(self)]
        if self.console_tail:
            lines.append("last lines of its logs:")
            lines += [f"  {line}" for line in self.console_tail.splitlines()]
        if self.log_dir:
            lines.append(f"logs kept in {self.log_dir}")
        return "\n".join(lines)


class BoxNoAnswerError(BoxStartError):
    """The box machine started but its agent never answered: the nested machine hung or
    died while booting (seen rarely, with nothing on the console), not a setup problem."""


class BoxDiedError(BoxStartError):
    """The box machine went away while a command was running."""


class BoxTimeoutError(BoxError):
    """A command ran longer than its timeout and was killed inside the box."""

    def __init__(self, argv: list[str], timeout: float, stdout: bytes = b"", stderr: bytes = b""):
        self.argv = argv
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"{argv[0]}: timed out after {timeout:g} s and was killed")
