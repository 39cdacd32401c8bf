"""Session workers: each live session computes in a process of its own (``RemoteSession``).

The server process runs the event loop (WebSocket reads, JSON, the page); a session's engine, its pipeline
threads and JPEG encoding run in a worker process, so the loop never waits for a GIL held by model code and
audio packets are read on time however hard the sessions compute. A ``WorkerPool`` keeps ``spare`` workers
spawned with the weights loaded, so a session starts without waiting for imports and checkpoint reads; each
worker serves one session and exits with it (nothing leaks from one session into the next).

Wire between the two processes (a ``multiprocessing`` pipe, pickled tuples):
- server -> worker: ``("start", character, seed, session_cfg, text, jpeg_quality)`` once, then
  ``("self", pcm, native, reply_id | None)``, ``("partner", pcm, native)``, ``("text", s)``,
  ``("cancel", reply_id)``, ``("stop",)``.
- worker -> server: ``("loaded",)`` (weights in memory), ``("ready", SessionInfo)`` or ``("refused", message)``,
  then ``("frame", bytes)`` (a wire frame: tag, timestamp, JPEG), ``("status", events, stats)`` every
  ``STATUS_S``, ``("reply", reply_id, value)``, ``("end",)`` when the session's frames end.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from lpm.errors import LpmError
from lpm.runtime.engines import Character, EngineError
from lpm.runtime.session import SessionConfig
from lpm.serve.handle import SessionHandle, SessionInfo
from lpm.training.distributed import free_port

STATUS_S = 0.1  # the worker sends events and a stats snapshot this often
LOAD_TIMEOUT_S = 180.0  # a worker must have its weights loaded by then (a cold 2-core machine: imports + reads)
START_TIMEOUT_S = 60.0  # and its session started (references encoded, cache prefilled) by then
REPLY_TIMEOUT_S = 10.0  # a request that needs an answer (own speech start time, cancel) waits this long
FRAME_BUFFER = 240  # frames held for the server's JPEG pump (10 s at 24 fps); beyond, dropped and counted


def worker_main(conn, spec, threads: int, port: int = 0) -> None:
    """A worker process: load the engine's weights, wait for one session, run it until ``stop`` or EOF. With
    ``spec.ranks > 1`` it is rank 0 of the session's group (``lpm.serve.ranks``, rendezvous on ``port``)."""
    import torch

    from lpm.serve import ranks

    torch.set_num_threads(max(1, threads))
    group = ranks.join_group(0, spec.ranks, port, spec.dit.device) if spec.ranks > 1 else None
    try:
        _serve_one(conn, spec, group)
    finally:
        if group is not None:
            ranks.leave(group)


def _serve_one(conn, spec, group) -> None:
    from lpm.runtime.follow import LeaderEngine
    from lpm.runtime.session import Session
    from lpm.serve import ranks
    from lpm.serve.manager import EngineFactory
    from lpm.serve.protocol import encode_frame, jpeg_bytes

    factory = EngineFactory(spec)
    try:
        factory.preload()
    except Exception as e:  # noqa: BLE001 - reported to the server, which refuses the session with it
        conn.send(("refused", f"the session worker could not load the model: {e}"))
        return
    if group is not None:
        ranks.loaded_barrier(group)  # every follower has its weights too
    conn.send(("loaded",))
    try:
        msg = conn.recv()
    except EOFError:
        msg = ("eof",)
    if msg[0] != "start":
        if group is not None:
            ranks.announce(group, (ranks.QUIT,))
        return
    _, character, seed, session_cfg, text, quality = msg
    try:
        if group is not None:
            ranks.announce(group, (ranks.START, character, seed))
        engine = factory.build(character, seed=seed, group=group)
        session = Session(engine if group is None else LeaderEngine(engine, group), session_cfg)
        session.set_text(text)
        session.start()
    except LpmError as e:
        conn.send(("refused", str(e)))
        return
    except Exception as e:  # noqa: BLE001 - a clear refusal, never a silent dead worker
        conn.send(("refused", f"the session failed to start: {e!r}"))
        return
    lock, stop = threading.Lock(), threading.Event()

    def send(item: tuple) -> None:
        try:
            with lock:
                conn.send(item)
        except (OSError, ValueError):  # the server is gone: end
            stop.set()

    send(("ready", SessionInfo.of(session)))

    def pump() -> None:
        for timestamp, image in session.frames():
            send(("frame", encode_frame(timestamp, jpeg_bytes(image, quality))))
            if stop.is_set():
                break
        send(("end",))

    def status() -> None:
        while not stop.wait(STATUS_S):
            send(("status", session.events(), session.stats.snapshot()))

    threads_ = [threading.Thread(target=pump, name="lpm-worker-jpeg", daemon=True),
                threading.Thread(target=status, name="lpm-worker-status", daemon=True)]
    for t in threads_:
        t.start()
    try:
        while not stop.is_set():
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind == "self":
                start = session.push_self_audio(msg[1], native=msg[2])
                if msg[3] is not None:
                    send(("reply", msg[3], start))
            elif kind == "partner":
                session.push_partner_audio(msg[1], native=msg[2])
            elif kind == "text":
                session.set_text(msg[1])
            elif kind == "cancel":
                send(("reply", msg[1], session.cancel_speech()))
            elif kind == "stop":
                break
    finally:
        stop.set()
        session.close()
        for t in threads_:
            t.join(2.0)
        conn.close()


class WorkerProcess:
    """A spawned worker (``worker_main``) and the server's end of its pipe; with ``spec.ranks > 1`` also its
    followers (``lpm.serve.ranks``), which live and die with it."""

    def __init__(self, ctx, spec, threads: int) -> None:
        from lpm.serve import ranks

        self.conn, child = ctx.Pipe()
        port = free_port() if spec.ranks > 1 else 0
        self.process = ctx.Process(target=worker_main, args=(child, spec, threads, port), name="lpm-session-worker",
                                   daemon=True)
        self.followers = [ctx.Process(target=ranks.follower_main, args=(r, spec.ranks, port, spec, threads),
                                      name=f"lpm-session-follower-{r}", daemon=True) for r in range(1, spec.ranks)]
        self.process.start()
        for p in self.followers:
            p.start()
        child.close()  # only the worker holds its end: EOF here when it exits
        self.loaded = False

    def join(self, timeout: float) -> None:
        """Wait for the worker and its followers to end; terminate whoever is still running after ``timeout``."""
        for p in [self.process, *self.followers]:
            p.join(timeout)
        for p in [self.process, *self.followers]:
            if p.is_alive():
                p.terminate()
                p.join(2.0)

    def wait_loaded(self, timeout: float = LOAD_TIMEOUT_S) -> None:
        """Block until the worker has its weights; an ``EngineError`` when it failed or took too long."""
        if self.loaded:
            return
        if not self.conn.poll(timeout):
            self.kill()
            raise EngineError(f"the session worker did not load the model within {timeout:g} s")
        try:
            msg = self.conn.recv()
        except EOFError:
            raise EngineError(f"the session worker exited (code {self.process.exitcode}) while loading") from None
        if msg[0] != "loaded":
            self.kill()
            raise EngineError(msg[1] if msg[0] == "refused" else f"unexpected worker message {msg[0]!r}")
        self.loaded = True

    def kill(self) -> None:
        self.join(0.0)  # no grace: terminate the worker and its followers now
        self.conn.close()


class WorkerPool:
    """Keeps ``spare`` loaded workers ready; ``take()`` hands one out and starts its replacement.

    Args:
        spec: the engine every worker builds (``lpm.serve.manager.EngineSpec``).
        threads: torch intra-op threads per worker (the pipeline's stages already run one thread each).
        spare: workers kept loaded and idle.
    """

    def __init__(self, spec, threads: int = 1, spare: int = 1) -> None:
        self.spec, self.threads, self.spare = spec, threads, max(1, spare)
        self._ctx = mp.get_context("spawn")  # never fork a process that holds threads and an event loop
        self._lock = threading.Lock()
        self._idle: list[WorkerProcess] = []
        self._closed = False

    def start(self) -> None:
        with self._lock:
            while len(self._idle) < self.spare and not self._closed:
                self._idle.append(WorkerProcess(self._ctx, self.spec, self.threads))

    def take(self) -> WorkerProcess:
        """A loaded worker (waits while the spare one still loads)."""
        with self._lock:
            if self._closed:
                raise EngineError("the server is shutting down")
            worker = self._idle.pop(0) if self._idle else WorkerProcess(self._ctx, self.spec, self.threads)
        self.start()  # its replacement loads while this one serves
        worker.wait_loaded()
        return worker

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


class RemoteSession(SessionHandle):
    """A session running in a worker process (see the module docstring).

    Args:
        worker: a loaded worker from ``WorkerPool.take``; the session owns it from here on.
        character, seed, cfg, text, jpeg_quality: the session to start in it.
    Raises:
        EngineError: the worker refused the session (e.g. a reference the engine cannot perform), with its
            message, or did not start it in time.
    """

    def __init__(self, worker: WorkerProcess, character: Character, seed: int, cfg: SessionConfig, text: str,
                 jpeg_quality: int = 85) -> None:
        super().__init__()
        self.worker, self.conn = worker, worker.conn
        self._send_lock = threading.Lock()
        self._frames: queue.Queue = queue.Queue(maxsize=FRAME_BUFFER)
        self._events: list[dict] = []
        self._stats: dict = {}
        self._state_lock = threading.Lock()
        self._replies: dict[int, tuple[threading.Event, list]] = {}
        self._ids = itertools.count()
        self._closed = False
        self._send(("start", character, seed, cfg, text, jpeg_quality))
        if not self.conn.poll(START_TIMEOUT_S):
            worker.kill()
            raise EngineError(f"the session did not start within {START_TIMEOUT_S:g} s")
        try:
            msg = self.conn.recv()
        except EOFError:
            raise EngineError(f"the session worker exited (code {worker.process.exitcode})") from None
        if msg[0] != "ready":
            worker.kill()
            raise EngineError(msg[1] if msg[0] == "refused" else f"unexpected worker message {msg[0]!r}")
        self.info: SessionInfo = msg[1]
        self._reader = threading.Thread(target=self._read, name="lpm-worker-reader", daemon=True)
        self._reader.start()

    # ---- the worker's messages ----
    def _read(self) -> None:
        ended = False
        try:
            while True:
                msg = self.conn.recv()
                kind = msg[0]
                if kind == "frame":
                    try:
                        self._frames.put_nowait(msg[1])
                    except queue.Full:  # the server's pump stalled: drop, count
                        self.count_dropped(1)
                elif kind == "status":
                    with self._state_lock:
                        self._events.extend(msg[1])
                        self._stats = msg[2]
                elif kind == "reply":
                    waiter = self._replies.pop(msg[1], None)
                    if waiter is not None:
                        waiter[1].append(msg[2])
                        waiter[0].set()
                elif kind == "end":
                    ended = True
                    break
        except (EOFError, OSError):
            pass
        finally:
            if not ended and not self._closed:  # the worker died (killed, out of memory): say so, end the frames
                self.worker.process.join(1.0)
                with self._state_lock:
                    self._events.append({"type": "error", "message": "the session's worker process ended "
                                         f"unexpectedly (exit code {self.worker.process.exitcode})"})
            self._end_frames()

    def _end_frames(self) -> None:
        while True:
            try:
                self._frames.put_nowait(None)
                return
            except queue.Full:
                try:
                    self._frames.get_nowait()
                except queue.Empty:
                    pass

    # ---- requests ----
    def _send(self, item: tuple) -> None:
        try:
            with self._send_lock:
                self.conn.send(item)
        except (OSError, ValueError):
            raise EngineError("the session's worker process has ended") from None

    def _request(self, make: Any) -> Any:
        """Send ``make(reply_id)`` and wait for the worker's answer."""
        reply_id, done, box = next(self._ids), threading.Event(), []
        self._replies[reply_id] = (done, box)
        self._send(make(reply_id))
        if not done.wait(REPLY_TIMEOUT_S):
            self._replies.pop(reply_id, None)
            raise EngineError(f"the session's worker did not answer within {REPLY_TIMEOUT_S:g} s")
        return box[0]

    def push_self_audio(self, pcm: np.ndarray, native: bool = False, want_start: bool = False) -> float | None:
        pcm = np.ascontiguousarray(pcm, np.float32)
        if want_start:
            return self._request(lambda rid: ("self", pcm, native, rid))
        self._send(("self", pcm, native, None))
        return None

    def push_partner_audio(self, pcm: np.ndarray, native: bool = False) -> None:
        self._send(("partner", np.ascontiguousarray(pcm, np.float32), native))

    def set_text(self, text: str) -> None:
        self._send(("text", str(text)))

    def cancel_speech(self) -> float:
        return self._request(lambda rid: ("cancel", rid))

    def encoded_frames(self) -> Iterator[bytes]:
        while True:
            item = self._frames.get()
            if item is None:
                return
            yield item

    def events(self) -> list[dict]:
        with self._state_lock:
            out, self._events = self._events, []
        return out

    def snapshot(self) -> dict:
        with self._state_lock:
            snap = dict(self._stats)
        snap["dropped"] = snap.get("dropped", 0) + self._server_dropped()
        return snap

    @property
    def pid(self) -> int | None:
        return self.worker.process.pid

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._send(("stop",))
        except EngineError:
            pass
        self.worker.join(5.0)
        self._reader.join(2.0)
        self.conn.close()
