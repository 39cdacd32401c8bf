"""A served session over several processes: its DiT split over ``EngineSpec.ranks`` ranks (sequence parallel).

``lpm serve --ranks N`` gives every session worker (``lpm.serve.worker``) N - 1 follower processes, spawned with it
by the server and joined with it into one process group (gloo on CPU, NCCL on CUDA; rank ``r`` takes ``cuda:r``).
The worker is rank 0: it holds the client's audio and the session's clock, and runs the ``Session`` on a
``LeaderEngine`` (``lpm.runtime.follow``) that announces every chunk, skipped chunk and commit to the followers.
Each follower loads the same weights, waits for the session's character and seed, builds the same engine and
``follow``s rank 0 call for call until the session closes.

Wire (over the group's gloo ``control`` communicator, ``broadcast_object_list`` from rank 0):
- after every rank has loaded its weights: a barrier, then rank 0 tells the server ``loaded``;
- ``(START, character, seed)`` when a client starts the session, or ``(QUIT,)`` when the worker ends unused;
- then ``lpm.runtime.follow``'s announcements until its ``END``.

If a follower fails to build its engine, rank 0's first collective waits: the server's start timeout
(``START_TIMEOUT_S``) then refuses the session and kills the worker with its followers.
"""

from __future__ import annotations

import os
import sys
from typing import Any

START, QUIT = "start", "quit"


def join_group(rank: int, world: int, port: int, device: str):
    """This process's place in a session's group (every rank calls it; it blocks until all have)."""
    from lpm.parallel import init_sequence_group

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    return init_sequence_group(device)


def loaded_barrier(group) -> None:
    """Every rank has its weights."""
    import torch.distributed as dist

    dist.barrier(group=group.control)


def announce(group, message: tuple) -> None:
    """Rank 0 -> the followers."""
    import torch.distributed as dist

    dist.broadcast_object_list([message], src=0, group=group.control)


def listen(group) -> tuple:
    """A follower: the next message from rank 0."""
    import torch.distributed as dist

    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0, group=group.control)
    return box[0]


def leave(group) -> None:
    from lpm.training.distributed import close_group

    close_group()


def follower_main(rank: int, world: int, port: int, spec, threads: int) -> None:
    """A follower process: join the group, load, wait for the session, follow rank 0 until it ends."""
    import torch

    from lpm.runtime.follow import follow
    from lpm.serve.manager import EngineFactory

    torch.set_num_threads(max(1, threads))
    group = join_group(rank, world, port, spec.dit.device)
    try:
        factory = EngineFactory(spec)
        factory.preload()
        loaded_barrier(group)
        message = listen(group)
        if message[0] != START:
            return
        _, character, seed = message
        follow(factory.build(character, seed=seed, group=group), group)
    except Exception as e:  # noqa: BLE001 - said on stderr; rank 0's session times out and is refused
        print(f"lpm serve: session follower rank {rank} failed: {e}", file=sys.stderr, flush=True)
        raise
    finally:
        leave(group)
