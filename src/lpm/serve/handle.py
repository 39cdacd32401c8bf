"""``SessionHandle``: what the server's connection code holds of one live session, wherever it computes.

``LocalSession`` runs the ``Session`` in the server's own process (threads; tests and ``--in-process``);
``lpm.serve.worker.RemoteSession`` runs it in a worker process of its own, so the event loop that reads every
client's audio never shares a GIL or a core queue with a model. The connection code sees only this interface.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from lpm.runtime.session import Session
from lpm.serve.protocol import encode_frame, jpeg_bytes


@dataclass(frozen=True)
class SessionInfo:
    """What the ``ready`` message tells a client about its session."""

    engine: str
    fps: int
    resolution: int
    frames_per_chunk: int
    lookahead_frames: int
    delay_s: float
    vad: str

    @classmethod
    def of(cls, session: Session) -> SessionInfo:
        e = session.engine
        return cls(e.name, session.cfg.fps, e.resolution, e.frames_per_chunk, e.lookahead_frames,
                   round(session.delay_s, 3), session.vad_backend)

    def to_json(self) -> dict:
        return asdict(self)


class SessionHandle(ABC):
    """One live session as the server drives it (audio in; encoded frames, events and stats out)."""

    info: SessionInfo

    @abstractmethod
    def push_self_audio(self, pcm: np.ndarray, native: bool = False, want_start: bool = False) -> float | None:
        """The character's own speech (``Session.push_self_audio``); its media start time (s) when
        ``want_start`` (a round trip for a remote session), else None."""

    @abstractmethod
    def push_partner_audio(self, pcm: np.ndarray, native: bool = False) -> None:
        """The partner's speech (``Session.push_partner_audio``)."""

    @abstractmethod
    def set_text(self, text: str) -> None: ...

    @abstractmethod
    def cancel_speech(self) -> float:
        """Drop queued own speech; seconds dropped."""

    @abstractmethod
    def encoded_frames(self) -> Iterator[bytes]:
        """Frames as wire messages (``encode_frame``: tag, timestamp, JPEG) until the session ends."""

    @abstractmethod
    def events(self) -> list[dict]:
        """Events since the last call (``barge_in``, ``error``)."""

    @abstractmethod
    def snapshot(self) -> dict:
        """The latest ``SessionStats.snapshot()``, with frames the server dropped for a slow client added."""

    def count_dropped(self, frames: int = 1) -> None:
        """Frames the server dropped after the session made them (a client too slow to take them)."""
        with self._dropped_lock:
            self._dropped += frames

    def _server_dropped(self) -> int:
        with self._dropped_lock:
            return self._dropped

    def __init__(self) -> None:
        self._dropped_lock = threading.Lock()
        self._dropped = 0

    @abstractmethod
    def close(self) -> None:
        """End the session and free what it holds (idempotent)."""


class LocalSession(SessionHandle):
    """A ``Session`` in this process; JPEG encoding runs in the thread that iterates ``encoded_frames``."""

    def __init__(self, session: Session, jpeg_quality: int = 85) -> None:
        super().__init__()
        self.session, self.jpeg_quality = session, jpeg_quality
        self.info = SessionInfo.of(session)

    def push_self_audio(self, pcm: np.ndarray, native: bool = False, want_start: bool = False) -> float | None:
        start = self.session.push_self_audio(pcm, native=native)
        return start if want_start else None

    def push_partner_audio(self, pcm: np.ndarray, native: bool = False) -> None:
        self.session.push_partner_audio(pcm, native=native)

    def set_text(self, text: str) -> None:
        self.session.set_text(text)

    def cancel_speech(self) -> float:
        return self.session.cancel_speech()

    def encoded_frames(self) -> Iterator[bytes]:
        for timestamp, image in self.session.frames():
            yield encode_frame(timestamp, jpeg_bytes(image, self.jpeg_quality))

    def events(self) -> list[dict]:
        return self.session.events()

    def snapshot(self) -> dict:
        snap = self.session.stats.snapshot()
        snap["dropped"] += self._server_dropped()
        return snap

    def close(self) -> None:
        self.session.close()
