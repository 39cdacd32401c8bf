"""The live server over FastAPI's TestClient: protocol, limits, refusals, barge-in-free basics, say -> speech."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.websockets import WebSocketDisconnect

from lpm.runtime.audio_buffer import float_to_pcm16
from lpm.runtime.session import SessionConfig
from lpm.serve.app import ServerConfig, create_app
from lpm.serve.manager import EngineSpec
from lpm.serve.protocol import TAG_FRAME, TAG_PARTNER_AUDIO, TAG_SPEECH, Limits, decode_frame

CHARACTER = "anime:42"


def make_client(**overrides) -> TestClient:
    """The rig engine in this process (fast); ``test_serve_workers.py`` covers worker processes and capacity."""
    overrides = {"workers": False, "max_sessions": 4, **overrides}
    cfg = ServerConfig(engine=EngineSpec(rig_resolution=64), session=SessionConfig(vad="energy"),
                       stats_interval_s=0.25, **overrides)
    return TestClient(create_app(cfg))


def receive_until(ws, want: str, limit: int = 400) -> tuple[dict | None, list[tuple[float, bytes]]]:
    """Read messages until a JSON message of type ``want``; returns it and the frames seen on the way."""
    frames = []
    for _ in range(limit):
        msg = ws.receive()
        if msg.get("bytes") is not None:
            if msg["bytes"][0] == TAG_FRAME:
                frames.append(decode_frame(msg["bytes"]))
            continue
        if msg.get("text") is None:
            return None, frames
        body = json.loads(msg["text"])
        if body["type"] == want:
            return body, frames
    return None, frames


def png_b64(size: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 100, 50)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_session_streams_frames_and_stats():
    with make_client() as client, client.websocket_connect("/v1/session") as ws:
        ws.send_text(json.dumps({"type": "start", "character": CHARACTER, "sample_rate": 48000}))
        ready, _ = receive_until(ws, "ready")
        assert ready["engine"] == "rig" and ready["fps"] == 24 and ready["resolution"] == 64
        tone = (0.2 * np.sin(np.arange(48000) * 2 * np.pi * 220 / 48000)).astype(np.float32)
        for i in range(0, len(tone), 960):  # 20 ms packets at 48 kHz, resampled by the session
            ws.send_bytes(bytes([TAG_PARTNER_AUDIO]) + float_to_pcm16(tone[i:i + 960]))
        ws.send_text("{not json")
        error, _ = receive_until(ws, "error")
        assert "malformed" in error["message"]
        stats, frames = receive_until(ws, "stats")
        stats, more = receive_until(ws, "stats")
        frames += more
        assert len(frames) >= 4 and stats["frames"] >= 4 and stats["fps"] > 0
        stamps = [ts for ts, _ in frames]
        assert all(b > a for a, b in zip(stamps, stamps[1:]))  # the session survived the bad message
        assert Image.open(io.BytesIO(frames[-1][1])).size == (64, 64)
        ws.send_text(json.dumps({"type": "stop"}))


def test_token_is_required_when_set():
    with make_client(token="s3cret") as client:
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/v1/session") as ws:
            ws.receive()
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/v1/session?token=wrong") as ws:
            ws.receive()
        with client.websocket_connect("/v1/session", headers={"Authorization": "Bearer s3cret"}) as ws:
            ws.send_text(json.dumps({"type": "start", "character": CHARACTER}))
            assert receive_until(ws, "ready")[0] is not None
        assert client.post("/v1/speak", json={"session": "x", "text": "hi"}).status_code == 401


def test_max_sessions_refuses_clearly_and_dead_clients_free_slots():
    with make_client(max_sessions=1) as client:
        manager = client.app.state.manager
        with client.websocket_connect("/v1/session") as first:
            first.send_text(json.dumps({"type": "start", "character": CHARACTER}))
            assert receive_until(first, "ready")[0] is not None
            with client.websocket_connect("/v1/session") as second:
                second.send_text(json.dumps({"type": "start", "character": "photo:1"}))
                error, _ = receive_until(second, "error")
                assert error["message"].startswith("at capacity: 1 session(s) running")
        deadline = time.monotonic() + 5
        while manager.count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert manager.count == 0  # the client left without 'stop': its session is freed


def test_bad_references_are_refused_and_the_connection_lives():
    with make_client(limits=Limits(max_image_pixels=32 * 32)) as client, client.websocket_connect("/v1/session") as ws:
        ws.send_text(json.dumps({"type": "start", "reference": png_b64(64)}))
        assert "exceeds" in receive_until(ws, "error")[0]["message"]
        ws.send_text(json.dumps({"type": "start", "reference": png_b64(16)}))
        assert "world characters only" in receive_until(ws, "error")[0]["message"]  # the rig needs a world id
        ws.send_text(json.dumps({"type": "start", "reference": "bm90IGFuIGltYWdl"}))
        assert "PNG or JPEG" in receive_until(ws, "error")[0]["message"]
        ws.send_text(json.dumps({"type": "start", "character": CHARACTER}))
        assert receive_until(ws, "ready")[0] is not None


def test_idle_sessions_are_closed():
    with make_client(limits=Limits(idle_timeout_s=0.3)) as client, client.websocket_connect("/v1/session") as ws:
        ws.send_text(json.dumps({"type": "start", "character": CHARACTER}))
        assert "idle" in receive_until(ws, "error")[0]["message"]


def test_page_and_info():
    with make_client() as client:
        page = client.get("/")
        assert page.status_code == 200 and "/v1/session" in client.get("/static/app.js").text
        assert client.get("/v1/info").json()["engine"] == "rig"


def test_say_makes_the_character_speak():
    """``say``: espeak speech enters the own stream; the mouth region of the frames moves while it plays."""
    from lpm.world.identity import sample_identity
    from lpm.world.motion import neutral_pose
    from lpm.world.render import Renderer

    with make_client() as client, client.websocket_connect("/v1/session") as ws:
        ws.send_text(json.dumps({"type": "start", "character": CHARACTER}))
        receive_until(ws, "ready")
        frames = []
        while len(frames) < 12:  # a silent stretch first, to compare with
            data = ws.receive().get("bytes")
            if data is not None and data[0] == TAG_FRAME:
                frames.append(decode_frame(data))
        ws.send_text(json.dumps({"type": "say", "text": "Hello! Open wide, papa, mama, baba."}))
        speech = None
        for _ in range(800):
            msg = ws.receive()
            data = msg.get("bytes")
            if data is not None and data[0] == TAG_SPEECH:
                speech = (decode_frame(bytes([TAG_FRAME]) + data[1:9])[0], (len(data) - 9) // 2 / 16000)
            elif data is not None and data[0] == TAG_FRAME:
                frames.append(decode_frame(data))
            if speech and frames and frames[-1][0] > speech[0] + speech[1] + 0.3:
                break
        assert speech is not None
        x0, y0, x1, y1 = Renderer(sample_identity(42, "anime"), 64).face_regions(neutral_pose()[0])["mouth"]

        def mouth(jpeg: bytes) -> np.ndarray:
            return np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), np.float32)[y0 - 2:y1 + 2, x0 - 2:x1 + 2]

        start, dur = speech
        talking = np.stack([mouth(j) for ts, j in frames if start + 0.1 < ts < start + dur - 0.1])
        before = np.stack([mouth(j) for ts, j in frames if ts < start])
        assert len(talking) > 10
        assert talking.std(axis=0).mean() > 2 * before.std(axis=0).mean() + 1.0
