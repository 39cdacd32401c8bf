"""``StagedEngine``: a session on rank 0 whose engine stages after the first run on the other ranks of the job
(``lpm.parallel.stages``): the generator on rank 0's device, the refiner on rank 1's, the decoder on the last.

Rank 0 keeps everything a ``Session`` touches (the audio, the clock, skips, the generator's KV cache and its deferred
commit), so skips and commits stay local; a generated chunk goes down the bounded links and its frames come back.
In rank 0's session pipeline the engine shows two stages: ``generate`` (make the chunk, hand it to rank 1) and
``remote`` (wait for its frames from the last rank), so up to the links' capacity of chunks are in flight while the
generator makes the next. The other ranks call ``serve_stages`` with an identical engine.
"""

from __future__ import annotations

from typing import Any

import torch

from lpm.errors import LpmError
from lpm.parallel.stages import END, StagedPipeline
from lpm.runtime.engines import ChunkInput, Engine, Stage


class StagedEngine(Engine):
    """Rank 0's view of ``engine`` with its stages spread one per rank.

    Args:
        engine: the engine (every rank builds the same one: same weights, seeds, references).
        capacity: each link's bound (chunks in flight per link and queued per receiver).
        device: rank 0's device.
    """

    def __init__(self, engine: Engine, capacity: int = 2, device: torch.device | str = "cpu") -> None:
        self.engine = engine
        self.name, self.frames_per_chunk = engine.name, engine.frames_per_chunk
        self.lookahead_frames, self.resolution = engine.lookahead_frames, engine.resolution
        self.compute_budget_s = engine.compute_budget_s
        self.pipe = StagedPipeline(engine.stages(), capacity, device)
        if self.pipe.rank != 0:
            raise LpmError(f"rank {self.pipe.rank} serves a stage (serve_stages); rank 0 runs the session")
        self.pipe.incoming.start_receiving()
        self._sent = 0
        self._closed = False

    def stages(self) -> list[Stage]:
        name, first = self.engine.stages()[0]

        def send(chunk: ChunkInput, timings: dict[str, float]) -> int:
            index = self._sent
            self.pipe.outgoing.put((index, first(chunk, timings)))
            self._sent += 1
            return index

        def receive(index: int, timings: dict[str, float]) -> Any:
            item = self.pipe.incoming.get()
            if item is END or item[0] != index:
                raise LpmError(f"the stage ranks returned {item if item is END else item[0]} for chunk {index}")
            return item[1]

        return [(name, send), ("remote", receive)]

    def skip(self, chunk: ChunkInput) -> None:
        self.engine.skip(chunk)

    def settle(self, timings: dict[str, float]) -> None:
        self.engine.settle(timings)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pipe.outgoing.put(END)  # the other ranks pass it on and stop; it comes back to us last
            while self.pipe.incoming.get() is not END:
                pass
            self.pipe.incoming.join()
        self.engine.close()


def serve_stages(engine: Engine, capacity: int = 2, device: torch.device | str = "cpu") -> None:
    """Ranks > 0: run this rank's stage of ``engine`` on what rank 0's ``StagedEngine`` sends, until it ends."""
    pipe = StagedPipeline(engine.stages(), capacity, device)
    if pipe.rank == 0:
        raise LpmError("rank 0 runs the session (StagedEngine); serve_stages runs on the other ranks")
    for _ in pipe.run():
        pass
    engine.close()
