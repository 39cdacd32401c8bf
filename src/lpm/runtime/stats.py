"""``SessionStats``: what a streaming session measures about itself (fps, latency, drops, time per stage)."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

LATENCY_WINDOW = 2048  # latencies kept for the percentiles (bounded: memory stays flat in session length)
FPS_WINDOW_S = 2.0  # emitted frames are counted over this trailing window for the fps figure
STAGE_WINDOW = 256  # chunk timings kept per stage for the mean


@dataclass
class SessionStats:
    """Counters and trailing windows of one session; thread-safe through ``lock``.

    ``dropped`` counts frames that were never shown at their slot (skipped by the generator to catch up, or
    finished too late); during those slots the previous frame stays on screen.
    """

    frames: int = 0  # frames emitted
    chunks: int = 0  # chunks generated (not counting skipped ones)
    dropped: int = 0  # frames not shown: skipped or late
    skipped_chunks: int = 0  # chunks the generator skipped to catch up with the audio clock
    padded_s: float = 0.0  # seconds of silence inserted into starved audio streams
    delay_s: float = 0.0  # media-clock delay of frame slots (grows if the pipeline is slower than budgeted)
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))  # seconds per frame
    emit_times: deque = field(default_factory=lambda: deque(maxlen=int(FPS_WINDOW_S * 240)))  # wall times
    stage_ms: dict[str, deque] = field(default_factory=dict)  # per stage: ms per chunk
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_frame(self, emitted_wall: float, latency_s: float | None) -> None:
        """One frame left the session at ``emitted_wall``; ``latency_s`` from its media moment (realtime: the wall
        time its audio was due on the session's clock) or, offline, from its chunk's last audio sample."""
        with self.lock:
            self.frames += 1
            self.emit_times.append(emitted_wall)
            if latency_s is not None:
                self.latencies.append(latency_s)

    def record_stage(self, name: str, ms: float) -> None:
        with self.lock:
            self.stage_ms.setdefault(name, deque(maxlen=STAGE_WINDOW)).append(ms)

    def add(self, **counts: float) -> None:
        """Increment counters by name (``dropped=4``, ``chunks=1``)."""
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def fps(self, now: float | None = None) -> float:
        """Frames per second emitted over the trailing ``FPS_WINDOW_S``."""
        now = time.monotonic() if now is None else now
        with self.lock:
            recent = [t for t in self.emit_times if t > now - FPS_WINDOW_S]
        span = min(FPS_WINDOW_S, now - self.started)
        return len(recent) / span if span > 0 else 0.0

    def latency_percentile(self, q: float) -> float | None:
        with self.lock:
            if not self.latencies:
                return None
            return float(np.percentile(np.fromiter(self.latencies, float), q))

    def snapshot(self) -> dict:
        """A JSON-safe summary (the server's ``stats`` message body)."""
        p50, p95 = self.latency_percentile(50), self.latency_percentile(95)
        fps = self.fps()
        with self.lock:
            stages = {k: round(float(np.mean(v)), 2) for k, v in self.stage_ms.items() if v}
            return {
                "fps": round(fps, 2),
                "latency_p50_s": None if p50 is None else round(p50, 4),
                "latency_p95_s": None if p95 is None else round(p95, 4),
                "latency_s": round(self.latencies[-1], 4) if self.latencies else None,
                "frames": self.frames,
                "chunks": self.chunks,
                "dropped": self.dropped,
                "skipped_chunks": self.skipped_chunks,
                "padded_s": round(self.padded_s, 3),
                "delay_s": round(self.delay_s, 3),
                "stage_ms": stages,
            }
