"""Per-stream audio buffers of a session, PCM16 decoding, and a streaming resampler to 16 kHz.

``AudioStream`` holds the samples of one stream (own speech or partner) that arrived but were not yet handed
to the engine, with the wall time each arrived: the session's latency is measured from the arrival of a chunk's
last sample. Consumed samples are dropped, so memory is bounded by ``max_samples`` of backlog.
"""

from __future__ import annotations

from collections import deque
from math import gcd

import numpy as np
from scipy.signal import firwin, lfilter

from lpm.errors import LpmError

PCM16_SCALE = 32768.0
RESAMPLE_TAPS = 63  # low-pass FIR length of the streaming resampler (odd, linear phase)
RESAMPLE_CUTOFF = 0.9  # of the output Nyquist rate: keeps speech up to ~7.2 kHz at 16 kHz


class AudioOverflowError(LpmError):
    """More unconsumed audio than a stream may buffer (a client sending much faster than real time)."""


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian PCM16 mono bytes -> ``(n,)`` float32 in [-1, 1]."""
    if len(data) % 2:
        raise ValueError("PCM16 audio must have an even number of bytes")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / PCM16_SCALE


def float_to_pcm16(pcm: np.ndarray) -> bytes:
    """``(n,)`` float in [-1, 1] -> little-endian PCM16 bytes."""
    return (np.clip(pcm, -1.0, 1.0) * (PCM16_SCALE - 1)).astype("<i2").tobytes()


class StreamResampler:
    """Resample a stream pushed in pieces of any length to ``rate_out``; pieces join without clicks.

    Anti-alias (a linear-phase FIR with its state carried between pushes) then linear interpolation on a
    continuous sample clock, so any split of the input gives the same output as one push.
    """

    def __init__(self, rate_in: int, rate_out: int) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError("sample rates must be positive")
        g = gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        self.identity = rate_in == rate_out
        cutoff = min(1.0, RESAMPLE_CUTOFF * rate_out / rate_in)
        self.taps = firwin(RESAMPLE_TAPS, cutoff) if rate_out < rate_in else np.array([1.0])
        self.zi = np.zeros(len(self.taps) - 1)
        self.prev = 0.0  # last filtered sample of the previous push
        self.consumed = 0  # input samples seen so far
        self.emitted = 0  # output samples produced so far

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """``(n,)`` float input samples -> the ``(m,)`` float32 output samples they complete."""
        if self.identity or not len(pcm):
            return np.asarray(pcm, np.float32)
        x, self.zi = lfilter(self.taps, [1.0], np.asarray(pcm, np.float64), zi=self.zi)
        total = self.consumed + len(x)
        # Output sample j sits at input position j * down / up; produce those inside what we now have.
        last = (total - 1) * self.up // self.down if total else -1
        js = np.arange(self.emitted, last + 1)
        pos = js * self.down / self.up - (self.consumed - 1)  # relative to [prev, x0, x1, ...]
        joined = np.concatenate([[self.prev], x])
        out = np.interp(pos, np.arange(len(joined)), joined)
        self.consumed, self.emitted = total, last + 1
        if len(x):
            self.prev = float(x[-1])
        return out.astype(np.float32)


class AudioStream:
    """Unconsumed samples of one stream and when they arrived (absolute sample indices from 0).

    Args:
        max_samples: most unconsumed samples held; a push beyond raises ``AudioOverflowError``.
    """

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self.pieces: deque[np.ndarray] = deque()
        self.read = 0  # absolute index of the first unconsumed sample
        self.head = 0  # absolute index after the last sample written
        self.arrivals: deque[tuple[int, float]] = deque()  # (head after a push, wall time), oldest first

    @property
    def backlog(self) -> int:
        return self.head - self.read

    def push(self, pcm: np.ndarray, now: float) -> None:
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        if not len(pcm):
            return
        if self.backlog + len(pcm) > self.max_samples:
            raise AudioOverflowError(
                f"audio backlog would exceed {self.max_samples} samples; send audio at about real time"
            )
        self.pieces.append(pcm)
        self.head += len(pcm)
        self.arrivals.append((self.head, now))

    def pad_to(self, sample: int, now: float) -> int:
        """Append silence up to ``sample`` (a starved stream); returns the number of samples added."""
        missing = sample - self.head
        if missing > 0:
            self.pieces.append(np.zeros(missing, np.float32))
            self.head = sample
            self.arrivals.append((self.head, now))
        return max(missing, 0)

    def arrival_of(self, sample: int) -> float:
        """Wall time sample ``sample`` (absolute, < head) arrived."""
        for end, wall in self.arrivals:
            if end > sample:
                return wall
        raise IndexError(f"sample {sample} has not arrived")

    def take(self, end: int) -> np.ndarray:
        """Consume samples ``[read, end)`` (``end <= head``) and forget them."""
        n = end - self.read
        out, parts = np.zeros(0, np.float32), []
        while n > 0:
            piece = self.pieces[0]
            if len(piece) <= n:
                parts.append(self.pieces.popleft())
                n -= len(piece)
            else:
                parts.append(piece[:n])
                self.pieces[0] = piece[n:]
                n = 0
        if parts:
            out = np.concatenate(parts)
        self.read = end
        while self.arrivals and self.arrivals[0][0] <= end:  # pushes whose samples are all consumed
            self.arrivals.popleft()
        return out

    def pending_rms(self) -> float:
        """RMS of the unconsumed samples (0 when none)."""
        if not self.pieces:
            return 0.0
        total = sum(float(np.square(p, dtype=np.float64).sum()) for p in self.pieces)
        return (total / max(self.backlog, 1)) ** 0.5

    def clear_pending(self) -> int:
        """Drop every unconsumed sample (the character's queued speech was cut off); returns how many."""
        dropped = self.backlog
        self.pieces.clear()
        self.head = self.read
        while self.arrivals and self.arrivals[-1][0] > self.head:
            self.arrivals.pop()
        return dropped
