"""Each engine with its real, bundled model."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import jiwer
import numpy as np
import pytest

from pipeline.audio import resample
from pipeline.context import ChatMessage
from pipeline.engines import Engines, GenerationOptions
from pipeline.engines.asr_whisper import WhisperAsr, WhisperOptions
from pipeline.engines.llm_openai import OpenAiCompatibleLlm, RemoteLlmOptions
from pipeline.errors import EngineError
from voice import models

from .conftest import espeak

pytestmark = pytest.mark.models
QUESTION = "What is the capital of France?"


def wer(reference: str, hypothesis: str) -> float:
    clean = jiwer.Compose(
        [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
         jiwer.Strip(), jiwer.ReduceToListOfListOfWords()]
    )  # fmt: skip
    return float(
        jiwer.wer(reference, hypothesis, reference_transform=clean, hypothesis_transform=clean)
    )


async def test_vad_hears_speech_and_not_silence_or_hum(engines: Engines) -> None:
    speech = espeak(QUESTION)
    stream = engines.vad.stream()
    n = len(speech) // 512
    probs = await stream.probabilities(speech[: n * 512].reshape(-1, 512))
    assert np.mean(np.array(probs) > 0.5) > 0.5
    quiet = engines.vad.stream()
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(16_000) * 50).astype(np.int16)
    hum = (np.sin(np.arange(16_000) * 2 * np.pi * 50 / 16_000) * 3000).astype(np.int16)
    for audio in (np.zeros(16_000, np.int16), noise, hum):
        probs = await quiet.probabilities(audio[: 31 * 512].reshape(-1, 512))
        assert max(probs) < 0.5


async def test_asr_transcribes_a_question(engines: Engines) -> None:
    text = await engines.asr.transcribe(espeak(QUESTION))
    assert wer(QUESTION, text) <= 0.2, text


async def test_tts_speech_is_understood_by_the_asr(engines: Engines) -> None:
    sentence = "The weather is lovely today."
    audio = await engines.tts.synthesize(sentence)
    seconds = len(audio) / engines.tts.sample_rate
    assert 0.8 < seconds < 5.0
    text = await engines.asr.transcribe(resample(audio, engines.tts.sample_rate, 16_000))
    assert wer(sentence, text) <= 0.2, text


async def test_embedded_llm_streams_and_stops_when_closed(engines: Engines) -> None:
    messages = [
        ChatMessage("system", "You are helpful."),
        ChatMessage("user", "Count from one to twenty."),
    ]
    options = GenerationOptions(max_tokens=60, temperature=0.0)
    tokens = []
    async with aclosing(engines.llm.stream(messages, options)) as stream:  # type: ignore[type-var]
        async for token in stream:
            tokens.append(token)
            if len(tokens) == 3:
                break  # closing the stream stops generation
    assert len(tokens) == 3
    full = [t async for t in engines.llm.stream(messages, options)]  # the next one works
    assert len("".join(full).split()) >= 3


async def test_multilingual_base_model_is_joined_and_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = models.whisper_base(cache_dir=tmp_path)
    assert (folder / "model.bin").stat().st_size > 140_000_000
    assert models.whisper_base(cache_dir=tmp_path) == folder  # joined once
    asr = WhisperAsr(WhisperOptions(model=folder, language="en", cpu_threads=2))
    assert wer(QUESTION, await asr.transcribe(espeak(QUESTION))) <= 0.2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)  # polling a child process's port: no event to wait on
    raise TimeoutError(f"llama_cpp.server did not listen within {timeout} s")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real OpenAI-compatible server: ``python -m llama_cpp.server`` on the bundled GGUF."""
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(models.smollm2_gguf()),
             "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1",
             "--n_threads_batch", "1", "--n_ctx", "1024", "--model_alias", "smollm2"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_listening(proc, port, log, timeout=120.0)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_remote_llm_streams_from_an_openai_compatible_server(llama_server: str) -> None:
    llm = OpenAiCompatibleLlm(RemoteLlmOptions(base_url=llama_server, model="smollm2"))
    messages = [ChatMessage("system", "You are helpful."), ChatMessage("user", "Say hello.")]
    tokens = [t async for t in llm.stream(messages, GenerationOptions(max_tokens=20))]
    assert "".join(tokens).strip()
    await llm.aclose()


async def test_remote_llm_errors_are_translated() -> None:
    llm = OpenAiCompatibleLlm(
        RemoteLlmOptions(base_url=f"http://127.0.0.1:{_free_port()}/v1", model="m")
    )
    with pytest.raises(EngineError) as err:
        async for _ in llm.stream([ChatMessage("user", "hi")], GenerationOptions()):
            pass
    assert err.value.retryable
    await llm.aclose()
    await asyncio.sleep(0)
