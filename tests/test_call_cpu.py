"""``python -m benchmarks.call_cpu``: its options and its summary (the run itself needs the
models and a network namespace: ``benchmarks/README.md``)."""

from __future__ import annotations

import pytest

from benchmarks import call_cpu


def test_by_default_every_transport_and_the_continuous_track_as_the_baseline() -> None:
    args = call_cpu.parse_args([])
    assert args.protocol == ["realtime", "webrtc", "twilio"] and args.seconds == 10
    assert args.config is None and call_cpu.DEFAULT_CONFIGS[1] == "continuous=webrtc.dtx=false"
    args = call_cpu.parse_args(["--protocol", "webrtc", "--config", "a=", "--config", "b=x.y=1"])
    assert args.protocol == ["webrtc"] and args.config == ["a=", "b=x.y=1"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--protocol", "sip"],
        ["--seconds", "0"],
        ["--config", "a=notakey"],
        ["--calls", "0"],
        ["--calls", "33"],
    ],
)
def test_bad_options_are_refused_by_name(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        call_cpu.parse_args(argv)
    assert argv[0] in capsys.readouterr().err


def test_the_summary_prints_each_configuration_and_transport(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pct = {"n": 3, "p50": 7.8, "p95": 9.1, "p99": 9.2, "max": 9.3, "mean": 8.0}
    call_cpu.print_summary(
        {
            "machine": {"cpu": "X", "usable_cores": 2, "cores": 2, "platform": "Linux"},
            "settings": {"protocols": ["webrtc"]},
            "configs": {
                "default": {
                    "settings": {},
                    "no_call": {"server_pct": pct},
                    "webrtc": {"server_pct": pct, "caller_pct": pct},
                },
                "continuous": {
                    "settings": {"webrtc.dtx": "false"},
                    "no_call": {"server_pct": pct},
                    "webrtc": {"server_pct": pct, "caller_pct": pct},
                },
            },
        }
    )
    out = capsys.readouterr().out
    assert "[default] (the defaults)" in out and "[continuous] (webrtc.dtx=false)" in out
    assert out.count("webrtc    server   7.8 / 9.1") == 2


def test_several_calls_at_once_are_reported_with_each_ones_share(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert call_cpu.parse_args([]).calls == 1 and call_cpu.parse_args(["--calls", "8"]).calls == 8
    pct = {"n": 3, "p50": 35.2, "p95": 36.0, "p99": 36.1, "max": 36.2, "mean": 35.4}
    call_cpu.print_summary(
        {
            "machine": {"cpu": "X", "usable_cores": 2, "cores": 2, "platform": "Linux"},
            "settings": {"protocols": ["realtime"], "calls": 8},
            "configs": {
                "default": {
                    "settings": {},
                    "no_call": {"server_pct": pct},
                    "realtime": {"calls": 8, "server_pct": pct, "caller_pct": pct},
                },
            },
        }
    )
    out = capsys.readouterr().out
    assert "CPU of 8 idle calls at once" in out
    assert "realtime  server  35.2 / 36.0  (4.4 a call)" in out
