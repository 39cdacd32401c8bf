"""Load and latency of a running ``lpm serve``: concurrent WebSocket clients streaming real-time audio.

Each client opens a session, then sends both streams (``0x01`` own speech, ``0x02`` partner) in 20 ms PCM16
packets paced by its own clock: packet ``k`` leaves at ``audio_t0 + k * 20 ms``, so media time ``s`` of the audio
was sent at wall time ``audio_t0 + s``. A frame stamped ``ts`` shows media time ``ts``; its **end-to-end latency**
is the wall time it arrived minus ``audio_t0 + ts`` (the sound of that moment went out -> its picture came back),
which includes the chunk the frame belongs to, the engine's audio lookahead, compute, the media-clock delay,
JPEG and transport. Used by ``scripts/serve_latency.py`` and ``tests/test_serve_load.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lpm.runtime.audio_buffer import float_to_pcm16
from lpm.serve.protocol import FRAME_HEADER, TAG_FRAME, TAG_PARTNER_AUDIO, TAG_SELF_AUDIO
from lpm.training.distributed import free_port

SAMPLE_RATE = 16000
PACKET_S = 0.02  # one audio message per stream every 20 ms, as a browser or phone client sends
SERVER_START_S = 120.0  # how long a spawned server may take to answer /v1/info (DiT weights load first)
CLOSE_WAIT_S = 10.0  # after ``stop``, how long a client waits for the server to close the socket


@dataclass
class ClientResult:
    """What one client saw. Wall times are ``time.monotonic()`` of this process."""

    index: int
    ready: dict | None = None
    audio_t0: float = 0.0  # wall time the first audio packet was due (media time 0 of the sent audio)
    end_wall: float = 0.0  # wall time the client sent ``stop``
    frames: list[tuple[float, float]] = field(default_factory=list)  # (media timestamp, arrival wall time)
    stats: list[dict] = field(default_factory=list)  # every ``stats`` message, plus its arrival wall time "received"
    errors: list[dict] = field(default_factory=list)  # every ``error`` message
    closed_early: str | None = None  # why the connection ended before ``stop``, if it did

    def latencies(self) -> np.ndarray:
        """End-to-end latency (s) of every frame received (see the module docstring)."""
        return np.array([wall - (self.audio_t0 + ts) for ts, wall in self.frames])

    def summary(self) -> dict:
        lat = self.latencies()
        walls = [self.audio_t0] + [wall for _, wall in self.frames] + [self.end_wall]
        span = max(self.end_wall - self.audio_t0, 1e-9)
        last = self.stats[-1] if self.stats else {}
        return {
            "frames": len(self.frames),
            "fps": round(len(self.frames) / span, 2),
            "latency_p50_s": _pct(lat, 50),
            "latency_p95_s": _pct(lat, 95),
            "latency_max_s": _pct(lat, 100),
            "longest_hold_s": round(float(np.max(np.diff(walls))), 3),  # longest time with no new frame
            "errors": [e.get("message") for e in self.errors],
            "closed_early": self.closed_early,
            "stats_messages": len(self.stats),
            "server_stats": {k: last.get(k) for k in ("frames", "chunks", "dropped", "skipped_chunks", "padded_s",
                                                     "delay_s", "latency_p50_s", "latency_p95_s", "stage_ms")},
        }


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if len(values) else None


@dataclass
class LoadReport:
    """All clients of one run and the figures over them."""

    sessions: int
    seconds: float
    clients: list[ClientResult]

    def latencies(self) -> np.ndarray:
        parts = [c.latencies() for c in self.clients]
        return np.concatenate(parts) if parts else np.zeros(0)

    def summary(self) -> dict:
        lat = self.latencies()
        per = [c.summary() for c in self.clients]
        stats = [c.stats[-1] for c in self.clients if c.stats]
        return {
            "sessions": self.sessions,
            "seconds": self.seconds,
            "engine": next((c.ready.get("engine") for c in self.clients if c.ready), None),
            "latency_p50_s": _pct(lat, 50),
            "latency_p95_s": _pct(lat, 95),
            "latency_max_s": _pct(lat, 100),
            "fps_per_session_mean": round(float(np.mean([p["fps"] for p in per])), 2) if per else 0.0,
            "frames_received": int(sum(p["frames"] for p in per)),
            "dropped": int(sum(s.get("dropped", 0) for s in stats)),
            "skipped_chunks": int(sum(s.get("skipped_chunks", 0) for s in stats)),
            "errors": sum(len(c.errors) for c in self.clients),
            "clients": per,
        }


def conversation_audio(seconds: float, kind: str = "speech", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Own and partner speech, ``(n,)`` float32 at 16 kHz each: turns of world voices (espeak-ng) that alternate
    with silence between them, or with ``kind="tone"`` two tones that take turns every 2 s (no espeak needed)."""
    n = int(seconds * SAMPLE_RATE)
    if kind == "tone":
        t = np.arange(n) / SAMPLE_RATE
        turn = (t // 2.0).astype(int) % 2
        own = 0.2 * np.sin(2 * np.pi * 180 * t) * (turn == 0)
        partner = 0.2 * np.sin(2 * np.pi * 260 * t) * (turn == 1)
        return own.astype(np.float32), partner.astype(np.float32)
    from lpm.world.speech import PARTNER_VOICES, SELF_VOICES, synthesize

    lines = ("How was your weekend?", "Oh, it was lovely, thank you. I went hiking in the hills.",
             "That sounds great. Was it cold up there?", "A little, but the view was worth it.")
    own, partner = np.zeros(n, np.float32), np.zeros(n, np.float32)
    pos, turn = int(0.5 * SAMPLE_RATE), 0
    while pos < n:
        voice = (PARTNER_VOICES if turn % 2 == 0 else SELF_VOICES)[seed % 6]
        pcm = synthesize(lines[turn % len(lines)], voice).pcm[: n - pos]
        (partner if turn % 2 == 0 else own)[pos:pos + len(pcm)] = pcm
        pos += len(pcm) + int(0.6 * SAMPLE_RATE)
        turn += 1
    return own, partner


async def run_client(url: str, index: int, seconds: float, own: np.ndarray, partner: np.ndarray,
                     character: str = "anime:42", token: str | None = None) -> ClientResult:
    """One session: ``start``, then ``seconds`` of both streams at real time, then ``stop``."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    result = ClientResult(index)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    packet = int(PACKET_S * SAMPLE_RATE)
    # No keepalive pings from this side, as a browser sends none (the server still pings).
    async with connect(url, additional_headers=headers, max_size=2**24, open_timeout=60, ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "start", "character": character, "sample_rate": SAMPLE_RATE}))
        while result.ready is None:
            msg = json.loads(await ws.recv())
            if msg["type"] == "error":
                result.errors.append(msg)
                result.closed_early = msg["message"]
                return result
            if msg["type"] == "ready":
                result.ready = msg

        async def receive() -> None:
            try:
                async for data in ws:
                    if isinstance(data, bytes):
                        if data[0] == TAG_FRAME:
                            result.frames.append((FRAME_HEADER.unpack_from(data)[1], time.monotonic()))
                        continue
                    msg = json.loads(data)
                    if msg["type"] == "stats":
                        result.stats.append({**msg, "received": time.monotonic()})
                    elif msg["type"] == "error":
                        result.errors.append(msg)
            except ConnectionClosed as e:
                if result.end_wall == 0.0:  # before ``stop``: say who closed and why
                    result.closed_early = f"connection closed before stop (received {e.rcvd}, sent {e.sent})"
                return
            if result.end_wall == 0.0:
                result.closed_early = "the server closed the connection before stop"

        receiver = asyncio.create_task(receive())
        result.audio_t0 = time.monotonic()
        total = int(seconds * SAMPLE_RATE)
        try:
            for k, start in enumerate(range(0, total, packet)):
                if receiver.done():
                    break
                delay = result.audio_t0 + k * PACKET_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(bytes([TAG_SELF_AUDIO]) + float_to_pcm16(own[start % len(own):][:packet]))
                await ws.send(bytes([TAG_PARTNER_AUDIO]) + float_to_pcm16(partner[start % len(partner):][:packet]))
            result.end_wall = time.monotonic()
            await ws.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:
            result.closed_early = result.closed_early or "connection lost while sending"
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(receiver, CLOSE_WAIT_S)
        receiver.cancel()
    result.end_wall = result.end_wall or time.monotonic()
    return result


async def run_load(url: str, sessions: int, seconds: float, kind: str = "speech",
                   token: str | None = None) -> LoadReport:
    """``sessions`` concurrent clients (world characters ``anime:42``, ``photo:43``, ...) for ``seconds``."""
    from lpm.world.identity import ALL_STYLES

    audio = [conversation_audio(min(seconds, 30.0), kind, seed=i) for i in range(sessions)]
    clients = [run_client(url, i, seconds, *audio[i], character=f"{ALL_STYLES[i % len(ALL_STYLES)]}:{42 + i}",
                          token=token) for i in range(sessions)]
    return LoadReport(sessions, seconds, list(await asyncio.gather(*clients)))


def random_tiny_dit(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny DiT (block-causal, 8 latent channels, 16x16 latents: the shipped VAE's) with random weights."""
    import torch

    from lpm.models.dit import DiT, save_dit
    from lpm.models.dit_config import preset

    torch.manual_seed(seed)
    model = DiT(preset("tiny", latent_channels=8, latent_height=16, latent_width=16, attention="block_causal"))
    return save_dit(path, model.eval())


@contextlib.contextmanager
def spawn_server(*serve_args: str, threads: int = 1) -> Iterator[str]:
    """Run ``lpm serve ARGS`` on a free loopback port in a child process; yields its ``ws://`` session URL."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "lpm.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(threads), *serve_args]
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server can never block on it
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"lpm serve exited with {proc.returncode}: {log.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/info", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lpm serve did not answer within {SERVER_START_S:g} s") from None
                time.sleep(0.2)
        yield f"ws://127.0.0.1:{port}/v1/session"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
