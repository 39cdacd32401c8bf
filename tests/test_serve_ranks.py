"""A served session over two processes (``lpm serve --ranks 2``, gloo on CPU): the worker leads, its follower
runs the same forwards, the frames equal a one-process worker's, and every process of the group ends with the
session; a worker never used tells its follower to quit."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from lpm.errors import LpmError
from lpm.runtime.dit_engine import DiTEngineConfig
from lpm.runtime.engines import Character, WorldCharacter
from lpm.runtime.session import SessionConfig
from lpm.serve.app import ServerConfig, create_app
from lpm.serve.manager import EngineSpec
from lpm.serve.protocol import decode_frame
from lpm.serve.worker import RemoteSession, WorkerPool

SHIPPED = "checkpoints/online_tiny.safetensors"
FRAMES = 16


def _frames(ranks: int) -> tuple[np.ndarray, list]:
    pool = WorkerPool(EngineSpec(checkpoint=SHIPPED, dit=DiTEngineConfig(), ranks=ranks), threads=1)
    worker = pool.take()
    pool.close()  # the spare it started: never used, it and its follower must end
    processes = [worker.process, *worker.followers]
    assert len(processes) == ranks
    cfg = SessionConfig(realtime=False, vad="off", max_buffer_s=10.0)
    session = RemoteSession(worker, Character(world=WorldCharacter("photo", 1)), 7, cfg, "")
    t = np.arange(16000 * 2) / 16000
    session.push_self_audio((0.2 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32),
                            native=True)
    session.push_partner_audio(np.zeros(16000 * 2, np.float32), native=True)
    images = []
    for data in session.encoded_frames():
        _, jpeg = decode_frame(data)
        images.append(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
        if len(images) == FRAMES:
            break
    session.close()
    return np.stack(images), processes


@pytest.fixture(scope="module")
def one_rank():
    return _frames(1)[0]


def test_two_ranks_serve_the_one_rank_frames_and_end_together(one_rank):
    frames, processes = _frames(2)
    assert frames.shape == one_rank.shape
    diff = np.abs(frames.astype(int) - one_rank.astype(int))
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8, (diff.mean(), diff.max())  # JPEG of equal frames
    deadline = time.monotonic() + 10
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(p.is_alive() for p in processes)
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]  # ended, not killed


def test_ranks_errors():
    with pytest.raises(LpmError, match="rig engine"):
        EngineSpec(ranks=2)
    with pytest.raises(LpmError, match=">= 1"):
        EngineSpec(checkpoint=SHIPPED, ranks=0)
    with pytest.raises(LpmError, match="in-process"):
        create_app(ServerConfig(engine=EngineSpec(checkpoint=SHIPPED, ranks=2), workers=False))


def test_an_unused_worker_tells_its_follower_to_quit():
    import multiprocessing as mp

    from lpm.serve.worker import WorkerProcess

    worker = WorkerProcess(mp.get_context("spawn"), EngineSpec(checkpoint=SHIPPED, ranks=2), 1)
    worker.wait_loaded()
    worker.conn.close()  # the server is gone before any session: EOF in the worker
    for p in [worker.process, *worker.followers]:
        p.join(30)
    assert [p.exitcode for p in [worker.process, *worker.followers]] == [0, 0]
