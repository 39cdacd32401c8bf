"""Stage threads joined by bounded queues, and the paced emitter that releases frames on a 24 fps clock.

``Pipeline`` runs an engine's stages (``Engine.stages``) one thread each: while the decoder works on chunk
``k`` the generator already works on ``k + 1``, so throughput is set by the slowest stage, not their sum.
Queues hold at most ``queue_chunks`` items, so a slow stage back-pressures the ones before it instead of
letting work (and latency) pile up. Stages of different chunks run concurrently; torch releases the GIL in
its kernels, which is what makes threads enough here.

An engine whose last stage can hand frames on one at a time (``Engine.frame_stream``: the DiT engine decodes
latent frame by latent frame) gets a ``FrameFeed`` passed on before that stage starts: the emitter shows each
frame as soon as it is decoded instead of when the chunk's last one is, so a chunk's first frame (the one whose
audio waited longest) no longer waits for the decoding of the other three.

``Emitter`` shows frame ``i`` at wall time ``t0 + delay_s + i / fps`` (realtime) or as soon as it exists
(offline). A frame that arrives after its slot plus ``LATE_TOLERANCE_FRAMES`` is dropped and counted, so the
screen holds the previous frame and the stream catches up instead of drifting later and later; the last frame
of a late chunk is shown anyway (late), so an engine slower than the clock allows still updates the screen.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lpm.runtime.engines import ChunkInput, Stage
from lpm.runtime.stats import SessionStats

LATE_TOLERANCE_FRAMES = 1.0  # a frame may leave up to this many frame periods after its slot
POLL_S = 0.05  # how often blocked queue operations look at the stop flag


@dataclass
class Work:
    """One chunk travelling through the stages: its input, the current payload and per-stage timings."""

    chunk: ChunkInput
    payload: Any
    timings_ms: dict[str, float] = field(default_factory=dict)
    started: float = 0.0  # time.monotonic() when the first stage began it
    finished: float = 0.0  # time.monotonic() when the last stage ended it


class Stopped(Exception):
    """Raised inside a stage thread when the pipeline is closing."""


class FrameFeed:
    """A chunk's frames as the streamed last stage makes them: ``push`` (stage thread), iterate (emitter).

    Args:
        expected: frames the chunk has (``len``; the emitter treats the last one specially).
        stop: the pipeline's stop flag (a blocked reader gives up when it is set).
    """

    def __init__(self, expected: int, stop: threading.Event) -> None:
        self.expected, self.stop = expected, stop
        self.ready: list[float] = []  # time.monotonic() when each frame was pushed
        self._queue: queue.Queue = queue.Queue()

    def __len__(self) -> int:
        return self.expected

    def push(self, frame: np.ndarray) -> None:
        self.ready.append(time.monotonic())
        self._queue.put(frame)

    def close(self) -> None:
        """No more frames (all made, or the stage failed)."""
        self._queue.put(None)

    def __iter__(self):
        while True:
            frame = get(self._queue, self.stop)
            if frame is None:
                return
            yield frame


def frame_lead(work: Work, fps: int) -> float:
    """How early a chunk's compute must start for every frame to be ready at its slot, relative to the first
    frame's slot: ``max_j(ready_j - started - j / fps)``. A chunk whose frames came at once: ``finished -
    started``; a streamed one: about the first frame's time."""
    if isinstance(work.payload, FrameFeed) and work.payload.ready:
        return max(t - work.started - j / fps for j, t in enumerate(work.payload.ready))
    return work.finished - work.started


def put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    """Blocking put that gives up when ``stop`` is set (bounded queues: back-pressure, never growth)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL_S)
            return
        except queue.Full:
            continue
    raise Stopped


def get(q: queue.Queue, stop: threading.Event) -> Any:
    """Blocking get that gives up when ``stop`` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            continue
    raise Stopped


class Pipeline:
    """Stage threads between ``inputs`` (``Work`` items or None = end) and ``outputs`` (frames, or None).

    Args:
        stages: the engine's ordered stages.
        stats: receives per-stage milliseconds.
        queue_chunks: capacity of every queue between stages.
        on_error: called with the exception if a stage fails (the pipeline then ends its output).
        skip: the first stage calls it on a chunk marked ``skip`` (its audio is ingested, nothing is made).
        should_skip: asked by the first stage just before it starts a chunk (the latest moment to decide
            that the chunk would be late anyway); True marks the chunk ``skip``.
        settle: the first stage calls it (``Engine.settle``) right after handing a chunk on; its timings
            (``stage.part`` -> ms) go to ``stats``.
        stream_last: the last stage as a generator of single frames (``Engine.frame_stream``), used in its
            place with a ``FrameFeed`` of ``frames_per_chunk`` frames; None: the last stage's frames go on at once.
    """

    def __init__(self, stages: list[Stage], stats: SessionStats, queue_chunks: int = 2,
                 on_error: Callable[[BaseException], None] | None = None,
                 skip: Callable[[ChunkInput], None] | None = None,
                 should_skip: Callable[[ChunkInput], bool] | None = None,
                 settle: Callable[[dict[str, float]], None] | None = None,
                 stream_last: Callable[[Any, dict[str, float]], Iterator[np.ndarray]] | None = None,
                 frames_per_chunk: int = 0) -> None:
        if stream_last is not None and frames_per_chunk < 1:
            raise ValueError("a streamed last stage needs frames_per_chunk")
        self.stream_last, self.frames_per_chunk = stream_last, frames_per_chunk
        self.stats = stats
        self.skip, self.should_skip, self.settle = skip, should_skip, settle
        self.stop = threading.Event()
        self.on_error = on_error
        self.queues = [queue.Queue(maxsize=queue_chunks) for _ in range(len(stages) + 1)]
        self.threads = [
            threading.Thread(target=self._run, name=f"lpm-stage-{name}", daemon=True,
                             args=(name, fn, self.queues[i], self.queues[i + 1], i == 0, i == len(stages) - 1))
            for i, (name, fn) in enumerate(stages)
        ]

    @property
    def inputs(self) -> queue.Queue:
        return self.queues[0]

    @property
    def outputs(self) -> queue.Queue:
        return self.queues[-1]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, name: str, fn, q_in: queue.Queue, q_out: queue.Queue, first: bool, last: bool) -> None:
        try:
            while True:
                work = get(q_in, self.stop)
                if work is None:  # end of stream: pass it on
                    put(q_out, None, self.stop)
                    return
                if first and not work.chunk.skip and self.should_skip is not None:
                    work.chunk.skip = self.should_skip(work.chunk)
                if first and work.chunk.skip:
                    if self.skip is not None:
                        self.skip(work.chunk)
                    continue
                if first:
                    work.started = time.monotonic()
                    self.stats.add(chunks=1)
                start = time.perf_counter()
                if last and self.stream_last is not None:
                    self._stream(work, q_out)
                    ms = (time.perf_counter() - start) * 1000
                    work.timings_ms.setdefault(name, ms)
                    self.stats.record_stage(name, ms)
                    continue
                work.payload = fn(work.payload, work.timings_ms)
                ms = (time.perf_counter() - start) * 1000
                work.timings_ms.setdefault(name, ms)
                if last:
                    work.finished = time.monotonic()
                self.stats.record_stage(name, ms)
                for sub, sub_ms in work.timings_ms.items():
                    if sub.startswith(f"{name}."):
                        self.stats.record_stage(sub, sub_ms)
                put(q_out, work, self.stop)
                if first and self.settle is not None:
                    settled: dict[str, float] = {}
                    self.settle(settled)
                    for sub, sub_ms in settled.items():
                        self.stats.record_stage(sub, sub_ms)
        except Stopped:
            return
        except BaseException as e:  # noqa: BLE001 - a failing stage ends the session with a message
            if self.on_error is not None:
                self.on_error(e)
            try:
                put(q_out, None, self.stop)
            except Stopped:
                return

    def _stream(self, work: Work, q_out: queue.Queue) -> None:
        """The streamed last stage: the chunk goes on with an empty ``FrameFeed`` that fills frame by frame."""
        payload, feed = work.payload, FrameFeed(self.frames_per_chunk, self.stop)
        work.payload = feed
        put(q_out, work, self.stop)
        try:
            for frame in self.stream_last(payload, work.timings_ms):
                feed.push(frame)
        finally:
            work.finished = time.monotonic()
            feed.close()

    def close(self, timeout: float = 2.0) -> None:
        self.stop.set()
        for t in self.threads:
            if t.ident is not None and t is not threading.current_thread():  # started, and not us
                t.join(timeout)


class Emitter:
    """Releases ``(timestamp_s, frame, latency_s)`` on the media clock into ``out`` (see the module docstring).

    Args:
        fps: media frame rate.
        realtime: pace frames on the wall clock (True) or release them as they come (offline).
        t0: wall time (``time.monotonic``) of media time 0; ``delay_s`` is added to every slot.
        out: the session's frame queue; None marks the end.
    """

    def __init__(self, source: queue.Queue, out: queue.Queue, stats: SessionStats, stop: threading.Event,
                 fps: int, realtime: bool, t0: float, delay_s: float,
                 on_compute_latency: Callable[[float, float], None] | None = None) -> None:
        self.source, self.out, self.stats, self.stop = source, out, stats, stop
        self.fps, self.realtime, self.t0, self.delay_s = fps, realtime, t0, delay_s
        self.on_compute_latency = on_compute_latency
        self.thread = threading.Thread(target=self._run, name="lpm-emitter", daemon=True)

    def slot(self, frame: int) -> float:
        """Wall time at which media frame ``frame`` is due."""
        return self.t0 + self.delay_s + frame / self.fps

    def start(self) -> None:
        self.thread.start()

    def _emit(self, frame_index: int, image: np.ndarray, ready_wall: float) -> None:
        now = time.monotonic()
        item = (frame_index / self.fps, image)
        if self.realtime:
            try:
                self.out.put_nowait(item)  # a reader that stalls loses frames, never the clock
            except queue.Full:
                self.stats.add(dropped=1)
                return
        else:
            put(self.out, item, self.stop)  # offline: every frame, at the reader's pace
        # Realtime: from the frame's media moment (its audio was due at t0 + i / fps) to its release, the latency a
        # client measures less JPEG and transport; offline (no media clock): from its chunk's last audio sample.
        since = self.t0 + frame_index / self.fps if self.realtime else ready_wall
        self.stats.record_frame(now, now - since)

    def _run(self) -> None:
        try:
            while True:
                work = get(self.source, self.stop)
                if work is None:
                    break
                chunk = work.chunk
                for i, image in enumerate(work.payload):
                    index = chunk.first_frame + i
                    if self.realtime:
                        lateness = time.monotonic() - self.slot(index)
                        if lateness > LATE_TOLERANCE_FRAMES / self.fps and i < len(work.payload) - 1:
                            self.stats.add(dropped=1)  # the screen holds the previous frame until the chunk's last
                            continue
                        if lateness < 0:
                            if self.stop.wait(-lateness):
                                raise Stopped
                    self._emit(index, image, chunk.ready_wall)
                if self.on_compute_latency is not None:  # the stages' time, without queueing before or after
                    self.on_compute_latency(work.finished - work.started, frame_lead(work, self.fps))
        except Stopped:
            pass
        finally:
            self._end()

    def _end(self) -> None:
        """Put the end marker, making room in a full queue (a reader that left must not block this)."""
        while True:
            try:
                self.out.put_nowait(None)
                return
            except queue.Full:
                try:
                    self.out.get_nowait()
                except queue.Empty:
                    pass

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)
