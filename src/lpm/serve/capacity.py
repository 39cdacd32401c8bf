"""Admission by measured capacity: how many live sessions this machine holds in real time.

At start the server runs its engine on a world character for a few chunks (after a warm-up) and measures the
CPU time one session spends per chunk: every stage (generator, commit, decode) plus the JPEG encoding of its
frames, with the workers' thread count (process CPU time). A session needs ``cpu_ms_per_chunk / chunk_ms`` cores to
keep up with the clock; the machine has ``cores`` (its CPU affinity) with ``HEADROOM`` of them left for the event
loop, audio and transport, so it holds ``floor(cores * HEADROOM * chunk_ms / cpu_ms_per_chunk)`` sessions.

One session is always admitted, even when the engine is slower than real time (it then degrades as
``lpm.runtime.session`` states: skipped chunks, a grown delay): refusing everyone would serve no one. Session
``N + 1`` is refused at once, before anything is built, with ``Capacity.refusal()``: every running session keeps
its real-time rate instead of all of them slowing down together. ``--max-sessions N`` replaces the measurement.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from lpm.runtime.engines import SAMPLE_RATE, Character, ChunkInput, WorldCharacter, samples_for_frames

HEADROOM = 0.85  # share of the cores sessions may use; the rest: event loop, audio, JPEG pump, transport
WARMUP_CHUNKS = 3  # first chunks (allocations, first kernels) are not measured
MEASURE_CHUNKS = 6
PROBE_CHARACTER = WorldCharacter("photo", 1)  # any engine can perform a world character


@dataclass(frozen=True)
class Capacity:
    """How many sessions the server admits, and why.

    Attributes:
        sessions: live sessions admitted at once.
        cpu_ms_per_chunk: CPU time one session spends per chunk (None when not measured).
        chunk_ms: media time of one chunk.
        cores: CPUs this process may run on.
        source: ``measured`` or ``--max-sessions``.
    """

    sessions: int
    cpu_ms_per_chunk: float | None
    chunk_ms: float
    cores: int
    source: str

    @property
    def cores_per_session(self) -> float | None:
        return None if self.cpu_ms_per_chunk is None else self.cpu_ms_per_chunk / self.chunk_ms

    def describe(self) -> str:
        if self.cpu_ms_per_chunk is None:
            return f"{self.sessions} live session(s) (set by {self.source})"
        realtime = "" if self.cores_per_session <= self.cores * HEADROOM else \
            "; one session is slower than real time here and degrades by skipping chunks"
        return (f"{self.sessions} live session(s): measured {self.cpu_ms_per_chunk:.0f} ms of CPU per "
                f"{self.chunk_ms:.0f} ms chunk ({self.cores_per_session:.2f} cores per session) on {self.cores} "
                f"cores{realtime}")

    def refusal(self, running: int) -> str:
        """The message a client gets when session ``running + 1`` does not fit."""
        return f"at capacity: {running} session(s) running, this server holds {self.describe()}; try again later"

    def to_json(self) -> dict:
        return asdict(self)


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def sessions_for(cpu_ms_per_chunk: float, chunk_ms: float, cores: int, headroom: float = HEADROOM) -> int:
    """Sessions that keep real time: ``floor(cores * headroom * chunk_ms / cpu_ms_per_chunk)``, at least 1."""
    if cpu_ms_per_chunk <= 0 or chunk_ms <= 0:
        raise ValueError(f"cpu_ms_per_chunk and chunk_ms must be positive, got {cpu_ms_per_chunk}, {chunk_ms}")
    return max(1, math.floor(cores * headroom * chunk_ms / cpu_ms_per_chunk))


def measure_capacity(factory, threads: int = 1, jpeg_quality: int = 85, cores: int | None = None,
                     chunks: int = MEASURE_CHUNKS, fps: int = 24) -> Capacity:
    """Run ``factory``'s engine (``lpm.serve.manager.EngineFactory``) for ``WARMUP_CHUNKS + chunks`` chunks of
    speech-level noise in this thread with ``threads`` torch threads; CPU time per measured chunk -> sessions."""
    import torch

    from lpm.serve.protocol import jpeg_bytes

    cores = cores or available_cores()
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    engine = factory.build(Character(world=PROBE_CHARACTER), seed=0)
    try:
        f, la = engine.frames_per_chunk, engine.lookahead_frames
        rng = np.random.default_rng(0)
        prev, spent = 0, 0.0
        for k in range(WARMUP_CHUNKS + chunks):
            end = samples_for_frames((k + 1) * f + la, SAMPLE_RATE, fps)
            pcm = (rng.standard_normal(end - prev) * 0.05).astype(np.float32)  # cost does not depend on content
            chunk = ChunkInput(k, k * f, pcm, pcm[::-1].copy(), end, "", time.monotonic())
            prev = end
            begin = time.process_time()
            frames = engine.step(chunk)
            for image in frames:
                jpeg_bytes(image, jpeg_quality)
            if k >= WARMUP_CHUNKS:
                spent += time.process_time() - begin
    finally:
        engine.close()
        torch.set_num_threads(previous)
    # The record's own (rounded) figures give its session count, so a reader can recompute it.
    cpu_ms = round(spent / chunks * 1000, 1)
    chunk_ms = round(1000 * engine.frames_per_chunk / fps, 1)
    return Capacity(sessions_for(cpu_ms, chunk_ms, cores), cpu_ms, chunk_ms, cores, "measured")
