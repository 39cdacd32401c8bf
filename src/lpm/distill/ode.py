"""``lpm distill ode``: the causal student's initialisation by regression onto teacher ODE trajectories
(CausVid, Yin et al. 2025, Sec. 3.3: "student initialization" with ODE pairs).

1. Pairs: the teacher (bidirectional, with classifier-free guidance) integrates the flow ODE from noise with
   Euler on a grid that refines the student's (``teacher_steps_per_step`` teacher steps per student step);
   the states at the student's times and the end point are stored in ``RUN/pairs/pairs_XXXXX.safetensors``
   (one shard per ``pair_batch`` windows, written atomically: a killed run generates only what is missing).
   The CFG dropout of the Base trainer applies here too (per pair), so the student also learns the teacher's
   answer without a caption or with a silent voice.
2. Regression: each sample picks a chunk ``j`` and a student step ``i``; one block-causal forward gets the
   clean trajectory end before chunk ``j`` and the trajectory's state at ``times[i]`` from chunk ``j`` on
   (``lpm.distill.student.causal_inputs``: chunk ``j`` sees exactly what it sees when streaming); the loss is
   the face-weighted squared error of its clean prediction against the trajectory's end, on chunk ``j``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from lpm.config import ConfigError, load_config
from lpm.diffusion.cfg import GuidanceSpec, guided
from lpm.diffusion.flow import Batch
from lpm.diffusion.samplers import sample_euler
from lpm.distill.student import causal_inputs, face_weighted_error, rollout, teacher_grid
from lpm.distill.trainer import DistillConfig, DistillTrainer
from lpm.errors import LpmError
from lpm.fsutil import atomic_path
from lpm.training import distributed as D
from lpm.training.base_batches import Window
from lpm.training.vae_trainer import autocast

PAIR_SEED = 7919  # separates the pair draws from the training batches of the same seed
ROLLOUT_SEED = 104729  # separates the own-rollout draws (``own_rollout``) from them too
ODE_TARGETS = ("teacher", "data")


@dataclass
class OdeConfig(DistillConfig):
    """``lpm distill ode`` settings (the Base trainer's keys apply: batch, lr, frames, checkpoints, ...)."""

    steps: int = 400
    lr: float = 1e-4
    warmup_steps: int = 20
    ema_decay: float = 0.99
    sample_every: int = 0
    # Teacher trajectories to generate, and how many per teacher call.
    pairs: int = 128
    pair_batch: int = 4
    # Teacher Euler steps per student step (the teacher grid refines the student's).
    teacher_steps_per_step: int = 3
    # What the student regresses onto: ``teacher`` (the teacher's ODE trajectories, CausVid's ODE init) or ``data``
    # (the training windows' own latents, noised to the student's times, with clean earlier chunks: causal flow
    # matching at the student's few times, no teacher pass). ``data`` is for a student whose teacher lacks a path
    # it has (``reference_concat``): regressing onto the teacher's output would teach it the teacher's smear.
    target: str = "teacher"
    # Share of steps (``target=data`` only) whose loss regresses the student's own streamed rollout onto the data
    # (Self-Forcing's inputs: each chunk from noise through the KV cache, its context the student's own earlier
    # chunks, a later denoising step fed the student's own earlier prediction; the gradient through one step drawn
    # per rollout). The other steps see clean context and the data noised to the student's times, which is not
    # what streaming feeds the second step or the next chunk (exposure bias).
    own_rollout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target not in ODE_TARGETS:
            raise ConfigError(f"target must be one of {', '.join(ODE_TARGETS)}, got {self.target!r}")
        if not 0 <= self.own_rollout <= 1:
            raise ConfigError(f"own_rollout must be in [0, 1], got {self.own_rollout}")
        if self.own_rollout > 0 and self.target != "data":
            raise ConfigError("own_rollout regresses the student's rollouts onto the data: it needs target=data")
        if self.speech and self.target != "data":
            raise ConfigError("speech= gives the student another motion track than its teacher renders: use "
                              "target=data (regress onto the data, not the teacher's trajectories)")


@dataclass
class OdeLoss:
    """``loss`` (scalar) and ``per_sample (B,)``."""

    loss: torch.Tensor
    per_sample: torch.Tensor


class OdeDistiller(DistillTrainer):
    """One ODE-regression run (see the module docstring)."""

    stage = "ode"

    def setup(self) -> None:
        super().setup()
        if self.cfg.target == "teacher":
            self._ensure_pairs()

    # ---- pairs ----
    def _pair_path(self, shard: int) -> Path:
        return self.run_dir / "pairs" / f"pairs_{shard:05d}.safetensors"

    @torch.no_grad()
    def _generate_shard(self, shard: int) -> None:
        cfg, info = self.cfg, self.info
        rng = np.random.default_rng([cfg.seed, PAIR_SEED, shard])
        windows = self.sampler.windows(rng, cfg.pair_batch)
        drop = self.sampler.draw_dropout(rng, cfg.pair_batch)
        batch = self.sampler.assemble(windows, drop)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + PAIR_SEED * 1009 + shard)
        noise = torch.randn(batch.x_0.shape, generator=g)
        grid, index = teacher_grid(self.times, cfg.teacher_steps_per_step, cfg.flow.shift)
        keep = {i: None for i in index[1:-1]}  # grid indices of the student's inner times

        def remember(i: int, x: torch.Tensor, t: torch.Tensor) -> None:
            if i + 1 in keep:
                keep[i + 1] = x.cpu().clone()

        velocity = guided(self.flow.denoiser(self.teacher), GuidanceSpec(dict(cfg.guidance)))
        end = sample_euler(velocity, noise.to(info.device), grid.to(info.device), batch.cond.to(info.device),
                           callback=remember)
        states = torch.stack([noise, *(keep[i] for i in index[1:-1])], 1)  # (B, S, F, C, h, w)
        meta = {"windows": json.dumps([[w.clip.id, w.start] for w in windows]),
                "drop": json.dumps({k: v.tolist() for k, v in drop.items()}),
                "times": json.dumps(self.times), "guidance": json.dumps(dict(cfg.guidance))}
        with atomic_path(self._pair_path(shard), ".safetensors") as tmp:  # a kill never leaves half a shard
            save_file({"states": states.contiguous(), "x_0": end.cpu().contiguous()}, tmp, metadata=meta)

    def _ensure_pairs(self) -> None:
        cfg, info = self.cfg, self.info
        shards = math.ceil(cfg.pairs / cfg.pair_batch)
        mine = [s for s in range(shards) if s % info.world_size == info.rank and not self._pair_path(s).is_file()]
        self.teacher.eval()
        for s in tqdm(mine, desc="teacher ODE pairs", disable=not info.is_main or not mine, dynamic_ncols=True):
            self._generate_shard(s)
        D.barrier(info)
        by_id = {c.id: c for c in self.sampler.clips}
        states, ends, self.pair_windows, drops = [], [], [], {"text": [], "audio_self": [], "audio_partner": []}
        for s in range(shards):
            path = self._pair_path(s)
            with safe_open(str(path), "pt") as f:  # one read: metadata and tensors
                meta = f.metadata()
                tensors = {k: f.get_tensor(k) for k in ("states", "x_0")}
            if json.loads(meta["times"]) != self.times:
                raise LpmError(f"{path} holds pairs for student times {meta['times']}, this run uses {self.times}; "
                               "use another --out")
            for clip_id, start in json.loads(meta["windows"]):
                if clip_id not in by_id:
                    raise LpmError(f"{path}: clip {clip_id} is not in this run's training data")
                self.pair_windows.append(Window(by_id[clip_id], int(start)))
            for k, v in json.loads(meta["drop"]).items():
                drops[k].extend(v)
            states.append(tensors["states"])
            ends.append(tensors["x_0"])
        self.pair_states, self.pair_ends = torch.cat(states), torch.cat(ends)
        self.pair_drop = {k: np.array(v, bool) for k, v in drops.items()}
        if info.is_main:
            print(f"{len(self.pair_windows)} teacher trajectories, student times {self.times}", flush=True)

    # ---- the objective ----
    def _data_batch(self, rng: np.random.Generator, part: slice) -> Batch:
        """This rank's share of a batch of training windows, with dropout and (for some) the track from audio."""
        cfg = self.cfg
        windows = self.sampler.windows(rng, cfg.batch)[part]
        drop = self.sampler.draw_dropout(rng, cfg.batch)
        batch = self.sampler.assemble(windows, {k: v[part] for k, v in drop.items()})
        self._predicted_motion(batch, rng)
        return batch

    def _predicted_motion(self, batch: Batch, rng: np.random.Generator) -> None:
        """As the Base: ``predicted_motion`` of the samples see the track predicted from their audio."""
        if batch.cond.motion is not None and self.cfg.predicted_motion > 0:
            batch.cond.motion_from_audio = self.sampler.motion_from_audio(rng, len(batch.x_0))

    def _weighted(self, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> OdeLoss:
        """The face-weighted squared error of ``pred`` against ``target`` (both ``(B, F, C, h, w)``) under
        ``weights`` ``(B, F, h, w)``, normalised per sample."""
        per_sample = face_weighted_error(pred, target, weights)
        return OdeLoss(loss=per_sample.mean(), per_sample=per_sample)

    def _rollout_loss(self, step: int, part: slice) -> OdeLoss:
        """``own_rollout``: the student streams the windows from noise through its KV cache (``rollout``), the
        gradient through one denoising step drawn for the batch, and every chunk is regressed onto the data."""
        cfg, device = self.cfg, self.info.device
        rng = np.random.default_rng([cfg.seed, step, ROLLOUT_SEED])
        batch = self._data_batch(rng, part)
        target = batch.x_0.to(device)
        shape = tuple(target.shape)
        full = (cfg.batch, *shape[1:])  # drawn for the global batch, so every rank count sees the same noise
        noise = torch.from_numpy(rng.standard_normal(full).astype(np.float32))[part].to(device)
        renoise = torch.from_numpy(rng.standard_normal((len(self.times) - 2, *full)).astype(np.float32))
        renoise = renoise[:, part].to(device)
        exit_step = int(rng.integers(0, len(self.times) - 1))
        with autocast(device, self.autocast_dtype):
            video = rollout(self.model, self.flow, batch.cond.to(device), shape, self.times, noise, renoise,
                            exit_step, self.dit_cfg).video
        return self._weighted(video.float(), target, batch.weights.to(device))

    def _is_rollout_step(self, step: int) -> bool:
        """Whether step ``step`` regresses the student's own rollout (``own_rollout``; a function of seed and step)."""
        cfg = self.cfg
        draw = np.random.default_rng([cfg.seed, step, ROLLOUT_SEED, 1]).random()
        return cfg.own_rollout > 0 and draw < cfg.own_rollout

    def train_step(self, step: int) -> dict[str, float]:
        out = super().train_step(step)
        if self.cfg.own_rollout > 0:
            out["own_rollout"] = float(self._is_rollout_step(step))
        return out

    def _loss(self, step: int) -> OdeLoss:
        cfg, info = self.cfg, self.info
        b = cfg.batch
        part = slice(info.rank * b // info.world_size, (info.rank + 1) * b // info.world_size)
        if self._is_rollout_step(step):
            return self._rollout_loss(step, part)
        rng = np.random.default_rng([cfg.seed, step])
        chunk = torch.from_numpy(rng.integers(0, cfg.frames // self.dit_cfg.frames_per_chunk, b))
        step_i = torch.from_numpy(rng.integers(0, len(self.times) - 1, b))
        chunk, step_i = chunk[part], step_i[part]
        if cfg.target == "data":
            batch = self._data_batch(rng, part)
            target = batch.x_0
            noise = torch.from_numpy(rng.standard_normal(target.shape).astype(np.float32))
            t = torch.tensor(self.times[:-1])[:, None, None, None, None]  # (S, 1, 1, 1, 1)
            states = ((1 - t) * target[:, None] + t * noise[:, None])  # (B, S, F, C, h, w): x_t = (1 - t) x_0 + t eps
        else:
            idx = rng.integers(0, len(self.pair_windows), b)[part]
            batch = self.sampler.assemble([self.pair_windows[i] for i in idx],
                                          {k: v[idx] for k, v in self.pair_drop.items()})
            states, target = self.pair_states[idx], self.pair_ends[idx]
            self._predicted_motion(batch, rng)
        device = info.device
        target = target.to(device)
        inputs = causal_inputs(states.to(device), target, self.times, chunk.to(device),
                               step_i.to(device), self.dit_cfg.frames_per_chunk)
        with autocast(device, self.autocast_dtype):
            out = self.model(inputs.x_t, inputs.t, batch.cond.to(device))
        pred = self.flow.x0(out.float(), inputs.x_t, inputs.t)
        return self._weighted(pred, target, batch.weights.to(device) * inputs.loss_mask[..., None, None])


def load_ode_config(yaml_path: str | None, overrides: list[str]) -> OdeConfig:
    """OdeConfig from an optional YAML file and ``key=value`` overrides."""
    return load_config(OdeConfig, base=OdeConfig(), yaml_path=yaml_path, overrides=overrides)
