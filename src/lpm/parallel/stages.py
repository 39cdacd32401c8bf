"""A staged pipeline across ranks: stage ``i`` of an engine (generator -> refiner -> VAE decode) runs on rank ``i``,
chunks flow ``0 -> 1 -> ... -> P-1 -> 0`` over bounded links, results come back to rank 0 in order.

LPM 1.0 streams its 17B model by running generator, refiner and decoder on different GPUs: while the decoder
works on chunk ``k`` the refiner has ``k + 1`` and the generator ``k + 2``, so throughput is set by the slowest
stage, not their sum, and each stage's weights live on its own device. ``lpm.runtime.pipeline`` does the same
with threads on one device; here each stage owns a process (and a device).

Links are bounded queues over ``torch.distributed`` point-to-point messages, with credits: a sender may have at
most ``capacity`` items sent but not yet taken into the receiver's queue (itself of ``capacity``), so a slow stage
back-pressures the ones before it and nothing piles up. Each link owns two communicators (items one way, credits
back); on every rank each communicator is used by one thread only. The links are gloo groups even in an NCCL job:
what travels (a chunk's latents and conditioning, its frames) is small, goes through host memory, and arrives on the
receiving rank's device (``to_device``), never on the sender's.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from lpm.errors import LpmError

END = None  # the end-of-stream item


@dataclass
class StageRecord:
    """When a rank's stage worked on which chunk (``time.time()``, comparable across processes of one machine)."""

    stage: str
    spans: list[tuple[int, float, float]] = field(default_factory=list)  # (chunk index, start, end)


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor inside it (tuples, lists, dicts, dataclasses such as ``Conditioning``) on
    ``device``; anything else as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


class Link:
    """One direction of a bounded queue between two ranks (see the module docstring).

    Args:
        src, dst: the sending and the receiving rank.
        capacity: items in flight and items queued at the receiver, each at most this many.
        rank: this process's rank; the link is inert on ranks other than ``src`` and ``dst``.
        device: where received items are put (the receiving stage's device).
    """

    def __init__(self, src: int, dst: int, capacity: int, rank: int, device: torch.device | str = "cpu") -> None:
        if capacity < 1:
            raise LpmError(f"a link's capacity must be at least 1, got {capacity}")
        self.src, self.dst, self.capacity, self.rank, self.device = src, dst, capacity, rank, device
        # Every rank creates every group, in the same order (new_group is collective).
        self.items = dist.new_group([src, dst], backend="gloo")
        self.credits = dist.new_group([src, dst], backend="gloo")
        self._free = capacity  # sender side: credits held
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)  # receiver side
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # ---- sender ----
    def put(self, item: Any) -> None:
        """Send ``item`` (any picklable object; tensors travel inside it), waiting for a credit when none is held."""
        if self._free == 0:
            self._take_credit()
        self._free -= 1
        dist.send_object_list([to_device(item, "cpu")], dst=self.dst, group=self.items)
        if item is END:  # wait for the receiver to take everything (no credit is left unreceived)
            while self._free < self.capacity:
                self._take_credit()

    def _take_credit(self) -> None:
        credit = torch.zeros(1, dtype=torch.int64)
        dist.recv(credit, src=self.dst, group=self.credits)
        self._free += 1

    # ---- receiver ----
    def start_receiving(self) -> None:
        self._thread = threading.Thread(target=self._receive, name=f"lpm-link-{self.src}-{self.dst}", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        # A credit goes back without waiting (isend): the sender takes credits only when it runs out, and a blocking
        # send would hold this thread (and the items behind it) until then. At most ``capacity`` are in transit.
        credits: list[tuple[Any, torch.Tensor]] = []
        try:
            while True:
                box = [None]
                dist.recv_object_list(box, src=self.src, group=self.items)
                self._queue.put(box[0])  # blocks while the queue is full: the sender then runs out of credits
                credit = torch.ones(1, dtype=torch.int64)
                credits = [(w, c) for w, c in credits if not w.is_completed()]
                credits.append((dist.isend(credit, dst=self.src, group=self.credits), credit))
                if box[0] is END:  # the sender drains its credits after END: every one completes
                    for work, _ in credits:
                        work.wait()
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, never a silent hang
            self.error = e
            self._queue.put(END)

    def get(self) -> Any:
        """The next item (``END`` at the end of the stream)."""
        item = self._queue.get()
        if self.error is not None:
            raise LpmError(f"link {self.src} -> {self.dst} failed: {self.error}")
        return to_device(item, self.device)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


Stage = tuple[str, Callable[[Any, dict[str, float]], Any]]  # as lpm.runtime.engines.Stage


class StagedPipeline:
    """Rank ``i`` of a world of ``len(stages)`` runs ``stages[i]``; rank 0 feeds inputs and receives results.

    Args:
        stages: the engine's ordered stages (``Engine.stages()``), the same list on every rank.
        capacity: each link's bound.
        device: this rank's device (received payloads are moved there).
    """

    def __init__(self, stages: list[Stage], capacity: int = 2, device: torch.device | str = "cpu") -> None:
        if not dist.is_initialized():
            raise LpmError("a staged pipeline runs under torchrun (or an initialised process group)")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if len(stages) != self.world:
            raise LpmError(f"{len(stages)} stages ({', '.join(n for n, _ in stages)}) need {len(stages)} "
                           f"processes, the job has {self.world}")
        self.name, self.fn = stages[self.rank]
        self.links = [Link(i, (i + 1) % self.world, capacity, self.rank, device) for i in range(self.world)]
        self.record = StageRecord(self.name)

    @property
    def incoming(self) -> Link:
        return self.links[(self.rank - 1) % self.world]

    @property
    def outgoing(self) -> Link:
        return self.links[self.rank]

    def _work(self, index: int, payload: Any) -> Any:
        start = time.time()
        out = self.fn(payload, {})
        self.record.spans.append((index, start, time.time()))
        return out

    def run(self, inputs: Iterable[Any] | None = None) -> Iterator[Any]:
        """Rank 0: yields the last stage's outputs for ``inputs`` in order. Other ranks: serve until the end
        (yields nothing; pass no inputs)."""
        self.incoming.start_receiving()
        if self.rank != 0:
            self._serve()
            return
        feeder_error: list[BaseException] = []

        def feed() -> None:
            try:
                for index, payload in enumerate(inputs or ()):
                    self.outgoing.put((index, self._work(index, payload)))
            except BaseException as e:  # noqa: BLE001 - reported by run() after the stream ends
                feeder_error.append(e)
            finally:
                self.outgoing.put(END)

        feeder = threading.Thread(target=feed, name="lpm-stage-feeder", daemon=True)
        feeder.start()
        while (item := self.incoming.get()) is not END:
            yield item[1]
        feeder.join()
        self.incoming.join()
        if feeder_error:
            raise LpmError(f"stage {self.name} failed: {feeder_error[0]}") from feeder_error[0]

    def _serve(self) -> None:
        try:
            while (item := self.incoming.get()) is not END:
                index, payload = item
                self.outgoing.put((index, self._work(index, payload)))
        finally:
            self.outgoing.put(END)
            self.incoming.join()
