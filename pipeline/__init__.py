"""The streaming pipeline: VAD → turn-taking → ASR → LLM → TTS → playout, and the session core.

Audio enters a :class:`pipeline.session.Session` from a transport adapter as PCM, is resampled to
16 kHz (``audio.py``), scored by the VAD (``engines/vad_silero.py``), judged by the turn-taking
state machine (``turns.py``), transcribed (``engines/asr_whisper.py``), answered by the LLM
(``engines/llm_*.py``) through the reply task group (``reply.py``: clauses from ``text.py``, speech
from ``engines/tts_piper.py``) and paced back out in 20 ms frames
(``playout.py``).
"""
