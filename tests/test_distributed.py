"""FSDP2 over two CPU processes (gloo) gives the single-process loss on the same global batch, before and
after one optimizer step."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from base_fixtures import MICRO, make_dataset, make_vae
from lpm.training.base_trainer import BaseTrainer, load_base_config
from lpm.training.distributed import close_group, free_port

WORLD = 2
# Tolerances: the sharded forward is the same maths, summed in another order (fp32 round-off); after one
# AdamW step (whose first update is nearly sign(g) * lr) round-off in tiny gradients can flip a few elements.
LOSS_TOL = 1e-5
STEP_TOL = 1e-4
EXTRA = ["lr=1e-3", "warmup_steps=0", "batch=4"]


def _losses(data: Path, vae: Path, run: Path, cache: Path) -> list[float]:
    cfg = load_base_config("tiny", None, [*MICRO, *EXTRA, f"cache_dir={cache}"])
    trainer = BaseTrainer(cfg, data, str(vae), run)
    trainer.setup()
    for group in trainer.opt.param_groups:
        group["lr"] = trainer.lr_at(1)
    before = trainer.batch_loss(1)
    step = trainer.train_step(1)["loss"]
    after = trainer.batch_loss(2)
    return [before, step, after]


def _worker(rank: int, port: int, data: Path, vae: Path, run: Path, cache: Path, out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    losses = _losses(data, vae, run, cache)
    close_group()
    if rank == 0:
        out.write_text(" ".join(repr(v) for v in losses))


def test_fsdp_two_processes_match_single_process(tmp_path):
    data, vae = make_dataset(tmp_path / "data"), make_vae(tmp_path / "vae.safetensors")
    cache = tmp_path / "cache"
    single = _losses(data, vae, tmp_path / "single", cache)  # also fills the latent cache
    out = tmp_path / "dist.txt"
    mp.spawn(_worker, args=(free_port(), data, vae, tmp_path / "dist", cache, out), nprocs=WORLD)
    dist = [float(v) for v in out.read_text().split()]
    assert abs(dist[0] - single[0]) <= LOSS_TOL * abs(single[0]), (dist, single)
    assert abs(dist[1] - single[1]) <= LOSS_TOL * abs(single[1]), (dist, single)
    assert abs(dist[2] - single[2]) <= STEP_TOL * abs(single[2]), (dist, single)
    assert single[2] != single[0]  # the step changed the weights
