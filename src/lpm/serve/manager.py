"""``SessionManager``: the live sessions of one server (created by the app factory; no module globals).

It admits sessions up to the server's ``Capacity`` (measured, ``lpm.serve.capacity``; a reservation is taken
before anything is built, so concurrent starts cannot overshoot, and session N + 1 is refused at once), starts
each session in a worker process (``lpm.serve.worker``) or in this process, and frees a session whatever way
its client leaves.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from lpm.media.framing import Framing, frame_references
from lpm.runtime.dit_engine import DiTEngine, DiTEngineConfig
from lpm.runtime.engines import Character, Engine, EngineError
from lpm.runtime.rig_engine import RigEngine
from lpm.runtime.session import Session, SessionConfig
from lpm.serve.capacity import Capacity
from lpm.serve.handle import LocalSession, SessionHandle
from lpm.serve.protocol import StartRequest
from lpm.serve.worker import RemoteSession, WorkerPool
from lpm.world.speech import Voice


class ServerBusyError(EngineError):
    """The server is at capacity."""


@dataclass
class EngineSpec:
    """Which engine sessions get: the rig (no checkpoint) or a DiT checkpoint with its codec."""

    checkpoint: str | None = None  # DiT checkpoint; None: the rule-driven rig engine
    dit: DiTEngineConfig = field(default_factory=DiTEngineConfig)
    rig_resolution: int = 256  # output size of the rig engine
    # Processes per session: the DiT's forwards split over them (sequence parallel, ``lpm.serve.ranks``); 1 = one.
    ranks: int = 1

    def __post_init__(self) -> None:
        if self.ranks < 1:
            raise EngineError(f"ranks must be >= 1, got {self.ranks}")
        if self.ranks > 1 and not self.checkpoint:
            raise EngineError(f"--ranks {self.ranks} splits a DiT over processes; the rig engine runs in one")

    @property
    def name(self) -> str:
        return "dit" if self.checkpoint else "rig"

    def describe(self) -> str:
        """The model sessions run, for people (the page, ``ready``, ``/v1/info``)."""
        if not self.checkpoint:
            return "rig engine: the world's rule-driven pipeline (world characters only)"
        extras = [self.dit.precision] + ([f"{self.dit.attention_precision} attention"]
                                         if self.dit.attention_precision != "fp32" else [])
        extras += ["refiner"] if self.dit.refiner else []
        extras += [f"sequence parallel over {self.ranks} processes"] if self.ranks > 1 else []
        return f"DiT {self.checkpoint} ({', '.join(extras)})"


class EngineFactory:
    """Builds one engine per session; DiT weights and codec are loaded once and shared (read-only)."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._shared = None  # (model, codec, flow) once loaded

    def _load(self):
        from lpm.models.dit import load_dit
        from lpm.models.latent_codec import load_codec
        from lpm.runtime.dit_engine import flow_config_of

        with self._lock:
            if self._shared is None:
                cfg = self.spec.dit
                self._shared = (load_dit(self.spec.checkpoint, device=cfg.device),
                                load_codec(cfg.vae, device=cfg.device), flow_config_of(self.spec.checkpoint))
            return self._shared

    def preload(self) -> None:
        """Load shared weights now (the server does it at start, so the first client does not wait)."""
        if self.spec.checkpoint:
            self._load()

    def build(self, character: Character, seed: int = 0, group=None) -> Engine:
        """An engine for one session; with a ``SequenceGroup`` of more than one rank, its DiT split over the
        group (``lpm.parallel``; every rank builds it with the same character and seed)."""
        if not self.spec.checkpoint:
            return RigEngine(character, self.spec.rig_resolution)
        model, codec, flow = self._load()
        cfg = DiTEngineConfig(**{**self.spec.dit.__dict__, "checkpoint": self.spec.checkpoint, "seed": seed})
        if group is not None and group.world_size > 1:
            from lpm.parallel import SequenceParallelDiT
            from lpm.runtime.dit_engine import is_quantized, quantize_linears

            if cfg.precision == "int8" and not is_quantized(model):
                model = quantize_linears(model)  # before the wrap: quantize_linears takes a DiT
            model = SequenceParallelDiT(model, group)
        return DiTEngine(model, codec, character, cfg, flow)


@dataclass
class LiveSession:
    """A session and what the server keeps with it."""

    id: str
    session: SessionHandle
    voice: Voice
    character: Character
    speech_sink: Callable[[bytes], None] | None = None  # where ``say`` audio goes (the client's connection)
    framing: dict[str, Framing] = field(default_factory=dict)  # how each reference image was cropped


class SessionManager:
    """Open, find and close sessions, at most ``capacity.sessions`` at a time.

    Args:
        factory: builds engines (in this process; workers build their own from ``factory.spec``).
        capacity: how many sessions to admit; a start beyond is refused with ``ServerBusyError``.
        session_cfg: pacing and buffering of every session (its ``input_sample_rate`` is set per start).
        pool: worker processes to run sessions in; None runs them in this process.
        jpeg_quality: of the frames sent to clients.
    """

    def __init__(self, factory: EngineFactory, capacity: Capacity, session_cfg: SessionConfig | None = None,
                 pool: WorkerPool | None = None, jpeg_quality: int = 85):
        self.factory, self.capacity, self.pool = factory, capacity, pool
        self.session_cfg = session_cfg or SessionConfig()
        self.jpeg_quality = jpeg_quality
        self._lock = threading.Lock()
        self._sessions: dict[str, LiveSession] = {}
        self._reserved = 0

    @property
    def max_sessions(self) -> int:
        return self.capacity.sessions

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._sessions) + self._reserved

    def open(self, request: StartRequest) -> LiveSession:
        """Reserve a slot, build the engine, start the session. Raises ServerBusyError or EngineError."""
        with self._lock:
            running = len(self._sessions) + self._reserved
            if running >= self.capacity.sessions:
                raise ServerBusyError(self.capacity.refusal(running))
            self._reserved += 1
        try:
            session_id = secrets.token_hex(8)
            # Framing runs here, off the event loop (face detection takes tens of milliseconds).
            images, framing = frame_references(request.character.images, request.frame)
            character = replace(request.character, images=images)
            seed = secrets.randbelow(2**31)
            cfg = SessionConfig(**{**self.session_cfg.__dict__, "input_sample_rate": request.sample_rate})
            if self.pool is not None:
                handle: SessionHandle = RemoteSession(self.pool.take(), character, seed, cfg, request.text,
                                                      self.jpeg_quality)
            else:
                session = Session(self.factory.build(character, seed=seed), cfg)
                session.set_text(request.text)
                handle = LocalSession(session.start(), self.jpeg_quality)
            live = LiveSession(session_id, handle, request.voice, character, framing=framing)
            with self._lock:
                self._sessions[session_id] = live
            return live
        finally:
            with self._lock:
                self._reserved -= 1

    def get(self, session_id: str) -> LiveSession | None:
        with self._lock:
            return self._sessions.get(session_id)

    def close(self, session_id: str) -> None:
        """Stop a session and free its slot (idempotent)."""
        with self._lock:
            live = self._sessions.pop(session_id, None)
        if live is not None:
            live.session.close()

    def close_all(self) -> None:
        with self._lock:
            ids = list(self._sessions)
        for session_id in ids:
            self.close(session_id)
        if self.pool is not None:
            self.pool.close()
