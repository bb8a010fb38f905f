"""Reporting: the progress line of a turn, the summary table (text, and rows for the HTML), and
writing ``bench-<UTC>.json`` / ``bench-latest.json`` / ``bench-<UTC>.html``."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .stats import compare_rows, ratio, stage_names

RESULTS = Path(__file__).resolve().parent.parent / "results"

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
    rows.append(("missed turns (rate)", _get("missed_rate"), "rate"))
    rows.append(("WER", _get("wer"), "rate"))
    stages = stage_names(
        [{"stages_ms": c.get("summary", {}).get("stages_ms", {})} for c in configs]
    )
    for name in stages:
        if name != "speech_end":
            rows.append((f"server {name} p50 (ms)", _get("stages_ms", name, "p50"), "ms"))
    rows.append(("transport p50 (ms)", _get("transport_ms", "p50"), "ms"))
    if any(_get("overhead_ms", "p50")(c.get("summary", {})) is not None for c in configs):
        rows.append(("framework overhead p50 (ms)", _get("overhead_ms", "p50"), "ms"))
    rows.append(("server RSS peak (MB)", _get("server_rss_mb", "peak"), "mb"))
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


def format_turn(rec: Mapping[str, Any]) -> str:
    """The progress line of one turn."""
    where = f"[{rec.get('config', '')} x{rec.get('concurrency', 1)} caller {rec.get('caller', 1)}]"
    what = f"{rec.get('scenario', '')}/{rec['turn']} ({rec['kind']})"
    if rec.get("cut"):
        return f"{where} {what}: cut by the time limit"
    if rec["missed"]:
        errors = "; ".join(rec.get("errors") or [])
        return f"{where} {what}: MISSED (no reply)" + (f" {errors}" if errors else "")
    parts = [f"v2v {rec['voice_to_voice_ms']:.0f} ms"]
    if rec.get("pauses"):
        parts.append(f"false interruptions {rec['false_interruptions']}/{len(rec['pauses'])}")
    barge = rec.get("barge_in")
    if barge:
        state = barge.get("status") or ("cleared" if barge.get("clear_ms") is not None else "")
        if not barge["reply_playing"] or barge["interrupted"] is False:
            parts.append("barge-in: the reply had ended")
        else:
            parts.append(f"barge-in {fmt(barge['latency_ms'])} ms {state}".rstrip())
        parts.append(f"reply after it {fmt(barge['reply_v2v_ms'])} ms")
    if rec.get("wer") is not None:
        parts.append(f"WER {rec['wer']:.2f}")
    stages = {k: v for k, v in (rec.get("stages_ms") or {}).items() if k != "speech_end"}
    if rec.get("overhead_ms") is not None:
        stages["overhead"] = rec["overhead_ms"]
    if stages:
        parts.append(" ".join(f"{k}={fmt(v)}" for k, v in stages.items()))
    return f"{where} {what}: " + " | ".join(parts)


def summary_text(report: Mapping[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "",
        f"== voice bench ({report['protocol']}) ==",
        f"machine: {m['cpu']}, {m['usable_cores']}/{m['cores']} cores usable, "
        f"{m['platform']}, Python {m['python']}",
    ]
    for c in report["configs"]:
        default = f"the server at {report['url']}" if report.get("url") else "server defaults"
        settings = ",".join(f"{k}={v}" for k, v in c["settings"].items()) or default
        s = c.get("summary") or {}
        sweep = c.get("sweep") or {}
        per_level = "  ".join(f"x{k}: {fmt(v)} ms" for k, v in (sweep.get("p50_ms") or {}).items())
        lines.append(f"{c['name']}: {settings}")
        lines.append(
            f"  turns {s.get('turns', 0)}, missed {s.get('missed', 0)}"
            f", cut by the time limit {s.get('cut_by_time_limit', 0)}"
            f"; p50 voice-to-voice per concurrency: {per_level or '-'}"
        )
        if c.get("skipped_reference_keys"):
            lines.append(f"  (not known to this server: {', '.join(c['skipped_reference_keys'])})")
        if c.get("error"):
            lines.append(f"  ERROR: {c['error']}")
    header, rows = table(report)
    lines += ["", render_table(header, rows)]
    return "\n".join(lines)


def write_outputs(report: Mapping[str, Any], out_dir: Path | None = None) -> tuple[Path, Path]:
    """``bench-<UTC>.json``, ``bench-latest.json`` and ``bench-<UTC>.html`` in ``out_dir``."""
    from .html import render_html

    folder = out_dir or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=1) + "\n"
    json_path = folder / f"bench-{stamp}.json"
    json_path.write_text(text)
    (folder / "bench-latest.json").write_text(text)
    html_path = folder / f"bench-{stamp}.html"
    html_path.write_text(render_html(report))
    return json_path, html_path


def compare_text(a: Mapping[str, Any], b: Mapping[str, Any], names: tuple[str, str]) -> str:
    rows = compare_rows(a, b)
    if not rows:
        return "no configuration in common (and not one each): nothing to compare"
    header = ["metric", names[0], names[1], "B/A"]
    body = [[k, _num(x), _num(y), fmt(r, "ratio")] for k, x, y, r in rows]
    return render_table(header, body)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if abs(value) < 10 else f"{value:.1f}"
