"""Reporting: the progress line of a turn, the summary as text, and writing
``<name>-<UTC>.json`` / ``<name>-latest.json`` / ``<name>-<UTC>.html`` (``bench`` by default)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .html import render_html
from .stats import compare_rows
from .table import fmt, render_table, table

RESULTS = Path(__file__).resolve().parent.parent / "results"


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
    if rec.get("cut_off_in_silence"):
        parts.append(f"cut off in silence {rec['cut_off_in_silence']}x")
    barge = rec.get("barge_in")
    if barge:
        state = barge.get("status") or ("cleared" if barge.get("clear_ms") is not None else "")
        if barge.get("backchannel") and barge["reply_playing"]:
            parts.append(
                "backchannel: " + ("CUT THE REPLY OFF" if barge["cut_off"] else "it went on")
            )
        elif not barge["reply_playing"] or barge["interrupted"] is False:
            parts.append("barge-in: the reply had ended")
        elif barge.get("quiet_ms") is not None:  # (its stop cannot be timed)
            parts.append(f"barge-in into a {barge['quiet_ms']:.0f} ms pause, {state}".rstrip(", "))
        else:
            parts.append(f"barge-in {fmt(barge['latency_ms'])} ms {state}".rstrip())
        parts.append(f"reply after it {fmt(barge['reply_v2v_ms'])} ms")
    if gaps := rec.get("stalls_ms"):
        parts.append(f"gaps in the reply {len(gaps)} ({sum(gaps):.0f} ms)")
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
    if m.get("gpus"):
        lines.append("GPU: " + "; ".join(m["gpus"]))
    if probe := report.get("host_probe_ms"):
        lines.append(
            f"host probe (fixed work, median ms; more = a slower host): {probe['start']} at the"
            f" start, {probe['end']} at the end"
        )
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
        if cpu := _cpu_line(c):
            lines.append(cpu)
        if c.get("skipped_reference_keys"):
            lines.append(f"  (not known to this server: {', '.join(c['skipped_reference_keys'])})")
        if c.get("error"):
            lines.append(f"  ERROR: {c['error']}")
    header, rows = table(report)
    lines += ["", render_table(header, rows)]
    return "\n".join(lines)


def _cpu_line(config: Mapping[str, Any]) -> str:
    """Per level: the server's cores' worth of CPU, its CPU per answered turn, and how busy the
    whole host was (the callers' own work included)."""
    parts = []
    for level in config.get("levels", []):
        cpu = level.get("cpu") or {}
        if cpu.get("server_cores") is None:
            continue
        busy = cpu.get("host_busy")
        parts.append(
            f"x{level['concurrency']}: {cpu['server_cores']:.2f} cores"
            f" ({fmt(cpu.get('server_ms_per_turn'))} ms a turn"
            + (f", host {100 * busy:.0f} % busy" if busy is not None else "")
            + ")"
        )
    return "  server CPU per concurrency: " + "  ".join(parts) if parts else ""


def write_json(report: Mapping[str, Any], name: str, out_dir: Path | None = None) -> Path:
    """``<name>-<UTC>.json`` and a copy as ``<name>-latest.json`` in ``out_dir``; the first path."""
    folder = out_dir or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=1) + "\n"
    path = folder / f"{name}-{stamp}.json"
    path.write_text(text)
    (folder / f"{name}-latest.json").write_text(text)
    return path


def write_outputs(
    report: Mapping[str, Any], out_dir: Path | None = None, name: str = "bench"
) -> tuple[Path, Path]:
    """:func:`write_json`, and the HTML page beside it (``<name>-<UTC>.html``)."""
    json_path = write_json(report, name, out_dir)
    html_path = json_path.with_suffix(".html")
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
