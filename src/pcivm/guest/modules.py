"""Which kernel modules to load, and in what order, from depmod's modules.dep."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class Module:
    name: str  # as the kernel names it: virtio-rng.ko is module virtio_rng
    path: str  # relative to lib/modules/<release>
    depends: tuple[str, ...]


def module_name(path: str) -> str:
    """`kernel/drivers/char/hw_random/virtio-rng.ko` -> `virtio_rng` (the kernel treats
    '-' and '_' alike in module names and reports them with '_')."""
    base = PurePosixPath(path).name
    return base.split(".ko", 1)[0].replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, Module]:
    """Parse modules.dep: `path: dep-path dep-path...`, one module a line."""
    graph: dict[str, Module] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        path, _, deps = line.partition(":")
        name = module_name(path)
        graph[name] = Module(name, path.strip(), tuple(module_name(d) for d in deps.split()))
    return graph


def load_order(graph: dict[str, Module], wanted: list[str]) -> list[str]:
    """`wanted` and everything they need, each after what it depends on."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name not in graph:
            raise KeyError(f"module {name} is not in modules.dep")
        if name in visiting:
            raise ValueError(f"module dependency cycle through {name}")
        visiting.add(name)
        for dep in graph[name].depends:
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order
