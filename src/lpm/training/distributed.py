"""Multi-process training: torchrun environment, FSDP2 sharding, and full-state gathering for checkpoints.

``torchrun --nproc_per_node N lpm train base ...`` sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` /
``MASTER_ADDR`` / ``MASTER_PORT``; ``init_distributed`` reads them (gloo on CPU, nccl on CUDA). A plain
``lpm train base`` is a world of one and never touches ``torch.distributed``.

Sharding is FSDP2 (``torch.distributed.fsdp.fully_shard``): every DiT block is its own unit (its parameters
are gathered just before its forward and freed after), then the root module takes the rest (embedders, text
and audio encoders, head). Gradients are averaged over ranks by FSDP's reduce-scatter, so a global batch split
across ranks gives the gradient of the whole batch's mean loss.
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0  # global rank
    world_size: int = 1  # number of processes
    local_rank: int = 0  # rank on this machine (selects the CUDA device)
    device: str = "cpu"  # the device this rank trains on

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and samples."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the process group described by torchrun's environment, or return a world of one.

    Args:
        device: ``cpu`` (gloo) or ``cuda`` (nccl; each rank takes ``cuda:LOCAL_RANK``).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def free_port() -> int:
    """A TCP port free on the loopback now (a local group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def close_group() -> None:
    """Leave the default process group, if any, after a barrier: a rank that tears gloo down while another still
    has a collective in flight can die with "terminate called without an active exception" (SIGABRT)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shutdown(info: DistInfo) -> None:
    if info.distributed:
        close_group()


def shard_model(model: nn.Module, blocks: nn.ModuleList, info: DistInfo) -> nn.Module:
    """FSDP2: ``fully_shard`` each of ``blocks``, then ``model`` (the root). A no-op for a world of one."""
    if not info.distributed:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # FSDP2 warns that a block returns a view (an in-place op on it would skip the pre-backward hook). The DiT
    # never modifies a block's output in place; tests/test_distributed.py checks the gradients through a step.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(torch.device(info.device).type, (info.world_size,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP-sharded) parameter or state; a collective for DTensors."""
    if hasattr(t, "full_tensor"):
        return t.full_tensor()
    return t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``like`` (a DTensor shard of the same global shape, or a plain tensor)."""
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full.to(like.device, like.dtype)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU (every rank must call it; all get the full tensors)."""
    return {k: full_tensor(v).detach().cpu() for k, v in model.state_dict().items()}


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full tensors into a (possibly sharded) model, strictly."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(f"state dict does not fit: missing {missing[:8]}, unexpected {unexpected[:8]}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(shard_like(state[k], v))


def all_mean(value: float, info: DistInfo) -> float:
    """Mean of a scalar over ranks (for logging the global-batch loss)."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.item() / info.world_size


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
