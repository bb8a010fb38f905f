"""The summary table of a report, one column per configuration and the ratio of each to the
first: its rows, the number format, and plain-text rendering. Shared by the text report
(``report``) and the HTML page (``html``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .stats import ratio, stage_names

Getter = Callable[[Mapping[str, Any]], float | None]


def _get(*path: str) -> Getter:
    def get(summary: Mapping[str, Any]) -> float | None:
        value: Any = summary
        for key in path:
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    return get


def summary_rows(configs: list[Mapping[str, Any]]) -> list[tuple[str, Getter, str]]:
    """(label, getter on a configuration's summary, format) for the summary table."""
    rows: list[tuple[str, Getter, str]] = []
    for p in ("p50", "p95", "p99", "max"):
        rows.append((f"voice-to-voice {p} (ms)", _get("voice_to_voice_ms", p), "ms"))
    for p in ("p50", "p95", "max"):
        rows.append((f"barge-in {p} (ms)", _get("barge_in_ms", p), "ms"))
    rows.append(("reply after barge-in p50 (ms)", _get("after_barge_in_v2v_ms", "p50"), "ms"))
    rows.append(("false interruptions (rate)", _get("false_interruptions", "rate"), "rate"))
    rows.append(("replies cut off in silence", _get("cut_off_in_silence"), "rate"))
    rows.append(("missed turns (rate)", _get("missed_rate"), "rate"))
    if any(_get("overlaps", "backchannels")(c.get("summary", {})) for c in configs):
        over = "overlaps"
        rows.append(
            (
                "backchannels that interrupted (rate)",
                _get(over, "backchannel_interrupted_rate"),
                "rate",
            )
        )
        rows.append(
            ("interruptions that stopped (rate)", _get(over, "interruption_stopped_rate"), "rate")
        )
        rows.append(("interruption stop p95 (ms)", _get(over, "stop_ms", "p95"), "ms"))
    rows.append(("WER", _get("wer"), "rate"))
    stages = stage_names(
        [{"stages_ms": c.get("summary", {}).get("stages_ms", {})} for c in configs]
    )
    for name in stages:
        if name != "speech_end":
            rows.append((f"server {name} p50 (ms)", _get("stages_ms", name, "p50"), "ms"))
    rows.append(("transport p50 (ms)", _get("transport_ms", "p50"), "ms"))
    rows.append(("replies with a gap (count)", _get("stalls", "replies"), "rate"))
    rows.append(("gaps in replies, total (ms)", _get("stalls", "total_ms"), "ms"))
    if any(_get("overhead_ms", "p50")(c.get("summary", {})) is not None for c in configs):
        rows.append(("framework overhead p50 (ms)", _get("overhead_ms", "p50"), "ms"))
    rows.append(("server RSS peak (MB)", _get("server_rss_mb", "peak"), "mb"))
    if any(_get("server_cpu", "server_cores")(c.get("summary", {})) for c in configs):
        rows.append(("server CPU (cores)", _get("server_cpu", "server_cores"), "rate"))
        rows.append(("server CPU a turn (ms)", _get("server_cpu", "server_ms_per_turn"), "ms"))
    rows.append(("sessions per core", _get("sessions_per_core"), "rate"))
    return rows


def fmt(value: float | None, kind: str = "ms") -> str:
    if value is None:
        return "-"
    if kind == "ms" or kind == "mb":
        return f"{value:.0f}"
    if kind == "ratio":
        return f"{value:.2f}x"
    return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"


def table(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The summary table: one column per configuration, then ratios to the first."""
    configs = [c for c in report.get("configs", [])]
    header = ["metric", *(c["name"] for c in configs)]
    header += [f"{c['name']} / {configs[0]['name']}" for c in configs[1:]]
    rows = []
    for label, get, kind in summary_rows(configs):
        values = [get(c.get("summary") or {}) for c in configs]
        cells = [label, *(fmt(v, kind) for v in values)]
        cells += [fmt(ratio(values[0], v), "ratio") for v in values[1:]]
        rows.append(cells)
    return header, rows


def render_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)
