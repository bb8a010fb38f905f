"""The ``voice`` command line.

voice serve [--host H] [--port P] [--tools MODULES] [--config FILE] [--set section.key=value ...]
voice config [--config FILE] [--markdown]
voice bench [--url URL] [--protocol realtime,webrtc,twilio,sip] ...   (voice bench --help)

``voice bench`` is the benchmark harness (``benchmarks/harness``), which depends on this package
and not the other way round: the command is dispatched to :data:`BENCH_COMMAND`, a module named by
a string and imported only when ``voice bench`` runs. No module of ``voice`` imports
``benchmarks``, and ``voice serve`` works where the harness and its test-only dependencies
(jiwer, websockets, psutil) are not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import logging
import sys
from collections.abc import Callable

from pipeline.errors import ConfigError

from . import config as config_mod
from . import logs

BENCH_COMMAND = "benchmarks.harness.cli"
"""The module whose ``main(argv) -> int`` is ``voice bench``."""


def setup_logging(level: str, kind: str = "text") -> None:
    """Records to stderr at ``level``, in the ``kind`` of :mod:`voice.logs` (``text``/``json``)."""
    handler = logging.StreamHandler()
    handler.addFilter(logs.SessionFilter())
    handler.setFormatter(logs.formatter(kind))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "httpx", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voice", description="A realtime voice agent server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the server with the configured models")
    serve.add_argument("--host", help="address to listen on (server.host)")
    serve.add_argument("--port", type=int, help="TCP port (server.port)")
    serve.add_argument(
        "--tools",
        metavar="MODULES",
        help="comma-separated modules of @tool functions the server runs, e.g."
        " pipeline.tools.examples (server.tools)",
    )
    serve.add_argument("--config", help="a TOML configuration file")
    serve.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any config key"
    )
    show = sub.add_parser("config", help="print the effective configuration")
    show.add_argument("--config", help="a TOML configuration file")
    show.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    show.add_argument("--markdown", action="store_true", help="the README table of every key")
    sub.add_parser(  # parsed by BENCH_COMMAND; listed here for `voice --help`
        "bench",
        help="benchmark a server from the caller's side (voice bench --help)",
        add_help=False,
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        out[key.strip()] = value
    if getattr(args, "host", None):
        out["server.host"] = args.host
    if getattr(args, "port", None) is not None:
        out["server.port"] = str(args.port)
    if getattr(args, "tools", None) is not None:
        out["server.tools"] = args.tools
    return out


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _bench(argv: list[str]) -> int:
    """``voice bench``: the harness's own command line, imported by name (see the docstring)."""
    try:
        command = importlib.import_module(BENCH_COMMAND)
    except ImportError as exc:
        print(
            f"voice bench: the benchmark harness cannot be loaded ({exc}); it needs the test"
            " extras: pip install -e '.[test]'",
            file=sys.stderr,
        )
        return 2
    result: int = command.main(argv)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    args = _parser().parse_args(argv)
    try:
        config = config_mod.load(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"voice: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        if args.markdown:
            print(config_mod.markdown())
        else:
            for name, _ in config_mod.sections():
                print(f"[{name}]")
                for key, value in dataclasses.asdict(getattr(config, name)).items():
                    print(f"{key} = {config_mod.shown(name, key, value)}")
                print()
        return 0
    try:
        setup_logging(config.server.log_level, config.server.log_format)
        from .auth import check_exposure

        check_exposure(config)  # before minutes of loading models
    except ConfigError as exc:
        print(f"voice: configuration error: {exc}", file=sys.stderr)
        return 2
    from .server import run_server

    try:
        with (
            contextlib.suppress(KeyboardInterrupt),
            asyncio.Runner(loop_factory=_loop_factory()) as runner,
        ):
            runner.run(run_server(config))
    except ConfigError as exc:
        logging.getLogger("voice").error("configuration error: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
