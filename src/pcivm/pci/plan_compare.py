"""Plan against guest: where `pcivm plan --json` and the guest's probe report disagree.

Both sides list PCI functions by bdf with the same fields (docs/probe-report.md): ids as
hex strings, and `bars` whose `index` is Linux's resource number (0-5 BARs, 13-15 bridge
windows). The comparison is pure: two JSON documents in, one line per difference out.
"""

from __future__ import annotations

ID_FIELDS = ("vendor", "device", "subsystem_vendor", "subsystem_device", "revision", "class")
BAR_INDICES = range(0, 6)
WINDOW_INDICES = {13: "IO window", 14: "memory window", 15: "prefetchable window"}
RANGE_FLAGS = ("type", "prefetch", "mem64")


def _hex(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 16)
    except ValueError:
        return None


def _what(index: int) -> str:
    return WINDOW_INDICES.get(index, f"BAR{index}")


def _show(entry: dict) -> str:
    start, size = _hex(entry.get("start")), _hex(entry.get("size"))
    if start is None or size is None:
        return "?"
    return f"[{entry.get('type', '?')} {start:#x}-{start + size - 1:#x}]"


def compare(plan_json: dict, probe_report: dict, *, windows: bool = True) -> list[str]:
    """Differences between a plan (`Plan.to_json()`) and a probe report: the device set,
    ids, each BAR's presence, address, size and flags, and (with `windows`) each bridge
    window. Resources Linux numbers otherwise (ROM, SR-IOV) are not compared."""
    out: list[str] = []
    planned = {e["bdf"]: e for e in plan_json.get("pci", [])}
    seen = {e["bdf"]: e for e in probe_report.get("pci", [])}
    unassigned = {(u["bdf"], u["index"]): u for u in plan_json.get("unassigned", [])}

    for bdf in sorted(set(planned) - set(seen)):
        out.append(f"{bdf}: in the plan, not seen by the guest")
    for bdf in sorted(set(seen) - set(planned)):
        out.append(f"{bdf}: seen by the guest, not in the plan")

    indices = list(BAR_INDICES) + (list(WINDOW_INDICES) if windows else [])
    for bdf in sorted(set(planned) & set(seen)):
        p, g = planned[bdf], seen[bdf]
        for key in ID_FIELDS:
            if key in p and key in g and _hex(p[key]) != _hex(g[key]):
                out.append(f"{bdf}: {key} is {p[key]} in the plan, {g[key]} in the guest")
        p_bars = {b["index"]: b for b in p.get("bars", [])}
        g_bars = {b["index"]: b for b in g.get("bars", [])}
        for index in indices:
            pb, gb = p_bars.get(index), g_bars.get(index)
            what = _what(index)
            if pb is None and gb is None:
                continue
            if gb is None:
                out.append(f"{bdf} {what}: plan {_show(pb)}, the guest left it without address")
            elif pb is None:
                left = unassigned.get((bdf, index))
                if left is not None:
                    out.append(
                        f"{bdf} {what}: the plan leaves it unassigned ({left.get('reason', '')}),"
                        f" the guest has it at {_show(gb)}"
                    )
                else:
                    out.append(f"{bdf} {what}: the guest has {_show(gb)}, the plan has none")
            else:
                for key in ("start", "size"):
                    if _hex(pb.get(key)) != _hex(gb.get(key)):
                        out.append(
                            f"{bdf} {what}: {key} {pb.get(key)} in the plan, "
                            f"{gb.get(key)} in the guest"
                        )
                for key in RANGE_FLAGS:
                    if key in pb and key in gb and pb[key] != gb[key]:
                        out.append(
                            f"{bdf} {what}: {key} {pb[key]} in the plan, {gb[key]} in the guest"
                        )
    return out
