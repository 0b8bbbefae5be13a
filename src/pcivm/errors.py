"""The one exception family for errors a user can fix.

The CLI turns a `PcivmError` into one line on stderr and its `exit_status`; anything else
is an internal bug and keeps its traceback (shown only with --debug).
"""


class PcivmError(Exception):
    """A user-facing error: bad input, a missing file, an unusable host."""

    exit_status = 1


class UsageError(PcivmError):
    """The command line is malformed (an unknown or malformed option)."""


class HostError(PcivmError):
    """The host lacks something pcivm needs (/dev/kvm, QEMU, a package, the network)."""


class GuestImageError(HostError):
    """The guest image cannot be built or found."""
