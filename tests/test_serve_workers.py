"""Sessions in worker processes and admission by measured capacity: the shipped Online model serves a drawing by
default, its compute runs outside the server's process (audio pushes never wait for it), session N + 1 gets an
immediate "at capacity", a worker that dies is reported; the capacity arithmetic and its measurement."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from tests.test_serve import receive_until

from lpm.runtime.dit_engine import DiTEngineConfig
from lpm.runtime.session import SessionConfig
from lpm.serve.app import ServerConfig, create_app
from lpm.serve.capacity import HEADROOM, Capacity, measure_capacity, sessions_for
from lpm.serve.manager import EngineFactory, EngineSpec

SHIPPED = "checkpoints/online_tiny.safetensors"


def drawing_b64() -> str:
    import base64
    import io

    image = Image.new("RGB", (200, 160), (250, 250, 240))
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 30, 140, 130), outline=(20, 20, 20), width=4)  # a face drawn with a pen
    draw.arc((80, 85, 120, 110), 10, 170, fill=(200, 30, 30), width=3)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_sessions_for_keeps_real_time_and_always_admits_one():
    assert sessions_for(40.0, 166.7, 2) == int(2 * HEADROOM * 166.7 / 40.0)  # 7 sessions of 0.24 cores
    assert sessions_for(500.0, 166.7, 2) == 1  # slower than real time: one session, degrading
    assert sessions_for(166.7, 166.7, 2) == 1
    with pytest.raises(ValueError):
        sessions_for(0.0, 166.7, 2)
    refusal = Capacity(1, 480.0, 166.7, 2, "measured").refusal(1)
    assert refusal.startswith("at capacity: 1 session(s) running") and "480 ms of CPU per 167 ms chunk" in refusal


def test_measured_capacity_of_the_rig():
    capacity = measure_capacity(EngineFactory(EngineSpec(rig_resolution=64)), chunks=3)
    assert capacity.source == "measured" and capacity.cpu_ms_per_chunk > 0 and capacity.chunk_ms == pytest.approx(
        1000 * 4 / 24, abs=0.1)
    assert capacity.sessions == sessions_for(capacity.cpu_ms_per_chunk, capacity.chunk_ms, capacity.cores)


@pytest.mark.slow  # a worker process imports torch and loads the model: ~20 s on an idle 2-core CPU, 60 s busy
@pytest.mark.skipif(not os.path.isfile(SHIPPED), reason="the shipped Online model is not in this checkout")
def test_worker_session_serves_a_drawing_refuses_n_plus_one_and_audio_never_waits():
    cfg = ServerConfig(engine=EngineSpec(checkpoint=SHIPPED, dit=DiTEngineConfig()),
                       session=SessionConfig(vad="energy"), stats_interval_s=0.25, max_sessions=1)
    with TestClient(create_app(cfg)) as client, client.websocket_connect("/v1/session") as ws:
        info = client.get("/v1/info").json()
        assert info["engine"] == "dit" and "online_tiny" in info["model"] and info["workers"]
        ws.send_text(json.dumps({"type": "start", "reference": drawing_b64()}))
        ready = json.loads(ws.receive_text())  # "ready", or the error that says why not
        assert ready["type"] == "ready" and ready["engine"] == "dit" and "online_tiny" in ready["model"], ready
        handle = client.app.state.manager.get(ready["session"]).session
        assert handle.pid not in (None, os.getpid())  # the model runs in a worker process
        with client.websocket_connect("/v1/session") as second:  # session N + 1: refused at once
            begin = time.monotonic()
            second.send_text(json.dumps({"type": "start", "character": "photo:1"}))
            error, _ = receive_until(second, "error")
            assert error["message"].startswith("at capacity: 1 session(s) running") and error["fatal"]
            assert time.monotonic() - begin < 2.0
        # Audio while the model computes: each push is a pipe write in this process, never a wait for the model.
        cpu0, wall0, pushes = time.process_time(), time.monotonic(), []
        packet = (0.1 * np.sin(np.arange(320) * 0.3)).astype(np.float32)
        for k in range(150):  # 3 s of both streams in 20 ms packets, paced
            begin = time.perf_counter()
            handle.push_self_audio(packet, native=True)
            handle.push_partner_audio(packet, native=True)
            pushes.append(time.perf_counter() - begin)
            time.sleep(max(0.0, wall0 + (k + 1) * 0.02 - time.monotonic()))
        server_cpu = time.process_time() - cpu0
        frames, stats, deadline = [], {"chunks": 0}, time.monotonic() + 20  # a busy CPU: slow first chunks
        while time.monotonic() < deadline and (len(frames) < 4 or stats["chunks"] < 3):
            stats, more = receive_until(ws, "stats")
            frames += more
        assert len(frames) >= 4 and stats["chunks"] >= 3, stats
        assert max(pushes) < 0.05, max(pushes)  # no push waited on a chunk (one takes ~0.3-0.8 s here)
        assert server_cpu < 0.5 * (time.monotonic() - wall0), server_cpu  # the chunks' compute was elsewhere
        handle.worker.process.kill()  # a worker that dies (out of memory, killed) is reported, not a silent freeze
        error, _ = receive_until(ws, "error")
        assert "worker process ended unexpectedly" in error["message"], error
        ws.send_text(json.dumps({"type": "stop"}))
