"""A live session over a sequence-parallel job: rank 0 runs the ``Session`` (audio in, clock, skips, frames out),
the other ranks follow it call for call.

A sequence-parallel engine needs every rank to run the same model calls in the same order, but only rank 0 has
the client's audio and only its clock decides which chunks are skipped. ``LeaderEngine`` wraps rank 0's engine:
every call of the first stage that runs model forwards (a chunk, a skipped chunk's audio, the deferred commit) is
first announced to the other ranks over a control communicator, with its ``ChunkInput``. ``follow`` runs on the
other ranks: it makes the announced calls on an identical engine (same weights, seeds and references) in the
announced order, the later stages in their own threads as the runtime's pipeline does (so the refiner's
collectives pair with rank 0's refiner thread), and never the last stage: it turns latents into frames, runs no
collective and its frames would be thrown away.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import torch.distributed as dist

from lpm.errors import LpmError
from lpm.parallel.group import SequenceGroup
from lpm.runtime.engines import ChunkInput, Engine, Stage

CHUNK, SKIP, SETTLE, END = "chunk", "skip", "settle", "end"


class LeaderEngine(Engine):
    """Rank 0's engine: ``engine``'s stages, with its first stage's calls announced to ``follow``ers.

    Args:
        engine: rank 0's engine (its model a ``SequenceParallelDiT`` over ``group``).
        group: the sequence-parallel group; its ``control`` communicator carries the announcements.
    """

    def __init__(self, engine: Engine, group: SequenceGroup) -> None:
        if not group.is_main:
            raise LpmError(f"the leader is rank 0; rank {group.rank} follows (lpm.parallel.follow.follow)")
        self.engine, self.group = engine, group
        self.name, self.frames_per_chunk = engine.name, engine.frames_per_chunk
        self.lookahead_frames, self.resolution = engine.lookahead_frames, engine.resolution
        self.compute_budget_s = engine.compute_budget_s
        self._closed = False

    def _announce(self, kind: str, chunk: ChunkInput | None = None) -> None:
        if self.group.world_size > 1:
            dist.broadcast_object_list([(kind, chunk)], src=0, group=self.group.control)

    def stages(self) -> list[Stage]:
        stages = self.engine.stages()
        name, first = stages[0]

        def lead(chunk: ChunkInput, timings: dict[str, float]) -> Any:
            self._announce(CHUNK, chunk)
            return first(chunk, timings)

        return [(name, lead), *stages[1:]]

    def frame_stream(self):
        return self.engine.frame_stream()  # the last stage runs on rank 0 alone: nothing to announce

    def skip(self, chunk: ChunkInput) -> None:
        self._announce(SKIP, chunk)
        self.engine.skip(chunk)

    def settle(self, timings: dict[str, float]) -> None:
        self._announce(SETTLE)
        self.engine.settle(timings)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._announce(END)
        self.engine.close()


def follow(engine: Engine, group: SequenceGroup, queue_chunks: int = 2) -> int:
    """Ranks > 0: run what rank 0's ``LeaderEngine`` announces on ``engine`` until it closes.

    Returns:
        the number of chunks generated (skipped ones not counted).
    """
    if group.is_main:
        raise LpmError("rank 0 leads (LeaderEngine); follow runs on the other ranks")
    stages = engine.stages()[:-1]  # the last stage makes frames: rank 0's alone
    queues = [queue.Queue(maxsize=queue_chunks) for _ in stages[1:]]
    errors: list[BaseException] = []

    def run(fn, q_in: queue.Queue, q_out: queue.Queue | None) -> None:
        while (payload := q_in.get()) is not None:
            if not errors:
                try:
                    payload = fn(payload, {})
                except BaseException as e:  # noqa: BLE001 - reported after the session ends
                    errors.append(e)
            if q_out is not None:
                q_out.put(payload)
        if q_out is not None:
            q_out.put(None)

    threads = [threading.Thread(target=run, args=(fn, queues[i], queues[i + 1] if i + 1 < len(queues) else None),
                                name=f"lpm-follow-{name}", daemon=True) for i, (name, fn) in enumerate(stages[1:])]
    for t in threads:
        t.start()
    generated = 0
    try:
        while True:
            box: list = [None]
            dist.broadcast_object_list(box, src=0, group=group.control)
            kind, chunk = box[0]
            if kind == END:
                break
            if kind == CHUNK:
                payload = stages[0][1](chunk, {})
                generated += 1
                if queues:
                    queues[0].put(payload)
            elif kind == SKIP:
                engine.skip(chunk)
            elif kind == SETTLE:
                engine.settle({})
            else:
                raise LpmError(f"unknown announcement {kind!r} from rank 0")
    finally:
        if queues:
            queues[0].put(None)
        for t in threads:
            t.join()
        engine.close()
    if errors:
        raise LpmError(f"rank {group.rank} failed following rank 0: {errors[0]}") from errors[0]
    return generated
