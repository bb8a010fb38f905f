"""Statistics over turn records: percentiles, the summary of a run, the concurrency sweep's
sessions per core, and the ratios between two configurations or two reports."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jiwer
import numpy as np

from pipeline.metrics import REPORTED

from .timeline import normalize

STAGES = REPORTED
"""Server marks of ``x.voice.turn.metrics``, in pipeline order (others may follow)."""
SWEEP_TOLERANCE = 1.5
"""A concurrency level counts for sessions per core while its p50 stays within this factor."""


def describe(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """n, p50, p95, p99, max and mean (linear interpolation between samples; None when empty)."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if not arr.size:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "n": int(arr.size),
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "max": round(float(arr.max()), 1),
        "mean": round(float(arr.mean()), 1),
    }


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float | None:
    """Word error rate over all utterances together (edits / reference words)."""
    refs, hyps = [], []
    for ref, hyp in pairs:
        r = normalize(ref)
        if r:
            refs.append(r)
            hyps.append(normalize(hyp))
    if not refs:
        return None
    return round(float(jiwer.process_words(refs, hyps).wer), 4)


def stage_names(turns: Iterable[Mapping[str, Any]]) -> list[str]:
    seen: set[str] = set()
    for t in turns:
        seen.update((t.get("stages_ms") or {}).keys())
    return [s for s in STAGES if s in seen] + sorted(seen - set(STAGES))


def summarize(turns: Sequence[Mapping[str, Any]], protocol: str) -> dict[str, Any]:
    """The summary of a list of turn records (turns cut by the time limit are left out)."""
    measured = [t for t in turns if not t.get("cut")]
    answered = [t for t in measured if not t["missed"]]
    barges = [t["barge_in"] for t in measured if t.get("barge_in") is not None]
    pauses = [p for t in measured for p in t.get("pauses", [])]
    false = sum(1 for p in pauses if p["false_interruption"])
    missed = len(measured) - len(answered)
    summary: dict[str, Any] = {
        "turns": len(measured),
        "cut_by_time_limit": len(turns) - len(measured),
        "missed": missed,
        "missed_rate": round(missed / len(measured), 4) if measured else None,
        "voice_to_voice_ms": describe(t["voice_to_voice_ms"] for t in answered),
        "barge_in_ms": describe(b["latency_ms"] for b in barges),
        "barge_in": {
            "attempted": len(barges),
            "reply_playing": sum(1 for b in barges if b["reply_playing"]),
            "interrupted": sum(1 for b in barges if b["interrupted"]),
            "cancelled": sum(1 for b in barges if b.get("status") == "cancelled"),
            "cleared": sum(1 for b in barges if b.get("clear_ms") is not None),
            "measured": sum(1 for b in barges if b["latency_ms"] is not None),
            "into_a_pause": sum(1 for b in barges if b.get("quiet_ms") is not None),
        },
        "after_barge_in_v2v_ms": describe(b["reply_v2v_ms"] for b in barges),
        "false_interruptions": {
            "count": false,
            "pauses": len(pauses),
            "rate": round(false / len(pauses), 4) if pauses else None,
        },
        "cut_off_in_silence": sum(t.get("cut_off_in_silence", 0) for t in measured),
        "overlaps": overlap_summary(measured),
        "wer": None,
        "stages_ms": {},
        "transport_ms": describe(t.get("transport_ms") for t in answered),
        "stalls": {
            "replies": sum(1 for t in answered if t.get("stalls_ms")),
            "gap_ms": describe(g for t in answered for g in t.get("stalls_ms") or []),
            "total_ms": round(sum(g for t in answered for g in t.get("stalls_ms") or []), 1),
        },
        "overhead_ms": describe(t.get("overhead_ms") for t in answered),
    }
    if protocol in ("realtime", "webrtc"):  # the Realtime events, over WebSocket or WebRTC
        pairs = [(t["text"], t["user_transcript"]) for t in measured]
        pairs += [
            (t["barge_in_text"], b["transcript"])
            for t in measured
            if (b := t.get("barge_in")) and not b.get("backchannel")  # (kept out: no words)
        ]
        summary["wer"] = corpus_wer(pairs)
        summary["stages_ms"] = {
            name: describe((t.get("stages_ms") or {}).get(name) for t in answered)
            for name in stage_names(answered)
        }
    return summary


P95_TARGET_MS = 1200.0
"""The voice-to-voice p95 a level must keep (with no missed turn) to count as served."""


def capacity_at_p95(
    p95_by_level: Mapping[int, float | None],
    missed_by_level: Mapping[int, int],
    cores: int,
    target_ms: float = P95_TARGET_MS,
) -> dict[str, Any]:
    """The highest concurrency level with p95 <= ``target_ms`` and no missed turn, and that per
    core: the box's capacity, the figure ``server.max_sessions`` should follow."""
    served = [
        level
        for level, p95 in p95_by_level.items()
        if p95 is not None and p95 <= target_ms and not missed_by_level.get(level)
    ]
    best = max(served, default=None)
    per_core = round(best / cores, 3) if best is not None and cores >= 1 else None
    return {"p95_target_ms": target_ms, "max_level": best, "sessions_per_core": per_core}


def overlap_summary(turns: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Speech over a playing reply (``overlaps.py``): backchannels that cut it short, and
    interruptions that did, with how fast the audio stopped."""
    barges = [b for t in turns if (b := t.get("barge_in")) is not None and b["reply_playing"]]
    backchannels = [b for b in barges if b.get("backchannel")]
    interruptions = [b for b in barges if not b.get("backchannel")]
    cut = sum(1 for b in backchannels if b.get("cut_off"))
    stopped = [b for b in interruptions if b.get("cut_off")]
    return {
        "backchannels": len(backchannels),
        "backchannels_interrupted": cut,
        "backchannel_interrupted_rate": _share(cut, len(backchannels)),
        "interruptions": len(interruptions),
        "interruptions_stopped": len(stopped),
        "interruption_stopped_rate": _share(len(stopped), len(interruptions)),
        "stop_ms": describe(b["latency_ms"] for b in stopped),
    }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def sessions_per_core(p50_by_level: Mapping[int, float | None], cores: int) -> dict[str, Any]:
    """The highest concurrency level whose p50 voice-to-voice stays within 1.5x the single-session
    p50 (the lowest level measured, when 1 was not), divided by the number of cores."""
    levels = sorted(level for level, p50 in p50_by_level.items() if p50 is not None)
    out: dict[str, Any] = {
        "cores": cores,
        "baseline_level": None,
        "baseline_p50_ms": None,
        "max_level": None,
        "sessions_per_core": None,
    }
    if not levels or cores < 1:
        return out
    base_level = levels[0]
    base = p50_by_level[base_level]
    assert base is not None
    within = [
        lv for lv in levels if (p := p50_by_level[lv]) is not None and p <= SWEEP_TOLERANCE * base
    ]
    best = max(within)
    out.update(
        baseline_level=base_level,
        baseline_p50_ms=base,
        max_level=best,
        sessions_per_core=round(best / cores, 3),
    )
    return out


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves as dotted keys (sample counts ``n`` left out)."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float) and key != "n":
            out[name] = float(value)
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """b / a (None when either is missing or a is 0)."""
    if a is None or b is None or a == 0:
        return None
    return round(b / a, 4)


def ratios(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, float | None]:
    """b / a for every numeric summary metric present in either."""
    fa, fb = flatten(a), flatten(b)
    return {key: ratio(fa.get(key), fb.get(key)) for key in sorted(set(fa) | set(fb))}


def compare_rows(
    a: Mapping[str, Any], b: Mapping[str, Any]
) -> list[tuple[str, float | None, float | None, float | None]]:
    """(metric, a, b, b/a) for every summary metric of two reports: configurations of the same
    name are paired; two single-configuration reports are paired whatever their names."""
    ca = {c["name"]: c for c in a.get("configs", [])}
    cb = {c["name"]: c for c in b.get("configs", [])}
    pairs = [(n, ca[n], cb[n]) for n in ca if n in cb]
    if not pairs and len(ca) == 1 and len(cb) == 1:
        (na, va), (nb, vb) = next(iter(ca.items())), next(iter(cb.items()))
        pairs = [(na if na == nb else f"{na}|{nb}", va, vb)]
    rows = []
    for name, x, y in pairs:
        fx, fy = flatten(x.get("summary") or {}), flatten(y.get("summary") or {})
        for key in sorted(set(fx) | set(fy)):
            va_, vb_ = fx.get(key), fy.get(key)
            rows.append((f"{name}.{key}", va_, vb_, ratio(va_, vb_)))
    return rows
