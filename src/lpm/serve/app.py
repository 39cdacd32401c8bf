"""The FastAPI app: ``/v1/session`` (WebSocket, ``lpm.serve.protocol``), ``POST /v1/speak``, ``GET /`` (a page).

``create_app(cfg)`` builds everything a server holds (the ``SessionManager``, the engine factory) and stores it on
``app.state``: nothing lives in module globals, so two apps in one process do not share sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response

from lpm.errors import LpmError
from lpm.runtime.session import SessionConfig
from lpm.serve.capacity import Capacity, available_cores, measure_capacity
from lpm.serve.manager import EngineFactory, EngineSpec, LiveSession, ServerBusyError, SessionManager
from lpm.serve.protocol import (
    PROTOCOL_VERSION,
    TAG_SELF_AUDIO,
    Limits,
    ProtocolError,
    encode_speech,
    parse_audio,
    parse_json,
    parse_start,
    parse_voice,
    text_field,
)
from lpm.serve.worker import WorkerPool
from lpm.world.identity import ALL_STYLES

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # bad token
CLOSE_TRY_LATER = 1013  # server busy
EVENT_POLL_S = 0.05  # how often barge-in and error events are forwarded


@dataclass
class ServerConfig:
    """Everything ``lpm serve`` sets."""

    host: str = "127.0.0.1"  # bind address; nothing is bound beyond it
    port: int = 8000
    token: str | None = None  # when set, clients must send it (Authorization: Bearer T, or ?token=T)
    max_sessions: int | None = None  # concurrent sessions; None: the measured capacity (lpm.serve.capacity)
    workers: bool = True  # each session computes in a worker process of its own (lpm.serve.worker)
    threads: int = 1  # torch intra-op threads per session (its pipeline stages already run one thread each)
    engine: EngineSpec = field(default_factory=EngineSpec)
    limits: Limits = field(default_factory=Limits)
    session: SessionConfig = field(default_factory=SessionConfig)
    stats_interval_s: float = 1.0  # seconds between ``stats`` messages
    jpeg_quality: int = 85
    max_pending_frames: int = 12  # frames queued for a slow client; more are dropped (and counted)


def _authorized(cfg: ServerConfig, headers, query) -> bool:
    if not cfg.token:
        return True
    auth = headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else query.get("token", "")
    return hmac.compare_digest(given.encode(), cfg.token.encode())


def _static(name: str) -> str:
    return resources.files("lpm.serve").joinpath("static", name).read_text(encoding="utf-8")


class Connection:
    """One WebSocket client: waits for ``start``, then relays audio in and frames, stats and events out."""

    def __init__(self, ws: WebSocket, cfg: ServerConfig, manager: SessionManager) -> None:
        self.ws, self.cfg, self.manager = ws, cfg, manager
        self.out: asyncio.Queue = asyncio.Queue()
        self.pending_frames = 0
        self.live: LiveSession | None = None
        self.loop = asyncio.get_running_loop()

    async def send_json(self, **msg) -> None:
        await self.out.put(("text", json.dumps(msg)))

    async def _sender(self) -> None:
        while True:
            kind, data = await self.out.get()
            if kind == "end":
                return
            if kind == "frame":
                self.pending_frames -= 1
                await self.ws.send_bytes(data)
            elif kind == "bytes":
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_text(data)

    def _offer_frame(self, data: bytes) -> None:
        """On the event loop: queue a frame unless the client is too far behind (then drop and count)."""
        if self.pending_frames >= self.cfg.max_pending_frames:
            if self.live is not None:
                self.live.session.count_dropped(1)
            return
        self.pending_frames += 1
        self.out.put_nowait(("frame", data))

    def _pump_frames(self, live: LiveSession) -> None:
        """Thread: the session's encoded frames -> the event loop."""
        for data in live.session.encoded_frames():
            try:
                self.loop.call_soon_threadsafe(self._offer_frame, data)
            except RuntimeError:  # the loop closed: the client is gone
                return

    async def _events(self, live: LiveSession) -> None:
        interval = self.cfg.stats_interval_s
        ticks = 0
        while True:
            await asyncio.sleep(EVENT_POLL_S)
            for event in live.session.events():
                await self.send_json(**event)
            ticks += 1
            if ticks * EVENT_POLL_S >= interval:
                ticks = 0
                await self.send_json(type="stats", engine=live.session.info.engine, **live.session.snapshot())

    async def _receive(self) -> dict | None:
        """The next client message, or None when the client left or idled out."""
        try:
            return await asyncio.wait_for(self.ws.receive(), timeout=self.cfg.limits.idle_timeout_s)
        except asyncio.TimeoutError:
            await self.send_json(type="error", message=f"idle for {self.cfg.limits.idle_timeout_s:g} s: closing")
            return None

    async def _await_start(self) -> LiveSession | None:
        while True:
            message = await self._receive()
            if message is None or message["type"] == "websocket.disconnect":
                return None
            try:
                if message.get("text") is None:
                    raise ProtocolError("send a JSON 'start' message first")
                msg = parse_json(message["text"], self.cfg.limits)
                if msg["type"] == "stop":
                    return None
                if msg["type"] != "start":
                    raise ProtocolError(f"send a 'start' message first (got '{msg['type']}')")
                request = parse_start(msg, self.cfg.limits)
                return await asyncio.to_thread(self.manager.open, request)
            except ServerBusyError as e:
                await self.send_json(type="error", message=str(e), fatal=True)
                raise
            except LpmError as e:
                await self.send_json(type="error", message=str(e))

    async def _handle(self, live: LiveSession, message: dict) -> bool:
        """Apply one client message; False ends the session."""
        session, limits = live.session, self.cfg.limits
        if message.get("bytes") is not None:
            tag, pcm = parse_audio(message["bytes"], limits)
            # Resampling and voice activity run off the event loop (awaited, so packets stay in order): with
            # many sessions computing, the loop must stay free to read every client's audio on time.
            await asyncio.to_thread(session.push_self_audio if tag == TAG_SELF_AUDIO else session.push_partner_audio,
                                    pcm)
            return True
        msg = parse_json(message.get("text") or "", limits)
        kind = msg["type"]
        if kind == "stop":
            return False
        if kind == "start":
            raise ProtocolError("the session has already started")
        if kind == "text":
            session.set_text(text_field(msg, "text", limits))
        elif kind == "say":
            await speak(live, text_field(msg, "text", limits, required=True), msg.get("voice"))
        elif kind == "interrupt":
            dropped = session.cancel_speech()
            await self.send_json(type="interrupted", dropped_s=round(dropped, 3))
        return True

    async def run(self) -> None:
        sender = asyncio.create_task(self._sender())
        close_code = CLOSE_NORMAL
        try:
            live = await self._await_start()
        except ServerBusyError:
            live, close_code = None, CLOSE_TRY_LATER
        if live is None:
            await self.out.put(("end", None))
            with contextlib.suppress(Exception):
                await sender
                await self.ws.close(close_code)
            return
        self.live = live
        live.speech_sink = lambda data: self.loop.call_soon_threadsafe(self.out.put_nowait, ("bytes", data))
        session = live.session
        await self.send_json(type="ready", session=live.id, protocol=PROTOCOL_VERSION, **session.info.to_json(),
                             model=self.cfg.engine.describe(), character=live.character.describe(),
                             framing={kind: f.to_json() for kind, f in live.framing.items()})
        pump = threading.Thread(target=self._pump_frames, args=(live,), name="lpm-jpeg", daemon=True)
        pump.start()
        events = asyncio.create_task(self._events(live))
        try:
            while not sender.done():
                message = await self._receive()
                if message is None or message["type"] == "websocket.disconnect":
                    break
                try:
                    if not await self._handle(live, message):
                        break
                except LpmError as e:  # malformed or refused: say so, keep the session
                    await self.send_json(type="error", message=str(e))
        finally:
            self.manager.close(live.id)  # a dead client frees its session here
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await events
            await self.out.put(("end", None))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sender, timeout=2.0)
            with contextlib.suppress(Exception):
                await self.ws.close(CLOSE_NORMAL)
            await asyncio.to_thread(pump.join, 2.0)


async def speak(live: LiveSession, text: str, voice_spec: str | None = None) -> float:
    """espeak-ng speaks ``text`` in the character's voice into its own-speech stream; returns seconds.

    The audio also goes to the session's client (``0x11``) so the page can play it with the frames.
    """
    from lpm.world.speech import synthesize

    voice = parse_voice(voice_spec, live.character) if voice_spec else live.voice
    utterance = await asyncio.to_thread(synthesize, text, voice)
    pcm = np.asarray(utterance.pcm, np.float32)
    start_s = live.session.push_self_audio(pcm, native=True, want_start=True)
    if live.speech_sink is not None:
        live.speech_sink(encode_speech(start_s, pcm))
    return utterance.duration_s


def create_app(cfg: ServerConfig | None = None) -> FastAPI:
    """The server app; its ``SessionManager`` is ``app.state.manager``."""
    cfg = cfg or ServerConfig()
    factory = EngineFactory(cfg.engine)
    if cfg.engine.ranks > 1 and not cfg.workers:
        raise LpmError(f"--ranks {cfg.engine.ranks} runs each session in worker processes; drop --in-process")
    pool = WorkerPool(cfg.engine, cfg.threads) if cfg.workers else None
    fixed = None if cfg.max_sessions is None else Capacity(cfg.max_sessions, None, 0.0, available_cores(),
                                                            "--max-sessions")
    if fixed is None and cfg.engine.ranks > 1:  # a session's forwards use every rank (and every GPU: rank r, cuda:r)
        fixed = Capacity(1, None, 0.0, available_cores(), f"--ranks {cfg.engine.ranks}: one session over every rank")
    # Until the measurement at start-up ends nobody is admitted (a server answers only after its lifespan start).
    manager = SessionManager(factory, fixed or Capacity(0, None, 0.0, available_cores(), "not measured yet"),
                             cfg.session, pool, cfg.jpeg_quality)

    def start_up() -> None:
        if pool is not None:
            pool.start()  # the spare worker loads its weights while the capacity is measured
        if fixed is None:
            manager.capacity = measure_capacity(factory, cfg.threads, cfg.jpeg_quality)
        if pool is None:
            factory.preload()  # sessions in this process share these weights

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(start_up)
        yield
        manager.close_all()

    app = FastAPI(title="lpm", version=str(PROTOCOL_VERSION), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.manager, app.state.config = manager, cfg

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(_static("index.html"))

    @app.get("/static/app.js")
    async def script() -> Response:
        return Response(_static("app.js"), media_type="text/javascript")

    @app.get("/v1/info")
    async def info() -> dict:
        return {"engine": cfg.engine.name, "model": cfg.engine.describe(), "protocol": PROTOCOL_VERSION,
                "styles": list(ALL_STYLES), "max_sessions": manager.max_sessions, "sessions": manager.count,
                "capacity": manager.capacity.describe(), "workers": cfg.workers, "token_required": bool(cfg.token)}

    @app.post("/v1/speak")
    async def speak_route(request: Request) -> JSONResponse:
        if not _authorized(cfg, request.headers, request.query_params):
            return JSONResponse({"type": "error", "message": "unauthorized"}, status_code=401)
        body = await request.body()
        try:
            if len(body) > cfg.limits.max_text_chars * 4 + 1024:
                raise ProtocolError("request body too large")
            msg = json.loads(body or b"{}")
            if not isinstance(msg, dict):
                raise ProtocolError("body must be a JSON object")
            live = manager.get(str(msg.get("session", "")))
            if live is None:
                return JSONResponse({"type": "error", "message": "no such session"}, status_code=404)
            msg["type"] = "say"
            seconds = await speak(live, text_field(msg, "text", cfg.limits, required=True), msg.get("voice"))
        except (json.JSONDecodeError, LpmError) as e:
            return JSONResponse({"type": "error", "message": str(e)}, status_code=400)
        return JSONResponse({"session": live.id, "seconds": round(seconds, 3)})

    @app.websocket("/v1/session")
    async def session_route(ws: WebSocket) -> None:
        if not _authorized(cfg, ws.headers, ws.query_params):
            await ws.close(code=CLOSE_POLICY)  # refused before the handshake completes: no session is made
            return
        await ws.accept()
        await Connection(ws, cfg, manager).run()

    return app
