"""Several protocols in one run: ``voice bench --protocol realtime,webrtc,twilio`` runs the whole
benchmark once per protocol (same scenarios, same configurations, each protocol its share of the
time limit) and merges the reports into one, where each configuration of each protocol is an
entry named ``CONFIG@PROTOCOL`` and carries its ``protocol``; every entry is compared with the
first, as configurations are."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .bench import comparisons
from .timeline import BARESIP, REALTIME, SIP, TWILIO, WEBRTC

PROTOCOLS = (REALTIME, WEBRTC, TWILIO, SIP, BARESIP)


def parse_protocols(text: str) -> list[str]:
    """``realtime,webrtc`` → the protocols in that order (each once); an unknown one is an
    error that names the known ones."""
    chosen: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if name not in PROTOCOLS:
            raise argparse.ArgumentTypeError(
                f"unknown protocol {name!r}: choose from {', '.join(PROTOCOLS)}"
            )
        if name not in chosen:
            chosen.append(name)
    return chosen


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report of per-protocol reports (a single one is returned as it is)."""
    if len(reports) == 1:
        return reports[0]
    configs = []
    for report in reports:
        for config in report["configs"]:
            name = f"{config['name']}@{report['protocol']}"
            turns = [{**t, "config": name} for t in config.get("turns", [])]
            configs.append({**config, "name": name, "protocol": report["protocol"], "turns": turns})
    first, last = reports[0], reports[-1]
    options = dict(first["options"])
    options["rate"] = {r["protocol"]: r["options"]["rate"] for r in reports}
    options["time_limit_s"] = sum(r["options"]["time_limit_s"] for r in reports)
    return {
        **first,
        "finished_utc": last["finished_utc"],
        "wall_s": round(sum(r["wall_s"] for r in reports), 1),
        "protocol": ",".join(r["protocol"] for r in reports),
        "protocols": [r["protocol"] for r in reports],
        "options": options,
        "configs": configs,
        "comparisons": comparisons(configs),
    }
