"""`pcivm guest build` and `pcivm guest path`: the guest image in the user's cache."""

from __future__ import annotations

import argparse
import logging
import time

from pcivm.errors import UsageError
from pcivm.guest.image import ensure_image


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line through the CLI's error path, not argparse's
        raise UsageError(f"guest: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pcivm guest", description="The guest image (docs/guest.md).")
    parser.add_argument("-d", "--debug", action="store_true", help="log every build step")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the guest image if it is missing or stale")
    path = sub.add_parser("path", help="print the kernel and initramfs paths, one a line")
    path.add_argument(
        "--vmlinux", action="store_true", help="print the ELF vmlinux instead of the bzImage"
    )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    # A build takes a while: say what it is doing (paths alone stay quiet for scripts).
    if args.debug or args.command == "build":
        logging.getLogger("pcivm").setLevel(logging.DEBUG if args.debug else logging.INFO)
    started = time.monotonic()
    image = ensure_image()
    if args.command == "build":
        print(f"kernel  {image.kernel.bzimage}")
        print(f"vmlinux {image.vmlinux}")
        print(f"initrd  {image.initrd}")
        print(f"ready in {time.monotonic() - started:.1f} s")
    else:
        print(image.vmlinux if args.vmlinux else image.kernel.bzimage)
        print(image.initrd)
    return 0
