"""Independent per-item jobs (one world clip, one source file, one clip's latents) as Ray tasks.

``lpm world synth``, ``lpm data ingest`` and ``lpm data cache`` take ``--ray auto|ADDRESS``: each item becomes a
Ray task calling the very function the local run calls, so a Ray run writes exactly what a local run writes. Items
are atomic on disk (a clip is complete once its ``meta.json`` / its cache file / its source marker is in place) and
the callers hand Ray only the items not complete yet, so a rerun after a crash or a preempted node skips the
finished ones. The driver keeps at most ``max_in_flight`` tasks submitted, so a 31M-clip plan does not become
31M pending tasks at once.

``auto`` connects to the Ray cluster this machine belongs to (``RAY_ADDRESS`` or a running ``ray start``) and
starts a local one when there is none; ``ADDRESS`` is a cluster's ``host:port`` or ``ray://host:port``. A
connection already open in this process is reused (and left open). Ray is an optional extra: ``pip install
'.[scale]'``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from lpm.errors import LpmError

RAY_HELP = ("run as Ray tasks: 'auto' (this machine's cluster, or a local one) or a cluster ADDRESS "
            "(host:port, ray://host:port); needs pip install '.[scale]'")


def import_ray() -> Any:
    """The ``ray`` module, or a clear error naming the extra that installs it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise LpmError("--ray needs the 'ray' package: pip install '.[scale]' (or pip install ray)") from None


@contextmanager
def ray_connection(address: str) -> Iterator[Any]:
    """Connect to Ray for the duration of the block (see the module docstring for ``address``)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=None if address == "auto" else address, log_to_driver=False,
                 include_dashboard=False, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise LpmError(f"--ray {address}: cannot connect to a Ray cluster: {e}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _call(fn: Callable[..., Any], threads: int, cwd: str, args: tuple) -> Any:
    """Run one item in a Ray worker: in the driver's working directory (where it exists: this machine or a shared
    file system), so relative paths mean what they mean to the driver and the files written equal a local run's,
    with the task's CPU share as torch's thread count."""
    import torch

    if os.path.isdir(cwd):
        os.chdir(cwd)
    torch.set_num_threads(max(1, threads))
    return fn(*args)


def ray_map(fn: Callable[..., Any], items: Iterable[tuple], address: str, num_cpus: int = 1,
            max_in_flight: int = 256) -> Iterator[Any]:
    """``fn(*item)`` for every item, each a Ray task of ``num_cpus`` CPUs; results in completion order.

    Args:
        fn: a module-level function (workers import it by name).
        items: argument tuples, one per task.
        address: ``auto`` or a cluster address.
        num_cpus: CPUs Ray reserves per task (and torch's thread count inside it).
        max_in_flight: tasks submitted and not yet collected, at most.
    Raises:
        LpmError: a task failed (the item and the worker's error are named).
    """
    cwd = os.getcwd()
    with ray_connection(address) as ray:
        task = ray.remote(num_cpus=num_cpus, max_retries=2)(_call)
        pending: dict[Any, tuple] = {}
        todo = iter(items)
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < max_in_flight:
                item = next(todo, None)
                if item is None:
                    exhausted = True
                    break
                pending[task.remote(fn, num_cpus, cwd, item)] = item
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(done[0])
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                raise LpmError(f"Ray task {fn.__name__}{item!r} failed: {getattr(e, 'cause', e)!r}") from None
