"""Train the causal video VAE (``lpm.models.causal_vae``) on windows of consecutive world frames.

Loss per window: L1 + MSE of the reconstruction plus a light KL, on ``frames`` consecutive video frames (a
multiple of ``t_down``, so the causal temporal layers see several latent frames). Resumable like every trainer
here (``RUN/train_state.pt``); ``max_minutes`` stops cleanly with a checkpoint. Ends with ``RUN/eval.json``:
PSNR of whole held-out clips (val split), decoded in streaming chunks (``decode_chunk``, what the runtime does),
the latent size per second of video, and codec ms per frame.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lpm.config import load_config, to_dict
from lpm.data.clip import read_manifest
from lpm.data.video import read_mp4
from lpm.errors import LpmError
from lpm.fsutil import atomic_write_text
from lpm.models.causal_vae import CausalVAE, CausalVAEConfig
from lpm.models.latent_codec import time_codec
from lpm.training.checkpoint import load_into, load_train_state, save_train_state

FPS = 24


@dataclass
class CausalVAETrainConfig:
    model: CausalVAEConfig = field(default_factory=CausalVAEConfig)
    resolution: int = 64  # frames are resized to resolution x resolution (area average)
    clips: int = 64  # train clips loaded into memory (evenly spaced in the manifest)
    val_clips: int = 8  # held-out clips (val split) for eval.json
    frames: int = 8  # video frames per training window (a multiple of model.t_down)
    batch: int = 4  # windows per step
    steps: int = 2000
    lr: float = 1e-3
    kl_weight: float = 1e-6
    max_minutes: float = 0.0  # > 0: stop (with a checkpoint) after this many minutes of this invocation
    checkpoint_every: int = 200
    chunk_latents: int = 2  # latent frames per decode_chunk call in the evaluation (the Online chunk)
    seed: int = 0
    device: str = "cpu"


def load_windows(data_dir: Path, split: str, count: int, resolution: int) -> np.ndarray:
    """``count`` clips of ``split`` (evenly spaced), every frame resized: ``(N, F, res, res, 3)`` uint8."""
    entries = read_manifest(data_dir, split)
    if not entries:
        raise LpmError(f"{data_dir}: no {split} clips in manifest.jsonl")
    picks = [entries[i] for i in np.linspace(0, len(entries) - 1, min(count, len(entries))).round().astype(int)]
    clips = []
    for e in picks:
        video = torch.from_numpy(read_mp4(data_dir / e["path"] / "video.mp4")).permute(0, 3, 1, 2).float()
        video = F.interpolate(video, size=(resolution, resolution), mode="area")
        clips.append(video.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy())
    frames = min(c.shape[0] for c in clips)
    return np.stack([c[:frames] for c in clips])


def to_video(frames: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """``(B, F, H, W, 3)`` uint8 -> ``(B, F, 3, H, W)`` in [-1, 1]."""
    return torch.from_numpy(frames).to(device).permute(0, 1, 4, 2, 3).float() / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] after 8-bit quantisation (as the frames are shown)."""
    qa, qb = ((a + 1) * 127.5).round(), ((b + 1) * 127.5).round()
    return float(10 * torch.log10(255.0**2 / (qa - qb).square().mean().clamp_min(1e-10)))


class CausalVAETrainer:
    """Train (resumably), then evaluate; see the module docstring."""

    def __init__(self, cfg: CausalVAETrainConfig, data_dir: str | Path, run_dir: str | Path):
        if cfg.frames % cfg.model.t_down:
            raise LpmError(f"frames {cfg.frames} is not a multiple of model.t_down {cfg.model.t_down}")
        self.cfg, self.data_dir, self.run_dir = cfg, Path(data_dir), Path(run_dir)
        torch.manual_seed(cfg.seed)
        self.vae = CausalVAE(cfg.model).to(cfg.device)
        self.opt = torch.optim.AdamW(self.vae.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.rng = np.random.default_rng(cfg.seed)
        self.step = 0

    def _state_path(self) -> Path:
        return self.run_dir / "train_state.pt"

    def _resume(self) -> None:
        if not self._state_path().is_file():
            return
        state = load_train_state(self._state_path())
        if state["config"]["model"] != to_dict(self.cfg.model):
            raise LpmError(f"{self.run_dir} holds a run with model {state['config']['model']}, not "
                           f"{to_dict(self.cfg.model)}: use another --out or the same model keys")
        load_into(self.vae, state["model"], source=str(self._state_path()))
        self.opt.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["np_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        print(f"resuming from step {self.step}", flush=True)

    @torch.no_grad()
    def _checkpoint(self, train: np.ndarray) -> None:
        self.vae.eval()
        means = [self.vae.posterior(to_video(train[i:i + 1, :32], self.cfg.device))[0]
                 for i in range(0, len(train), max(1, len(train) // 16))]
        self.vae.set_latent_stats(torch.cat(means))
        self.vae.train()
        self.vae.save(self.run_dir / "vae.safetensors", extra={"step": self.step, "train_config": to_dict(self.cfg)})
        save_train_state(self._state_path(), {
            "step": self.step, "model": self.vae.state_dict(), "optimizer": self.opt.state_dict(),
            "np_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "config": to_dict(self.cfg)})

    def _batch(self, train: np.ndarray) -> torch.Tensor:
        cfg, t = self.cfg, self.cfg.model.t_down
        clips = self.rng.integers(0, len(train), cfg.batch)
        # Windows start on a latent-frame boundary, as the codec sees a stream.
        starts = self.rng.integers(0, (train.shape[1] - cfg.frames) // t + 1, cfg.batch) * t
        return to_video(np.stack([train[c, s:s + cfg.frames] for c, s in zip(clips, starts)]), cfg.device)

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        mean, logvar = self.vae.posterior(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        x_hat = self.vae.decode_raw(z)
        l1, mse = (x_hat - x).abs().mean(), (x_hat - x).square().mean()
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()
        loss = l1 + mse + self.cfg.kl_weight * kl
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.opt.step()
        return {"loss": loss.item(), "l1": l1.item(), "mse": mse.item(), "kl": kl.item()}

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.json", json.dumps(to_dict(cfg), indent=1))
        train = load_windows(self.data_dir, "train", cfg.clips, cfg.resolution)
        self._resume()
        start, log = time.perf_counter(), (self.run_dir / "log.jsonl").open("a")
        while self.step < cfg.steps:
            if cfg.max_minutes > 0 and time.perf_counter() - start > cfg.max_minutes * 60:
                print(f"max_minutes {cfg.max_minutes} reached at step {self.step}", flush=True)
                break
            row = self.train_step(self._batch(train))
            self.step += 1
            if self.step % 25 == 0 or self.step == cfg.steps:
                log.write(json.dumps({"step": self.step, **{k: round(v, 6) for k, v in row.items()}}) + "\n")
                log.flush()
                print(f"step {self.step} loss {row['loss']:.4f} mse {row['mse']:.5f}", flush=True)
            if self.step % cfg.checkpoint_every == 0:
                self._checkpoint(train)
        log.close()
        self._checkpoint(train)
        return self.evaluate(time.perf_counter() - start)

    @torch.no_grad()
    def evaluate(self, train_seconds: float) -> dict[str, Any]:
        """PSNR of whole val clips decoded in streaming chunks, latent size per second, codec timing."""
        cfg, vae, t = self.cfg, self.vae.eval(), self.cfg.model.t_down
        val = load_windows(self.data_dir, "val", cfg.val_clips, cfg.resolution)
        frames = val.shape[1] // t * t
        scores = []
        for clip in val:
            x = to_video(clip[None, :frames], cfg.device)
            z = vae.encode(x)
            parts, state = [], None
            for i in range(0, z.shape[1], cfg.chunk_latents):
                out, state = vae.decode_chunk(z[:, i:i + cfg.chunk_latents], state)
                parts.append(out)
            scores.append(psnr(torch.cat(parts, 1), x))
        d, c = vae.downsample, cfg.model.latent_channels
        result = {
            "step": self.step, "t_down": t, "latent_channels": c, "resolution": cfg.resolution,
            "val_psnr_db": round(float(np.mean(scores)), 3), "val_psnr_db_per_clip": [round(s, 2) for s in scores],
            "val_clips": len(val), "val_frames_per_clip": frames,
            # What the DiT sees per second of 24 fps video.
            "latent_frames_per_second": FPS / t,
            "latent_values_per_second": FPS / t * c * (cfg.resolution // d) ** 2,
            "compression": round(3 * cfg.resolution**2 * FPS / (FPS / t * c * (cfg.resolution // d) ** 2), 2),
            "parameters": sum(p.numel() for p in vae.parameters()),
            "train_seconds_this_run": round(train_seconds, 1), "threads": torch.get_num_threads(),
            "ms_per_frame": time_codec(vae, cfg.resolution, cfg.resolution, frames=4 * t, budget_s=1.0),
        }
        atomic_write_text(self.run_dir / "eval.json", json.dumps(result, indent=1))
        return result


def load_causal_vae_config(yaml_path: str | None, overrides: list[str]) -> CausalVAETrainConfig:
    """CausalVAETrainConfig from defaults, an optional YAML file and ``key=value`` overrides."""
    return load_config(CausalVAETrainConfig, yaml_path=yaml_path, overrides=overrides)
