"""The soak benchmark's figures, on made-up samples (the run itself is ``benchmarks.soak``)."""

from __future__ import annotations

import xml.dom.minidom
from collections import Counter

from benchmarks.soak import PANELS, Sample, growth, render_svg, slope_per_min, summarize_soak


def samples(rss_per_min: float) -> list[Sample]:
    """Ten minutes every 10 s: RSS climbs for the first two minutes, then by ``rss_per_min``."""
    out = []
    for t in range(0, 601, 10):
        rss = 500 + min(t, 120) + rss_per_min * max(0, t - 120) / 60
        out.append(Sample(float(t), rss, 30, 20, 40 + t % 3, 3, min(t // 60, 100), t // 20))
    return out


def test_the_slope_over_the_last_half_tells_a_plateau_from_a_leak() -> None:
    assert slope_per_min(samples(0.0), "rss_mb", 300) == 0.0
    assert slope_per_min(samples(4.0), "rss_mb", 300) == 4.0
    assert slope_per_min(samples(0.0), "rss_mb", 0) > 5  # over the warm-up: a false alarm
    assert slope_per_min(samples(0.0)[:2], "rss_mb", 0) is None  # too few points


def test_the_summary_reports_latency_memory_and_ranges() -> None:
    turns = [
        {"voice_to_voice_ms": 700.0, "missed": False},
        {"voice_to_voice_ms": 900.0, "missed": False, "barge_in": {"latency_ms": 50.0}},
        {"voice_to_voice_ms": None, "missed": True},
        {"voice_to_voice_ms": 5000.0, "cut": True},  # cut by the time limit: not counted
    ]
    summary = summarize_soak(samples(0.0), turns)
    assert (summary["turns"], summary["missed"]) == (3, 1)
    assert summary["voice_to_voice_ms"]["p50"] == 800.0
    assert summary["barge_in_ms"]["n"] == 1
    assert summary["rss_mb"] == {"first": 500.0, "half": 620.0, "last": 620.0, "peak": 620.0}
    assert summary["range_last_half"]["tasks"] == [40, 42]
    assert summary["slope_last_half_per_min"]["fds"] == 0.0


def test_growth_lists_only_what_grew() -> None:
    before = Counter({"dict": 10, "Session": 2})
    assert growth(before, Counter({"dict": 15, "Session": 2, "Reply": 1})) == [
        ("dict", 5),
        ("Reply", 1),
    ]


def test_the_plot_is_an_svg_with_one_line_per_measure() -> None:
    svg = render_svg(samples(1.0), "soak <test>")
    doc = xml.dom.minidom.parseString(svg)
    assert len(doc.getElementsByTagName("polyline")) == len(PANELS)
    assert "soak &lt;test&gt;" in svg
