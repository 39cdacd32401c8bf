"""``Session``: everything of one conversation: audio buffers of both streams, the engine and its pipeline,
the media clock, barge-in detection and stats. No globals; a server holds one ``Session`` per client.

Timing (realtime). Media time 0 is the wall time of ``start()``; audio is expected at about real time. Chunk
``k`` covers frames ``[kF, (k+1)F)`` and needs both streams up to frame ``(k+1)F + L`` (``L`` = the engine's
lookahead). It starts when both streams have that audio, or ``jitter_s`` after that audio's media time has
passed: a starved stream (a client that sends only one stream, a network stall) is padded with silence, so the
session never waits for audio that may never come. Frame ``i`` is due at ``start + delay_s + i / fps``
(``delay_s`` = chunk + lookahead + jitter + the engine's compute budget).

After the first chunks ``delay_s`` follows the pipeline's measured latency (90th percentile of recent chunks' frame
leads, with a margin) in place of the engine's budget and the audio's measured lateness in place of ``jitter_s``,
both ways: below the starting delay on a fast machine, above it on a slow one, up to ``MAX_DELAY_S`` (growing holds
the screen once; ``stats.delay_s`` reports it). Degradation (stated): when compute falls behind, a chunk whose
frames would all miss their slots is skipped (its audio still feeds the engine's features, so nothing downstream
jumps), up to the freshest chunk, which always runs; frames that finish later than one frame period past their slot
are dropped, except a chunk's last frame, shown late. Either way the screen holds a frame meanwhile,
``stats.dropped`` counts the frames, and the stream catches up instead of letting latency grow: an engine too slow
for ``MAX_DELAY_S`` shows one late frame per chunk it makes, at a latency of about two chunk computations (the chunk
in progress, then the freshest).

Offline (``realtime=False``, e.g. ``lpm perform``): chunks start as soon as their audio is there, frames leave
as fast as they are made, nothing is skipped; ``finish()`` pads the last chunk and ends ``frames()``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lpm.runtime.audio_buffer import AudioStream, StreamResampler
from lpm.runtime.engines import SAMPLE_RATE, ChunkInput, Engine, samples_for_frames
from lpm.runtime.pipeline import LATE_TOLERANCE_FRAMES, Emitter, Pipeline, Work, put
from lpm.runtime.stats import SessionStats
from lpm.runtime.vad import VoiceActivity

SPEAKING_RMS = 0.01  # own-speech RMS (-40 dBFS) above which the character counts as speaking (barge-in)
RECENT_SPEECH_S = 0.3  # own speech consumed this recently still counts as "speaking"
RECENT_CHUNKS = 24  # pipeline latencies kept for the estimate (4 s at 4-frame chunks)
LATENCY_PERCENTILE = 90  # the estimate: this percentile of recent chunks (one stall does not move it)
WARMUP_CHUNKS = 3  # the first chunks (lazy allocations, first kernels) do not move the delay
MAX_DELAY_S = 1.0  # the clock delay never grows beyond this: past it, chunks are skipped instead
OUT_QUEUE_S = 4.0  # frames the session buffers for a slow reader (realtime; beyond: dropped)
WAIT_POLL_S = 0.02  # the feeder re-checks the clock this often while it waits for audio
DELAY_MARGIN = 1.25  # the clock delay keeps this factor over the measured pipeline latency when it must grow
DELAY_STEP_S = 0.02  # move the delay only by more than this (each growth holds the screen once)
SHRINK_FRAMES = 0.25  # the delay shrinks by at most this many frame periods per chunk (no frame dropped)


@dataclass
class SessionConfig:
    """How a session paces and buffers; engine-specific settings live with the engine."""

    realtime: bool = True  # pace on the wall clock (live) or run as fast as possible (offline)
    input_sample_rate: int = SAMPLE_RATE  # rate of pushed client audio; resampled to 16 kHz
    jitter_s: float = 0.04  # wait this long past an audio chunk's media time for late packets before padding
    delay_s: float | None = None  # media-clock delay of frame slots; None: chunk + lookahead + jitter + budget
    queue_chunks: int = 2  # capacity of each queue between pipeline stages
    max_buffer_s: float = 60.0  # unconsumed audio a stream may hold (a `say` script queues its whole speech)
    vad: str = "auto"  # partner-stream VAD for barge-in: auto | silero | energy | off
    fps: int = 24  # media frame rate


class Session:
    """One conversation with one character (see the module docstring for timing and degradation).

    Args:
        engine: what makes frames (``RigEngine``, ``DiTEngine``); the session owns and closes it.
        cfg: pacing and buffering.
    """

    def __init__(self, engine: Engine, cfg: SessionConfig | None = None) -> None:
        self.engine, self.cfg = engine, cfg or SessionConfig()
        cfg = self.cfg
        self.stats = SessionStats()
        max_samples = int(cfg.max_buffer_s * SAMPLE_RATE)
        self.self_stream, self.partner_stream = AudioStream(max_samples), AudioStream(max_samples)
        self._resamplers = [StreamResampler(cfg.input_sample_rate, SAMPLE_RATE) for _ in range(2)]
        self._vad = None if cfg.vad == "off" else VoiceActivity(cfg.vad)
        self._cond = threading.Condition()
        self._text = ""
        self._finished = False
        self._final_samples = 0  # audio length when ``finish()`` was called
        self._stop = threading.Event()
        self._events: queue.Queue[dict] = queue.Queue()
        self._frames: queue.Queue = queue.Queue(maxsize=max(1, int(OUT_QUEUE_S * cfg.fps)))
        self._compute_latency = 0.0
        self._recent: deque[float] = deque(maxlen=RECENT_CHUNKS)  # pipeline latency of recent chunks (s)
        self._recent_lead: deque[float] = deque(maxlen=RECENT_CHUNKS)  # their frame leads (pipeline.frame_lead)
        self._recent_late: deque[float] = deque(maxlen=RECENT_CHUNKS)  # their audio's lateness (s, 0..jitter_s)
        self._last_speech_wall = -1e9
        self.error: BaseException | None = None
        self.started = False
        f, la = engine.frames_per_chunk, engine.lookahead_frames
        # The chunk's audio and lookahead: the delay starts at this plus the jitter allowance and the engine's
        # budget; once the pipeline's lead and the audio's lateness are measured it is this plus the lateness plus
        # the lead with its margin (below the starting delay on a fast machine).
        self._chunk_audio_s = (f + la) / cfg.fps
        self.delay_s = cfg.delay_s if cfg.delay_s is not None else (
            self._chunk_audio_s + cfg.jitter_s + engine.compute_budget_s)
        self.stats.delay_s = self.delay_s
        self.t0 = 0.0
        self.pipeline = Pipeline(engine.stages(), self.stats, cfg.queue_chunks, on_error=self._on_error,
                                 skip=engine.skip, should_skip=self._late if cfg.realtime else None,
                                 settle=engine.settle, stream_last=engine.frame_stream(),
                                 frames_per_chunk=engine.frames_per_chunk)
        self.emitter: Emitter | None = None
        self._feeder = threading.Thread(target=self._feed, name="lpm-feeder", daemon=True)

    # ---- lifecycle ----
    def start(self) -> Session:
        """Start the clock and the threads; returns ``self``."""
        self.t0 = time.monotonic()
        self.stats.started = self.t0
        self.emitter = Emitter(self.pipeline.outputs, self._frames, self.stats, self._stop, self.cfg.fps,
                               self.cfg.realtime, self.t0, self.delay_s, self._observe_compute)
        self.pipeline.start()
        self.emitter.start()
        self._feeder.start()
        self.started = True
        return self

    def finish(self) -> None:
        """No more audio will come: the last chunk is padded with silence and ``frames()`` then ends."""
        with self._cond:
            self._finished = True
            self._final_samples = max(self.self_stream.head, self.partner_stream.head)
            self._cond.notify_all()

    def close(self) -> None:
        """Stop every thread and release the engine (safe to call twice)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self.pipeline.close()
        for t in (self._feeder, self.emitter.thread if self.emitter else None):
            if t is not None and t.is_alive() and t is not threading.current_thread():
                t.join(2.0)
        self.engine.close()

    def __enter__(self) -> Session:
        return self.start() if not self.started else self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- inputs ----
    def push_self_audio(self, pcm: np.ndarray, native: bool = False) -> float:
        """The character's own speech: ``(n,)`` float in [-1, 1] at ``input_sample_rate`` (16 kHz if native).

        Returns the media time (s) at which these samples start.
        """
        return self._push(self.self_stream, pcm if native else self._resamplers[0].push(pcm))

    def push_partner_audio(self, pcm: np.ndarray, native: bool = False) -> None:
        """The partner's speech (same format); also feeds barge-in detection."""
        pcm = pcm if native else self._resamplers[1].push(pcm)
        self._push(self.partner_stream, pcm)
        if self._vad is not None:
            for onset in self._vad.push(pcm):
                if self.character_speaking():
                    self._events.put({"type": "barge_in", "t": round(onset, 3)})

    def _push(self, stream: AudioStream, pcm: np.ndarray) -> float:
        with self._cond:
            start = stream.head / SAMPLE_RATE
            stream.push(pcm, time.monotonic())
            self._cond.notify_all()
        return start

    def set_text(self, text: str) -> None:
        """The text control; takes effect at the next chunk boundary."""
        with self._cond:
            self._text = str(text)

    def cancel_speech(self) -> float:
        """Drop the character's queued, not yet performed speech (after a barge-in); returns seconds dropped."""
        with self._cond:
            return self.self_stream.clear_pending() / SAMPLE_RATE

    def character_speaking(self) -> bool:
        """The character is speaking now or has speech queued (used to qualify a partner onset as barge-in)."""
        with self._cond:
            pending = self.self_stream.pending_rms() > SPEAKING_RMS
        return pending or time.monotonic() - self._last_speech_wall < RECENT_SPEECH_S

    @property
    def vad_backend(self) -> str:
        return "off" if self._vad is None else self._vad.backend

    # ---- outputs ----
    def frames(self, timeout: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
        """Yield ``(timestamp_s, (H, W, 3) uint8)`` until the session ends; ``timeout`` bounds each wait."""
        while True:
            try:
                item = self._frames.get(timeout=timeout)
            except queue.Empty:
                return
            if item is None:
                return
            yield item

    def events(self) -> list[dict]:
        """Events since the last call (``barge_in``, ``error``)."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    # ---- internals ----
    def _on_error(self, e: BaseException) -> None:
        self.error = e
        self._events.put({"type": "error", "message": f"engine failed: {e}"})
        self._stop.set()

    def _late(self, chunk: ChunkInput) -> bool:
        """Would every frame of ``chunk`` miss its slot if started now? Then it is skipped (and counted).

        Never the freshest chunk (the next one's audio is not due yet): skipping runs up to the live edge and
        stops there, so a session catches up however slow its engine is, and the chunk that runs refreshes the
        latency estimate (a stale one could otherwise skip forever).
        """
        f, la = self.engine.frames_per_chunk, self.engine.lookahead_frames
        now = time.monotonic()
        next_due = self.t0 + samples_for_frames(chunk.first_frame + 2 * f + la, SAMPLE_RATE, self.cfg.fps) / \
            SAMPLE_RATE + self.cfg.jitter_s
        if not self._recent or now < next_due:
            return False
        last_slot = self.emitter.slot(chunk.first_frame + f - 1) + LATE_TOLERANCE_FRAMES / self.cfg.fps
        late = now + float(np.median(self._recent)) > last_slot
        if late:
            self.stats.add(dropped=f, skipped_chunks=1)
        return late

    def _observe_compute(self, seconds: float, lead: float | None = None) -> None:
        """Track the pipeline's latency per chunk and fit the clock delay to it: after the warm-up chunks the delay is
        the chunk's audio and lookahead, plus how late that audio was complete (90th percentile of recent chunks, at
        most ``jitter_s``), plus ``DELAY_MARGIN`` x the measured lead, at most ``MAX_DELAY_S``, so the engine's
        starting budget only covers the first chunks (a fast machine ends below it). Growing holds the screen once;
        shrinking goes by ``SHRINK_FRAMES`` of a frame per chunk (frames shown a little sooner, none dropped).

        Args:
            seconds: the chunk's compute, start to last frame (what the skip rule compares with the last slot).
            lead: how early the compute must start for each frame to meet its own slot (``pipeline.frame_lead``;
                shorter than ``seconds`` when frames are handed on one by one). The delay follows a high
                percentile of it over recent chunks (robust to one stall). None: ``seconds``.
        """
        self._recent.append(seconds)
        self._recent_lead.append(seconds if lead is None else lead)
        self._compute_latency = float(np.percentile(self._recent_lead, LATENCY_PERCENTILE))
        if self.cfg.delay_s is None and self.emitter is not None and len(self._recent) > WARMUP_CHUNKS:
            late = float(np.percentile(self._recent_late, LATENCY_PERCENTILE)) if self._recent_late else \
                self.cfg.jitter_s
            needed = min(self._chunk_audio_s + late + DELAY_MARGIN * self._compute_latency, MAX_DELAY_S)
            if abs(needed - self.delay_s) > DELAY_STEP_S:
                # Growing at once (frames would be late); shrinking by a fraction of a frame per chunk, so the
                # frames already made are shown a little sooner instead of being dropped.
                step = needed if needed > self.delay_s else max(needed, self.delay_s - SHRINK_FRAMES / self.cfg.fps)
                self.delay_s = self.emitter.delay_s = step
                self.stats.delay_s = step

    def _wait_for_audio(self, end: int, first_sample: int) -> bool:
        """Block until chunk audio up to ``end`` can be taken; False when the session ends instead."""
        deadline = self.t0 + end / SAMPLE_RATE + self.cfg.jitter_s
        streams = (self.self_stream, self.partner_stream)
        with self._cond:
            while not self._stop.is_set():
                if all(s.head >= end for s in streams):
                    return True
                if self._finished:
                    return self._final_samples > first_sample  # any real audio left for this chunk?
                if self.cfg.realtime and time.monotonic() >= deadline:
                    return True
                self._cond.wait(WAIT_POLL_S if self.cfg.realtime else None)
        return False

    def _feed(self) -> None:
        """The chunk scheduler: waits for audio, cuts chunks, decides skips, hands work to the pipeline."""
        engine, cfg = self.engine, self.cfg
        f, la = engine.frames_per_chunk, engine.lookahead_frames
        k = 0
        try:
            while not self._stop.is_set():
                first = k * f
                end = samples_for_frames(first + f + la, SAMPLE_RATE, cfg.fps)
                if not self._wait_for_audio(end, samples_for_frames(first, SAMPLE_RATE, cfg.fps)):
                    break
                now = time.monotonic()
                with self._cond:
                    padded = sum(s.pad_to(end, now) for s in (self.self_stream, self.partner_stream))
                    ready = max(s.arrival_of(end - 1) for s in (self.self_stream, self.partner_stream))
                    chunk = ChunkInput(k, first, self.self_stream.take(end), self.partner_stream.take(end), end,
                                       self._text, ready)
                if cfg.realtime:  # how long after its media time the chunk's audio was complete (padding: jitter_s)
                    self._recent_late.append(min(max(ready - self.t0 - end / SAMPLE_RATE, 0.0), cfg.jitter_s))
                if padded:
                    self.stats.add(padded_s=padded / SAMPLE_RATE)
                if np.sqrt(np.mean(np.square(chunk.self_pcm))) > SPEAKING_RMS:
                    self._last_speech_wall = now
                put(self.pipeline.inputs, Work(chunk, chunk), self._stop)
                k += 1
        except Exception as e:  # noqa: BLE001 - reported as a session error, never a silent hang
            if not self._stop.is_set():
                self._on_error(e)
        finally:
            try:
                put(self.pipeline.inputs, None, self._stop)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
