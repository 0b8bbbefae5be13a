"""`pcivm box`: the box (pcivm.box) with the guest image's kernel.

The box package knows nothing of the rest of pcivm; this is where the two meet. The
kernel is fetched only when a TCG machine is really needed.
"""

from __future__ import annotations

from pcivm.box import BoxKernel, BoxSetupError
from pcivm.box.cli import main as box_main
from pcivm.errors import PcivmError


def kernel_provider() -> BoxKernel:
    from pcivm.guest.image import ensure_kernel

    try:
        tree = ensure_kernel()
    except PcivmError as exc:
        raise BoxSetupError(f"the box's kernel is not available: {exc}") from None
    return BoxKernel(bzimage=tree.bzimage, modules_dir=tree.modules_dir)


def main(argv: list[str]) -> int:
    return box_main(argv, kernel_provider)
