import logging
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.reply import ReplySettings
from pipeline.settings import SessionLimits, SessionSettings, Tuning
from voice import cli, config
from voice.config import load, markdown
from voice.server import VoiceServer

from .fakes import fake_engines

README = Path(__file__).parent.parent / "README.md"


def test_the_readme_documents_every_key_with_its_default() -> None:
    assert markdown() in README.read_text()


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "voice.toml"
    path.write_text(
        '[server]\nport = 9000\nhost = "0.0.0.0"\n[vad]\nthreshold = 0.6\n[llm]\nmax_tokens = 50\n'
    )
    env = {
        "VOICE_SERVER_PORT": "9100",
        "VOICE_VAD_THRESHOLD": "0.7",
        "VOICE_PIPELINE_EARLY_ASR": "false",
    }
    config = load(path, env=env, overrides={"server.port": "9200"})
    assert config.server.port == 9200  # flag beats env beats file
    assert config.vad.threshold == 0.7  # env beats file
    assert config.server.host == "0.0.0.0"  # file beats default
    assert config.llm.max_tokens == 50
    assert config.pipeline.early_asr is False
    assert config.asr.model == "tiny.en"  # default


@pytest.mark.parametrize(
    ("toml", "env", "overrides", "message"),
    [
        ("[nope]\n", {}, {}, "unknown config section"),
        ("[server]\nportt = 1\n", {}, {}, "unknown config key server.portt"),
        ("[server]\nport = 'x'\n", {}, {}, "server.port: expected int"),
        ("", {"VOICE_SERVER_WARM_UP": "maybe"}, {}, "VOICE_SERVER_WARM_UP: expected bool"),
        ("", {}, {"llm.nope": "1"}, "unknown config key llm.nope"),
        ("not toml [", {}, {}, "cannot read config file"),
    ],
)
def test_bad_configuration_is_a_clear_error(
    tmp_path: Path, toml: str, env: dict[str, str], overrides: dict[str, str], message: str
) -> None:
    path = tmp_path / "voice.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load(path, env=env, overrides=overrides)


def test_the_openai_key_comes_from_the_usual_variable() -> None:
    assert load(env={"OPENAI_API_KEY": "sk-x"}).llm.api_key == "sk-x"


def test_cli_prints_the_effective_config_and_rejects_bad_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["config", "--set", "server.port=1234"]) == 0
    assert "port = 1234" in capsys.readouterr().out
    assert cli.main(["serve", "--set", "server.port"]) == 2
    assert "expected SECTION.KEY=VALUE" in capsys.readouterr().err
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:  # serve configures logging for the process: put pytest's back afterwards
        assert (
            cli.main(
                ["serve", "--set", "llm.engine=nope", "--set", "server.warm_up=no", "--port", "0"]
            )
            == 2
        )
    finally:
        root.handlers[:], root.level = handlers, level


def test_cli_config_masks_every_secret(capsys: pytest.CaptureFixture[str]) -> None:
    sets = [f"{section}.{key}=s3cret-{key}" for section, key in config.SECRETS]
    assert cli.main(["config", *(a for s in sets for a in ("--set", s))]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    for section, key in config.SECRETS:
        assert f"[{section}]" in out and f"{key} = '***'" in out


def test_the_default_configuration_is_the_pipelines_defaults(tmp_path: Path) -> None:
    """One place for each fact: a session built from the default configuration has exactly the
    settings a unit test gets from the pipeline's own defaults."""
    config = load(env={}, overrides={"server.data_dir": str(tmp_path)})
    server = VoiceServer(config, fake_engines(["x"], ["y"]))
    session = server.new_session()
    assert session.settings == SessionSettings()
    assert session.reply_settings == ReplySettings()
    assert session.limits == SessionLimits()
    assert session.tuning == Tuning()


def test_a_webrtc_frame_length_the_track_cannot_send_is_refused() -> None:
    config = load(None, env={}, overrides={"webrtc.frame_ms": "15"})
    with pytest.raises(ConfigError, match=r"webrtc\.frame_ms 15: use 10 or 20"):
        config.webrtc.check()
    load(None, env={}, overrides={"webrtc.frame_ms": "20"}).webrtc.check()
