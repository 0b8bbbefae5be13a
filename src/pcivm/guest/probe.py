"""Reading what the guest's /init printed on the console (docs/probe-report.md).

The console is a serial line: it carries CRLF line ends and kernel log lines around the
markers, and it may stop short when the guest dies or a timeout kills the VMM.
"""

from __future__ import annotations

import json
import re

from pcivm.errors import PcivmError

PROBE_BEGIN = "===PCIVM-PROBE-BEGIN==="
PROBE_END = "===PCIVM-PROBE-END==="
RUN_BEGIN = "===PCIVM-RUN-BEGIN==="
_RUN_EXIT = re.compile(r"^===PCIVM-RUN-EXIT=(\d+)===$", re.M)
_TAIL_LINES = 5


class ProbeReportError(PcivmError):
    """The console holds no complete, valid probe report."""


def normalize_console(text: str) -> str:
    """Serial line ends (CRLF, stray CR) as plain newlines."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def tail(text: str, lines: int = _TAIL_LINES) -> str:
    """The last non-empty lines of a console, joined with ' | ' for a one-line error."""
    kept = [line.strip() for line in normalize_console(text).splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "(console empty)"


def parse_probe_report(console_text: str) -> dict:
    """The JSON object between the probe markers of a console."""
    text = normalize_console(console_text)
    begin = _marker_line(text, PROBE_BEGIN)
    if begin < 0:
        raise ProbeReportError(f"no probe report on the console; it ended with: {tail(text)}")
    body_start = begin + len(PROBE_BEGIN)
    end = _marker_line(text, PROBE_END, body_start)
    if end < 0:
        raise ProbeReportError(
            f"probe report truncated (no {PROBE_END}); the console ended with: {tail(text)}"
        )
    body = text[body_start:end]
    # The report is one line, but a kernel message may still land beside it: take the
    # line that is the JSON object.
    candidates = [line for line in body.splitlines() if line.startswith("{")] or [body]
    try:
        report = json.loads(candidates[0])
    except ValueError as exc:
        raise ProbeReportError(f"probe report is not valid JSON: {exc}") from None
    if not isinstance(report, dict) or "pci" not in report:
        raise ProbeReportError("probe report is not a report object (no 'pci' key)")
    return report


def parse_run_exit(console_text: str) -> int | None:
    """The exit status pcivm.run's command reported, or None if it never finished."""
    matches = _RUN_EXIT.findall(normalize_console(console_text))
    return int(matches[-1]) if matches else None


def parse_run_output(console_text: str) -> str | None:
    """What pcivm.run's command printed (kernel lines interleaved there are kept), or
    None when the command did not finish."""
    text = normalize_console(console_text)
    begin = _marker_line(text, RUN_BEGIN)
    end_match = _RUN_EXIT.search(text, max(begin, 0))
    if begin < 0 or end_match is None:
        return None
    return text[begin + len(RUN_BEGIN) + 1 : end_match.start()]


def _marker_line(text: str, marker: str, start: int = 0) -> int:
    """Where `marker` stands alone on a line (a kernel line may precede it without a
    newline when the two were written at once, so only its end must close the line)."""
    match = re.compile(re.escape(marker) + r"[ \t]*$", re.M).search(text, start)
    return match.start() if match else -1
