"""The HTML report: one self-contained page (inline CSS and SVG drawn here; no script, no
external resource) with the summary table, the latency CDFs, the per-stage bars of every turn
and p50 latency against the number of concurrent sessions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from .stats import STAGES
from .table import fmt, table

PALETTE = ("#1f5fbf", "#d1495b", "#2a9d55", "#8e5bd6", "#e08a00", "#6b6b6b")
BAR_STAGES: tuple[tuple[str, str, str], ...] = (
    ("turn_end", "end of turn", "#9ecae1"),
    ("asr_done", "ASR", "#4292c6"),
    ("llm_first_token", "LLM first token", "#f4a259"),
    ("first_clause", "LLM first clause", "#f6c89f"),
    ("tts_first_audio", "TTS first audio", "#8cb369"),
    ("first_audio_sent", "sent", "#bc4b51"),
    ("client", "transport (client v2v)", "#b8b8b8"),
)

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
th { background: #f3f3f3; } .muted { color: #777; } .err { color: #b00; }
svg { background: #fff; border: 1px solid #eee; margin: 6px 0; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
code { background: #f5f5f5; padding: 0 3px; }
"""


# ---------------------------------------------------------------- SVG primitives


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5, 5 times a power of ten apart)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 10))
    return ticks


def _label(value: float) -> str:
    if value == int(value):
        return f"{int(value)}"
    return f"{value:g}"


@dataclass(slots=True)
class Series:
    name: str
    color: str
    points: list[tuple[float, float]]
    step: bool = False
    dashed: bool = False
    markers: bool = False
    width: float = 2.0


@dataclass(slots=True)
class Frame:
    """A plot area with linear axes."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    width: int = 680
    height: int = 300
    left: int = 64
    right: int = 150
    top: int = 28
    bottom: int = 44
    parts: list[str] = field(default_factory=list)

    def x(self, value: float) -> float:
        lo, hi = self.x_range
        span = (hi - lo) or 1.0
        return self.left + (value - lo) / span * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        lo, hi = self.y_range
        span = (hi - lo) or 1.0
        return (
            self.height - self.bottom - (value - lo) / span * (self.height - self.top - self.bottom)
        )

    def axes(
        self,
        title: str,
        x_label: str,
        y_label: str,
        x_ticks: Sequence[float],
        y_ticks: Sequence[float],
        y_format: str = "{}",
    ) -> None:
        p = self.parts
        x0, x1 = self.left, self.width - self.right
        y0, y1 = self.height - self.bottom, self.top
        p.append(f'<text x="{x0}" y="16" font-weight="bold">{escape(title)}</text>')
        for t in y_ticks:
            y = self.y(t)
            p.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
            label = y_format.format(_label(t))
            p.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        for t in x_ticks:
            x = self.x(t)
            p.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y1}" stroke="#f2f2f2"/>')
            p.append(f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle">{_label(t)}</text>')
        p.append(f'<line x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}" stroke="#555"/>')
        p.append(f'<line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}" stroke="#555"/>')
        p.append(
            f'<text x="{(x0 + x1) / 2:.1f}" y="{self.height - 8}" text-anchor="middle">'
            f"{escape(x_label)}</text>"
        )
        mid = (y0 + y1) / 2
        p.append(
            f'<text x="14" y="{mid:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 14 {mid:.1f})">{escape(y_label)}</text>'
        )

    def legend(self, entries: Sequence[tuple[str, str, bool]]) -> None:
        x = self.width - self.right + 14
        for i, (name, color, dashed) in enumerate(entries):
            y = self.top + 8 + i * 18
            dash = ' stroke-dasharray="5 3"' if dashed else ""
            self.parts.append(
                f'<line x1="{x}" x2="{x + 22}" y1="{y}" y2="{y}" stroke="{color}" '
                f'stroke-width="2.5"{dash}/>'
            )
            self.parts.append(f'<text x="{x + 28}" y="{y + 4}">{escape(name)}</text>')

    def svg(self, css_class: str) -> str:
        body = "\n".join(self.parts)
        return (
            f'<svg class="{css_class}" xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
            f'height="{self.height}" viewBox="0 0 {self.width} {self.height}">\n{body}\n</svg>'
        )


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    css_class: str,
    y_range: tuple[float, float] | None = None,
    x_ticks: Sequence[float] | None = None,
    y_format: str = "{}",
) -> str:
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    if not xs:
        return _empty(title, css_class)
    xt = list(x_ticks) if x_ticks else nice_ticks(min(0.0, min(xs)), max(xs))
    yt = nice_ticks(*(y_range or (min(0.0, min(ys)), max(ys))))
    if y_range is not None:
        yt = [t for t in yt if y_range[0] <= t <= y_range[1]]
    frame = Frame((min(xt), max(xt)), (min(yt), max(yt)) if y_range is None else y_range)
    frame.axes(title, x_label, y_label, xt, yt, y_format)
    for s in series:
        points = s.points
        if s.step:
            stepped: list[tuple[float, float]] = []
            prev_y = 0.0
            for x, y in points:
                stepped += [(x, prev_y), (x, y)]
                prev_y = y
            points = stepped
        path = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in points)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        frame.parts.append(
            f'<polyline fill="none" stroke="{s.color}" stroke-width="{s.width}"{dash} '
            f'points="{path}"><title>{escape(s.name)}</title></polyline>'
        )
        if s.markers:
            for x, y in s.points:
                frame.parts.append(
                    f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="4" fill="{s.color}">'
                    f"<title>{escape(s.name)}: {_label(x)} → {y:.0f}</title></circle>"
                )
    frame.legend([(s.name, s.color, s.dashed) for s in series])
    return frame.svg(css_class)


def _empty(title: str, css_class: str) -> str:
    return (
        f'<svg class="{css_class}" xmlns="http://www.w3.org/2000/svg" width="680" height="60" '
        f'viewBox="0 0 680 60"><text x="10" y="20" font-weight="bold">{escape(title)}</text>'
        '<text x="10" y="42">no data</text></svg>'
    )


Segments = list[tuple[str, float, float]]


def stage_segments(rec: Mapping[str, Any]) -> Segments:
    """(stage, from ms, to ms) for the stacked bar of one turn: each server mark from the previous
    one (running maximum, so marks out of order never draw backwards), then the client's
    voice-to-voice as the last segment."""
    stages = rec.get("stages_ms") or {}
    out: Segments = []
    at = 0.0
    for key, _, _ in BAR_STAGES:
        value = rec.get("voice_to_voice_ms") if key == "client" else stages.get(key)
        if value is None:
            continue
        end = max(at, float(value))
        out.append((key, at, end))
        at = end
    return out


def _bar_rows(turns: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Segments]]:
    rows = [(t, stage_segments(t)) for t in turns if not t.get("missed") and not t.get("cut")]
    return [(t, segs) for t, segs in rows if segs]


def stacked_bars(
    turns: Sequence[Mapping[str, Any]], *, title: str, css_class: str, x_max: float = 0.0
) -> str:
    """One horizontal bar per turn, one segment per stage; ``x_max`` shares a scale."""
    rows = _bar_rows(turns)
    if not rows:
        return _empty(title, css_class)
    bar, gap, top, left = 14, 4, 30, 170
    right = 150
    width = 760
    height = top + max(len(rows) * (bar + gap), len(BAR_STAGES) * 18) + 40
    hi = max(x_max, *(end for _, segs in rows for _, _, end in segs))
    ticks = nice_ticks(0.0, hi)
    span = ticks[-1] or 1.0

    def x(value: float) -> float:
        return left + value / span * (width - left - right)

    parts = [f'<text x="{left}" y="16" font-weight="bold">{escape(title)}</text>']
    bottom = height - 32
    for t in ticks:
        parts.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top - 4}" y2="{bottom}" stroke="#eee"/>'
        )
        parts.append(
            f'<text x="{x(t):.1f}" y="{bottom + 14}" text-anchor="middle">{_label(t)}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2:.1f}" y="{height - 4}" text-anchor="middle">'
        "ms after the caller's speech end</text>"
    )
    colors = {k: c for k, _, c in BAR_STAGES}
    names = {k: n for k, n, _ in BAR_STAGES}
    for i, (turn, segs) in enumerate(rows):
        y = top + i * (bar + gap)
        label = f"{turn.get('caller', 1)}·{turn.get('scenario', '')}/{turn.get('turn', '')}"
        parts.append(
            f'<text x="{left - 6}" y="{y + bar - 3}" text-anchor="end">{escape(label[:30])}</text>'
        )
        for key, start, end in segs:
            if end <= start:
                continue
            parts.append(
                f'<rect x="{x(start):.1f}" y="{y}" width="{x(end) - x(start):.1f}" height="{bar}" '
                f'fill="{colors[key]}"><title>{escape(names[key])}: {start:.0f} to {end:.0f} ms'
                "</title></rect>"
            )
    lx = width - right + 14
    for i, (_, name, color) in enumerate(BAR_STAGES):
        ly = top + i * 18
        parts.append(f'<rect x="{lx}" y="{ly}" width="14" height="12" fill="{color}"/>')
        parts.append(f'<text x="{lx + 20}" y="{ly + 10}">{escape(name)}</text>')
    body = "\n".join(parts)
    return (
        f'<svg class="{css_class}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">\n{body}\n</svg>'
    )


# ---------------------------------------------------------------- the page's charts


def _baseline_turns(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    levels = config.get("levels") or []
    if not levels:
        return []
    level = levels[0]["concurrency"]
    return [t for t in config.get("turns", []) if t.get("concurrency") == level]


def _cdf(values: Sequence[float]) -> list[tuple[float, float]]:
    ordered = sorted(values)
    n = len(ordered)
    return [(v, (i + 1) / n) for i, v in enumerate(ordered)]


def cdf_chart(report: Mapping[str, Any]) -> str:
    series = []
    for i, c in enumerate(report.get("configs", [])):
        color = PALETTE[i % len(PALETTE)]
        turns = [t for t in _baseline_turns(c) if not t.get("cut")]
        v2v = [t["voice_to_voice_ms"] for t in turns if t.get("voice_to_voice_ms") is not None]
        if v2v:
            series.append(Series(f"{c['name']} v2v", color, _cdf(v2v), step=True))
        barge = [
            b["latency_ms"]
            for t in turns
            if (b := t.get("barge_in")) and b["latency_ms"] is not None
        ]
        if barge:
            series.append(
                Series(f"{c['name']} barge-in", color, _cdf(barge), step=True, dashed=True)
            )
    return line_chart(
        series,
        title="Latency CDF (single-session level): voice-to-voice, barge-in",
        x_label="ms",
        y_label="fraction of turns",
        css_class="cdf",
        y_range=(0.0, 1.0),
    )


def concurrency_chart(report: Mapping[str, Any]) -> str:
    series = []
    levels_seen: set[float] = set()
    for i, c in enumerate(report.get("configs", [])):
        color = PALETTE[i % len(PALETTE)]
        sweep = c.get("sweep") or {}
        p50 = [(float(k), v) for k, v in (sweep.get("p50_ms") or {}).items() if v is not None]
        p95 = [(float(k), v) for k, v in (sweep.get("p95_ms") or {}).items() if v is not None]
        levels_seen.update(x for x, _ in p50)
        if p50:
            series.append(Series(f"{c['name']} p50", color, sorted(p50), markers=True))
        if p95:
            series.append(Series(f"{c['name']} p95", color, sorted(p95), dashed=True, width=1.2))
        base = sweep.get("baseline_p50_ms")
        if base is not None and p50:
            xs = [x for x, _ in p50]
            series.append(
                Series(
                    f"{c['name']} 1.5x p50",
                    color,
                    [(min(xs), base * 1.5), (max(xs), base * 1.5)],
                    dashed=True,
                    width=0.8,
                )
            )
    ticks = sorted(levels_seen | {0.0}) if levels_seen else None
    return line_chart(
        series,
        title="Voice-to-voice latency vs concurrent sessions",
        x_label="concurrent sessions",
        y_label="ms",
        css_class="concurrency",
        x_ticks=ticks,
    )


# ---------------------------------------------------------------- the page


def _table_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _turn_rows(config: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for t in config.get("turns", []):
        b = t.get("barge_in") or {}
        state = "cut" if t.get("cut") else "MISSED" if t["missed"] else "ok"
        false = f"{t['false_interruptions']}/{len(t['pauses'])}" if t.get("pauses") else "-"
        rows.append(
            [
                f"x{t.get('concurrency', 1)} #{t.get('caller', 1)} "
                f"{t.get('scenario', '')}/{t['turn']}",
                t["kind"],
                state,
                fmt(t.get("voice_to_voice_ms")),
                fmt(b.get("latency_ms")) if b else "-",
                (b.get("status") or ("cleared" if b.get("clear_ms") is not None else "-"))
                if b
                else "-",
                fmt(b.get("reply_v2v_ms")) if b else "-",
                false,
                "-" if t.get("wer") is None else f"{t['wer']:.2f}",
                t.get("user_transcript") or "",
                (t.get("reply_transcript") or "")[:80],
            ]
        )
    return rows


def render_html(report: Mapping[str, Any]) -> str:
    """The whole report page: one section after another, plots as inline SVG."""
    out = [
        *_head(report),
        *_configurations(report),
        *_summary(report),
        "<h2>Latency distribution</h2>",
        cdf_chart(report),
        *_stages(report),
        *_concurrency(report),
        *_turns(report),
        f"<p class='muted'>Stage order: {escape(', '.join(STAGES))}. Generated by "
        "<code>voice bench</code>.</p></body></html>",
    ]
    return "\n".join(out) + "\n"


def _head(report: Mapping[str, Any]) -> list[str]:
    m = report.get("machine", {})
    return [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>voice bench {escape(str(report.get('started_utc', '')))}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>voice bench — {escape(str(report.get('protocol', '')))}, "
        f"{escape(str(report.get('started_utc', '')))}</h1>",
        f"<p class='muted'>{escape(str(m.get('cpu', '')))}, {m.get('usable_cores')}/"
        f"{m.get('cores')} cores usable, {m.get('memory_gb')} GB, "
        f"{escape(str(m.get('platform', '')))}, Python {escape(str(m.get('python', '')))}"
        f"{''.join('; GPU ' + escape(str(g)) for g in m.get('gpus') or [])}; "
        f"wall time {report.get('wall_s')} s.</p>",
    ]


def _configurations(report: Mapping[str, Any]) -> list[str]:
    out = ["<h2>Configurations</h2><ul>"]
    for c in report.get("configs", []):
        settings = ", ".join(f"{k}={v}" for k, v in c.get("settings", {}).items()) or (
            f"the server at {report['url']}" if report.get("url") else "server defaults"
        )
        extra = ""
        if c.get("skipped_reference_keys"):
            skipped = escape(", ".join(c["skipped_reference_keys"]))
            extra = f" <span class='muted'>(unknown to this server, left out: {skipped})</span>"
        if c.get("error"):
            extra += f" <span class='err'>{escape(c['error'])}</span>"
        out.append(f"<li><b>{escape(c['name'])}</b>: <code>{escape(settings)}</code>{extra}</li>")
    out.append("</ul>")
    return out


def _summary(report: Mapping[str, Any]) -> list[str]:
    header, rows = table(report)
    return [
        "<h2>Summary</h2>",
        "<p class='muted'>At the lowest concurrency level. Voice-to-voice: the caller's last"
        " audible chunk sent → the first audible reply audio received. Barge-in: the"
        " interruption's first audible chunk sent → the last audio chunk of the interrupted reply"
        " received. Ratios are each configuration over the first.</p>",
        _table_html(header, rows),
    ]


def _stages(report: Mapping[str, Any]) -> list[str]:
    configs = report.get("configs", [])
    out = [
        "<h2>Where the time goes, per turn</h2>",
        "<p class='muted'>Server marks from <code>x.voice.turn.metrics</code> (ms after the end of"
        " the caller's speech as the server saw it), then the rest of the client's voice-to-voice"
        " (transport, buffering and the client/server speech-end offset).</p>",
    ]
    ends = [end for c in configs for _, segs in _bar_rows(_baseline_turns(c)) for *_, end in segs]
    for c in configs:
        title = f"{c['name']}: per-stage latency"
        out.append(
            stacked_bars(
                _baseline_turns(c), title=title, css_class="stages", x_max=max(ends or [0])
            )
        )
    return out


def _concurrency(report: Mapping[str, Any]) -> list[str]:
    rows = []
    for c in report.get("configs", []):
        sweep = c.get("sweep") or {}
        for level, p50 in (sweep.get("p50_ms") or {}).items():
            rows.append(
                [
                    c["name"],
                    str(level),
                    fmt(p50),
                    fmt((sweep.get("p95_ms") or {}).get(level)),
                    fmt((sweep.get("server_cores") or {}).get(level), "rate"),
                    fmt((sweep.get("server_ms_per_turn") or {}).get(level)),
                ]
            )
        rows.append(
            [
                c["name"],
                "sessions per core",
                fmt(sweep.get("sessions_per_core"), "rate"),
                f"max level {sweep.get('max_level')} on {sweep.get('cores')} cores",
                "",
                "",
            ]
        )
    header = [
        "configuration", "concurrency", "p50 (ms)", "p95 (ms)", "server CPU (cores)",
        "server CPU a turn (ms)",
    ]  # fmt: skip
    return ["<h2>Concurrency</h2>", concurrency_chart(report), _table_html(header, rows)]


_TURN_COLUMNS = [
    "turn", "kind", "state", "v2v", "barge-in", "status", "reply after", "false int.", "WER",
    "heard", "reply",
]  # fmt: skip


def _turns(report: Mapping[str, Any]) -> list[str]:
    out = ["<h2>Turns</h2>"]
    for c in report.get("configs", []):
        out.append(
            f"<details><summary>{escape(c['name'])}: {len(c.get('turns', []))} turns</summary>"
        )
        out.append(_table_html(_TURN_COLUMNS, _turn_rows(c)))
        out.append("</details>")
    return out
