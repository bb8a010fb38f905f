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
    "argv", [["--protocol", "sip"], ["--seconds", "0"], ["--config", "a=notakey"]]
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
