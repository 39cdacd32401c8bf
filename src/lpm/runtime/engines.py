"""The ``Engine`` interface a ``Session`` drives chunk by chunk, and the character a session performs.

An engine turns one chunk of audio (own speech and partner speech, up to the chunk's end plus the declared
lookahead) into ``frames_per_chunk`` frames. It exposes its work as ordered *stages* (e.g. generator ->
refiner -> VAE decode, or rig poses -> render) so the session can run them as a pipeline: each stage in its
own thread, so throughput is set by the slowest stage rather than their sum. Engines:
``lpm.runtime.rig_engine.RigEngine`` (the world's rule-driven rig, world characters only) and
``lpm.runtime.dit_engine.DiTEngine`` (a DiT checkpoint + a latent codec, any reference image).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lpm.errors import LpmError
from lpm.world.identity import ALL_STYLES

SAMPLE_RATE = 16000  # Hz, both audio streams
FPS = 24  # video frames per second
WORLD_PREFIX = "world:"
_CHARACTER_ID = re.compile(r"^(?:world:)?([a-z0-9]+):(\d{1,9})$")


class EngineError(LpmError):
    """An engine that cannot serve a request (wrong kind of reference, bad checkpoint)."""


def samples_for_frames(frames: int, sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> int:
    """PCM samples needed for ``frames`` complete video frames: ``ceil(frames * sample_rate / fps)``."""
    return -(-frames * sample_rate // fps)


@dataclass(frozen=True)
class WorldCharacter:
    """A world character id, ``STYLE:SEED`` (``anime:42``; ``world:anime:42`` is accepted too)."""

    style: str
    seed: int

    @classmethod
    def parse(cls, text: str) -> WorldCharacter | None:
        """The character named by ``text``, or None when ``text`` is not of the form ``STYLE:SEED``."""
        m = _CHARACTER_ID.match(text.strip().lower())
        if m is None:
            return None
        if m.group(1) not in ALL_STYLES:
            raise EngineError(f"unknown world style {m.group(1)!r}; styles: {', '.join(ALL_STYLES)}")
        return cls(m.group(1), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.style}:{self.seed}"


@dataclass
class Character:
    """Who a session performs: a world character, or reference images (``global`` plus optional extras).

    Attributes:
        world: the world character, or None.
        images: reference kind (``global``, ``body_front``, ``expr_happy``, ...) -> (H, W, 3) uint8 RGB.
    """

    world: WorldCharacter | None = None
    images: dict[str, np.ndarray] = field(default_factory=dict)

    def describe(self) -> str:
        return f"world character {self.world}" if self.world else f"reference image(s) {sorted(self.images)}"


@dataclass
class ChunkInput:
    """One chunk as the session hands it to an engine.

    Attributes:
        index: chunk number in media order (skipped chunks count).
        first_frame: media frame index of the chunk's first frame (frame ``i`` is shown at ``i / fps`` s).
        self_pcm, partner_pcm: ``(n,)`` float32 at 16 kHz: the samples new since the previous chunk, so that
            the two streams have reached ``end_sample`` (the chunk's end plus the engine's lookahead).
        end_sample: absolute sample index (exclusive) both streams reach with this chunk.
        text: the text control in effect for this chunk.
        ready_wall: ``time.monotonic()`` when the chunk's last audio sample arrived (or was padded).
        skip: True when the session is behind and drops this chunk: the engine ingests its audio (features
            and state stay continuous) but produces no frames.
    """

    index: int
    first_frame: int
    self_pcm: np.ndarray
    partner_pcm: np.ndarray
    end_sample: int
    text: str
    ready_wall: float
    skip: bool = False


Stage = tuple[str, Callable[[Any, dict[str, float]], Any]]  # (name, fn(payload, timings_ms) -> payload)


class Engine(ABC):
    """Chunk-by-chunk video generation from audio (see the module docstring).

    Attributes:
        name: ``rig`` or ``dit`` (reported to clients).
        frames_per_chunk: frames produced per chunk.
        lookahead_frames: frames of audio past a chunk's end the engine needs (its only non-causal input).
        resolution: output frames are ``(resolution, resolution, 3)`` uint8.
        compute_budget_s: the latency the session should allow for this engine's pipeline per chunk.
    """

    name: str
    frames_per_chunk: int
    lookahead_frames: int
    resolution: int
    compute_budget_s: float

    @abstractmethod
    def stages(self) -> list[Stage]:
        """Ordered stages; the first takes a ``ChunkInput`` (never a skipped one), the last returns frames
        ``(frames_per_chunk, H, W, 3)`` uint8. Stages of one engine may run concurrently on different chunks,
        so each stage keeps only its own state."""

    @abstractmethod
    def skip(self, chunk: ChunkInput) -> None:
        """Ingest a skipped chunk's audio without producing frames (keeps audio features continuous)."""

    def settle(self, timings: dict[str, float]) -> None:
        """Work the first stage leaves for after its output is handed on (the DiT engine's cache commit): the
        pipeline runs it right after passing a chunk to the next stage, so it overlaps them instead of delaying
        the chunk's frames. The engine runs it itself before the next chunk needs it if nobody did. Timings
        go to ``timings`` (ms); the default has nothing to do."""
        return None

    def frame_stream(self) -> Callable[[Any, dict[str, float]], Iterator[np.ndarray]] | None:
        """The last stage as a generator of single ``(H, W, 3)`` uint8 frames, each yielded as soon as it is made
        (the live pipeline shows it then: ``pipeline.FrameFeed``), or None when the last stage makes the chunk's
        frames at once. Same frames as the last stage."""
        return None

    def step(self, chunk: ChunkInput) -> np.ndarray:
        """Run every stage on one chunk in this thread. Returns ``(frames_per_chunk, H, W, 3)`` uint8."""
        payload: Any = chunk
        timings: dict[str, float] = {}
        for i, (_, fn) in enumerate(self.stages()):
            payload = fn(payload, timings)
            if i == 0:
                self.settle(timings)
        return payload

    def close(self) -> None:
        """Release what the engine holds (threads, models); the default holds nothing."""
        return None
