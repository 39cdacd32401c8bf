"""Training of lpm's VAE (``lpm train vae``): reconstruction (L1 + SSIM) + a light KL, resumable.

Data: random frames and reference images of the ``train`` split, decoded once into a uint8 cache under the run
directory (decoding mp4s every step would cost more than the step). Evaluation: PSNR on ``val`` (held-out
identities) and ``zeroshot`` (an unseen style), the same over the mouth and eye pixels alone (world clips), plus
decode time per frame, written to ``RUN/eval.json``.

``init=<vae.safetensors> train_encoder=false`` fine-tunes a shipped VAE's decoder alone (its latent space, and so
every DiT trained on it, stays valid); ``face_weight`` weights the L1 on the mouth and eyes. ``steps=0`` with
``init`` only evaluates the checkpoint.

Run directory:
```
RUN/config.json               the resolved VAETrainConfig
RUN/log.jsonl                 one row per logged step: step, loss parts, psnr, lr, s_per_step
RUN/samples/step_XXXXXX.png   originals (top) over reconstructions (bottom)
RUN/vae.safetensors           inference weights + VAEConfig (with latent statistics)
RUN/train_state.pt            weights, optimizer, step, RNG: what a rerun resumes from
RUN/eval.json, RUN/loss.png   written at the end
RUN/cache/                    uint8 frame caches
```
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from lpm.config import ConfigError, load_config, to_dict
from lpm.data.clip import read_clip, read_manifest, tensor_to_image
from lpm.data.video import read_mp4
from lpm.errors import LpmError
from lpm.fsutil import atomic_path
from lpm.media.restyle import style_augment
from lpm.models.latent_codec import time_codec
from lpm.models.vae import LpmVAE, VAEConfig, count_parameters
from lpm.training.checkpoint import load_into, load_train_state, save_train_state


@dataclass
class VAETrainConfig:
    """Everything ``lpm train vae`` reads; saved as RUN/config.json."""

    # The VAE's shape.
    model: VAEConfig = field(default_factory=VAEConfig)
    # Optimizer steps in total (a rerun with a larger value continues training).
    steps: int = 2000
    # Images per step.
    batch: int = 16
    # Peak AdamW learning rate, reached after ``warmup_steps``, then cosine decay to lr * min_lr_ratio.
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    # AdamW decoupled weight decay and betas.
    weight_decay: float = 1e-4
    betas: tuple[float, ...] = (0.9, 0.99)
    # Gradient norm clip (0 = off).
    grad_clip: float = 1.0
    # Loss weights: L1 on pixels, (1 - SSIM) on pixels, KL of the posterior (summed over latent elements,
    # averaged over images; "light" so that latents stay informative, as in LDM's f8 autoencoders).
    l1_weight: float = 1.0
    ssim_weight: float = 0.5
    kl_weight: float = 1e-6
    # Fraction of each batch drawn from reference images (global / body / expression) instead of video frames.
    ref_fraction: float = 0.2
    # Random horizontal flips (characters and backgrounds are roughly mirror-symmetric).
    hflip: bool = True
    # Frames cached per training clip, evenly spaced (0 = all).
    train_frames_per_clip: int = 0
    # Frames evaluated per val / zeroshot clip, evenly spaced (0 = all).
    eval_frames_per_clip: int = 24
    # Training frames encoded to measure the latent shift / scale at each checkpoint.
    stats_frames: int = 256
    # Mixed precision: "bf16" (autocast), "fp32", or "auto" = bf16 on CUDA or where the CPU has native bf16
    # (AVX512-BF16 / AMX), else fp32: on AVX2-only CPUs bf16 convolutions fall back to a ~50x slower kernel.
    precision: str = "auto"
    # Device to train on ("cpu" or "cuda").
    device: str = "cpu"
    # Torch CPU threads (0 = torch's default).
    threads: int = 0
    # Logging, samples and checkpoint intervals, in steps.
    log_every: int = 10
    sample_every: int = 250
    checkpoint_every: int = 250
    # Images in the sample PNG.
    sample_images: int = 8
    # Seed of weights, batch sampling and noise.
    seed: int = 0
    # Where frame caches live ("" = RUN/cache).
    cache_dir: str = ""
    # Start from this VAE checkpoint's weights and latent statistics ("" = random weights); its model config
    # replaces ``model``.
    init: str = ""
    # Train the encoder too. False fine-tunes the decoder alone: the latent space and its statistics stay
    # ``init``'s, so DiTs trained on its latents stay valid (needs ``init``).
    train_encoder: bool = True
    # L1 weight added on the pixels of the mouth and eyes (world clips: ``Renderer.face_regions`` of each
    # frame's motion, dilated by 2 px); 0 = uniform. They are ~1 % of the pixels and what lip sync, blinks
    # and the character's look depend on.
    face_weight: float = 0.0
    # Share of each batch restyled (``lpm.media.restyle.style_augment``: grey, outlines darkened by edge strength,
    # contrast, noise) before encoding, so the codec keeps a look none of the training styles has (line drawings,
    # greyscale) instead of repainting it in the training palettes. Generic: no style of the world is drawn.
    style_prob: float = 0.0

    def __post_init__(self) -> None:
        if not self.train_encoder and not self.init:
            raise ConfigError("train_encoder=false fine-tunes a decoder: it needs init=<a VAE checkpoint>")
        if self.face_weight < 0:
            raise ConfigError(f"face_weight must be >= 0, got {self.face_weight}")
        if not 0.0 <= self.style_prob <= 1.0:
            raise ConfigError(f"style_prob must be within [0, 1], got {self.style_prob}")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (avx512_bf16 or AMX tiles)."""
    return getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False)()


def resolve_precision(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype for a ``precision`` setting (None = fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ConfigError(f"precision: expected auto, bf16 or fp32, got {precision!r}")
    if device.startswith("cuda"):
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def autocast(device: str, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device`` (a ``resolve_precision`` result); None: a context that changes nothing."""
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype or torch.float32,
                          enabled=dtype is not None)


# Data ---------------------------------------------------------------------------------------------------
def _even(n: int, k: int) -> np.ndarray:
    return np.arange(n) if k <= 0 or k >= n else np.linspace(0, n - 1, k).round().astype(int)


def load_frames(data_dir: Path, split: str, cache_dir: Path, frames_per_clip: int = 0,
                with_refs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All (or evenly spaced) frames of one split as uint8, cached as .npy keyed on the manifest.

    Returns:
        (frames (N, H, W, 3) uint8, refs (M, H, W, 3) uint8; M = 0 unless ``with_refs``).
    """
    frame_set = data_dir / f"{split}.npz"
    if frame_set.is_file() and not (data_dir / "manifest.jsonl").is_file():
        # A frame set written by ``lpm world frames``: already uint8 arrays, no decoding needed.
        with np.load(frame_set) as z:
            frames = z["frames"]
            refs = z["refs"] if with_refs else np.zeros((0, *frames.shape[1:]), np.uint8)
        return frames, refs
    if not (data_dir / "manifest.jsonl").is_file() and (data_dir / "train.npz").is_file():
        empty = np.zeros((0, 1, 1, 3), np.uint8)  # a frame set without this split
        return empty, empty
    rows = read_manifest(data_dir, split)
    if not rows:
        empty = np.zeros((0, 1, 1, 3), np.uint8)
        return empty, empty
    key_text = json.dumps([rows, frames_per_clip, with_refs], sort_keys=True)
    key = hashlib.sha1(key_text.encode()).hexdigest()[:12]
    path = cache_dir / f"{split}_{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["frames"], z["refs"]
    frames, refs = [], []
    for row in tqdm(rows, desc=f"caching {split} frames", leave=False):
        clip_dir = data_dir / row["path"]
        clip = read_clip(clip_dir, load_video=False)  # validates the clip; refs come back as tensors
        video = read_mp4(clip_dir / "video.mp4")  # (F, H, W, 3) uint8
        frames.append(video[_even(len(video), frames_per_clip)])
        if with_refs:
            h, w = video.shape[1:3]
            for ref in clip.refs.values():
                img = tensor_to_image(ref)
                if img.shape[:2] != (h, w):
                    img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.LANCZOS))
                refs.append(img)
    shapes = {f.shape[1:] for f in frames}
    if len(shapes) != 1:
        raise LpmError(f"{data_dir} split {split}: clips of different frame sizes {sorted(shapes)}")
    out = np.concatenate(frames)
    ref_arr = np.stack(refs) if refs else np.zeros((0, *out.shape[1:]), np.uint8)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, frames=out, refs=ref_arr)
    return out, ref_arr


def face_masks(data_dir: Path, split: str, cache_dir: Path, frames_per_clip: int = 0) -> np.ndarray:
    """Mouth-and-eye pixel masks of the frames ``load_frames`` returns (same order), cached like them.

    World clips get ``Renderer.face_regions`` of each frame's motion (``face_weights.face_coverage`` at full
    resolution); clips without motion or a world identity get empty masks.

    Returns:
        (N, H, W) bool.
    """
    from lpm.training.face_weights import face_coverage

    rows = read_manifest(data_dir, split) if (data_dir / "manifest.jsonl").is_file() else []
    key = hashlib.sha1(json.dumps([rows, frames_per_clip, "face"], sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir / f"{split}_face_{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["masks"]
    masks = []
    for row in tqdm(rows, desc=f"face masks of {split}", leave=False):
        clip = read_clip(data_dir / row["path"], load_video=False)
        f, h, w = int(row["frames"]), int(row["height"]), int(row["width"])
        idx = _even(f, frames_per_clip)
        motion = clip.motion[idx] if clip.motion is not None else None  # only the frames load_frames keeps
        cov = face_coverage(clip.meta.extra, clip.meta.style, motion, clip.motion_names, h, w, 1)
        masks.append(cov[0].numpy() > 0 if cov is not None else np.zeros((len(idx), h, w), bool))
    out = np.concatenate(masks) if masks else np.zeros((0, 1, 1), bool)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, masks=out)
    return out


def to_pixels(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# Losses and metrics -------------------------------------------------------------------------------------
def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004, Gaussian window) of images in [-1, 1].

    Args:
        x, y: (N, 3, H, W).
    """
    x, y = (x.float() + 1) / 2, (y.float() + 1) / 2
    coords = torch.arange(window, dtype=torch.float32, device=x.device) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    gx, gy = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, "valid" borders
        return F.conv2d(F.conv2d(t, gx, groups=c), gy, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean()


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB per image of uint8 images (N, H, W, 3) (capped at 100 dB for identical images)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 255.0**2 * 1e-10))


def psnr_masked_uint8(a: np.ndarray, b: np.ndarray, masks: np.ndarray) -> float | None:
    """PSNR in dB over the masked pixels of uint8 images ``(N, H, W, 3)``, pooled; None without masked pixels.

    Args:
        masks: (N, H, W) bool.
    """
    if not masks.any():
        return None
    err = (a.astype(np.float64) - b.astype(np.float64)) ** 2  # (N, H, W, 3)
    mse = err[masks].mean()
    return float(10 * np.log10(255.0**2 / max(mse, 255.0**2 * 1e-10)))


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over latent elements, averaged over images."""
    return 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).flatten(1).sum(1).mean()


@torch.no_grad()
def reconstruct(vae: LpmVAE, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Encode (posterior mean) and decode uint8 images in fp32; returns uint8 (N, H, W, 3)."""
    out = []
    device = next(vae.parameters()).device
    for i in range(0, len(images), batch):
        x = to_pixels(images[i:i + batch], device)
        mean, _ = vae.encode_frames(x)
        x_hat = vae.decode_frames(mean).clamp(-1, 1)
        out.append(x_hat.add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


# Outputs ------------------------------------------------------------------------------------------------
def save_samples(path: Path, originals: np.ndarray, recon: np.ndarray) -> None:
    """A PNG with originals on the top row and reconstructions below."""
    grid = np.concatenate([np.concatenate(list(originals), 1), np.concatenate(list(recon), 1)], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def plot_losses(log_path: Path, out_path: Path) -> None:
    """Loss parts and batch PSNR against step, from log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on training machines
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "l1", "ssim_loss"):
        ax1.plot(steps, [r[key] for r in rows], label=key)
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.legend()
    ax2.plot(steps, [r["psnr"] for r in rows], color="C3")
    ax2.set_xlabel("step")
    ax2.set_ylabel("train batch PSNR (dB)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


# Training -----------------------------------------------------------------------------------------------
class VAETrainer:
    """One training run in one directory; ``run()`` trains (resuming if possible) then evaluates.

    Args:
        cfg: the resolved config.
        data_dir: a clip data set (manifest.jsonl with train / val / zeroshot splits).
        run_dir: where everything is written (see the module docstring).
    """

    def __init__(self, cfg: VAETrainConfig, data_dir: str | Path, run_dir: str | Path):
        self.cfg, self.data_dir, self.run_dir = cfg, Path(data_dir), Path(run_dir)
        if cfg.batch < 1 or cfg.steps < 0:
            raise ConfigError("batch must be >= 1 and steps >= 0")
        self.autocast_dtype = resolve_precision(cfg.precision, cfg.device)
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else self.run_dir / "cache"
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        if cfg.init:
            if not Path(cfg.init).is_file():
                raise ConfigError(f"init={cfg.init}: no such VAE checkpoint")
            self.vae = LpmVAE.from_checkpoint(cfg.init, cfg.device)
            cfg.model = self.vae.cfg  # the checkpoint's shape (saved with the run)
        else:
            self.vae = LpmVAE(cfg.model).to(cfg.device)
        self.vae.encoder.requires_grad_(cfg.train_encoder)
        self.opt = torch.optim.AdamW([p for p in self.vae.parameters() if p.requires_grad], lr=cfg.lr,
                                     betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.masks: np.ndarray | None = None  # (N, H, W) bool per training frame, with face_weight
        self.rng = np.random.default_rng(cfg.seed)
        self.step = 0

    # State ----------------------------------------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.run_dir / "train_state.pt"

    def _resume(self) -> None:
        path = self._state_path()
        if not path.is_file():
            return
        state = load_train_state(path)
        saved_model = state["config"]["model"]
        if saved_model != to_dict(self.cfg.model):
            raise LpmError(f"{self.run_dir} holds a run with model config {saved_model}; the current config "
                           f"differs ({to_dict(self.cfg.model)}): use another --out or the same model keys")
        load_into(self.vae, state["model"], source=str(path))
        self.opt.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["np_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        # Steps logged after the checkpoint are redone: drop them so the log has one row per step.
        log = self.run_dir / "log.jsonl"
        if log.is_file():
            rows = [r for r in log.read_text().splitlines()
                    if r.strip() and json.loads(r)["step"] <= self.step]
            log.write_text("".join(r + "\n" for r in rows))
        print(f"resuming from step {self.step} ({path})", flush=True)

    def _checkpoint(self) -> None:
        self._measure_latent_stats()
        self.vae.save(self.run_dir / "vae.safetensors",
                      extra={"step": self.step, "train_config": to_dict(self.cfg)})
        # The train state carries its own copy of the weights: a kill between the two writes cannot leave a
        # resumable state that disagrees with its weights.
        save_train_state(self._state_path(), {
            "step": self.step, "model": self.vae.state_dict(), "optimizer": self.opt.state_dict(),
            "np_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "config": to_dict(self.cfg),
        })

    @torch.no_grad()
    def _measure_latent_stats(self) -> None:
        if not self.cfg.train_encoder:
            return  # a decoder fine-tune keeps init's latent space and statistics
        idx = _even(len(self.frames), self.cfg.stats_frames)
        was_training = self.vae.training
        self.vae.eval()
        means = [self.vae.encode_frames(to_pixels(self.frames[idx[i:i + 64]], self.cfg.device))[0]
                 for i in range(0, len(idx), 64)]
        self.vae.set_latent_stats(torch.cat(means))
        self.vae.train(was_training)

    # Steps ----------------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``lr * min_lr_ratio``."""
        cfg = self.cfg
        if step <= cfg.warmup_steps:
            return cfg.lr * step / max(1, cfg.warmup_steps)
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images ``(B, 3, H, W)`` and, with ``face_weight``, their L1 weights ``(B, 1, H, W)``."""
        cfg = self.cfg
        n_ref = int(round(cfg.batch * cfg.ref_fraction)) if len(self.refs) else 0
        pick = self.rng.integers(0, len(self.frames), cfg.batch - n_ref)
        imgs = [self.frames[pick]]
        if n_ref:
            imgs.append(self.refs[self.rng.integers(0, len(self.refs), n_ref)])
        imgs = np.concatenate(imgs)
        masks = None
        if self.masks is not None:  # references carry no motion: no face map
            masks = np.concatenate([self.masks[pick], np.zeros((n_ref, *self.masks.shape[1:]), bool)])
        if cfg.hflip:
            flip = self.rng.random(len(imgs)) < 0.5
            imgs[flip] = imgs[flip, :, ::-1]
            if masks is not None:
                masks[flip] = masks[flip, :, ::-1]
        weights = None
        if masks is not None:
            m = torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None].to(cfg.device)
            weights = 1.0 + cfg.face_weight * m
        x = to_pixels(imgs, cfg.device)
        if cfg.style_prob > 0:  # seeded from the batch RNG, so a resumed run draws the same restyles
            gen = torch.Generator().manual_seed(int(self.rng.integers(2**31)))
            x = style_augment(x.cpu(), cfg.style_prob, gen).to(cfg.device)
        return x, weights

    def train_step(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, float]:
        """One optimizer step on images ``x`` (B, 3, H, W), L1 weighted by ``weights`` (B, 1, H, W) if given;
        returns the loss parts."""
        cfg = self.cfg
        with autocast(cfg.device, self.autocast_dtype):
            if cfg.train_encoder:
                mean, logvar = self.vae.encode_frames(x)
                z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)  # reparameterised posterior sample
            else:  # the frozen encoder's mean: the latents a DiT is trained on and generates
                with torch.no_grad():
                    mean, logvar = self.vae.encode_frames(x)
                z = mean
            x_hat = self.vae.decode_frames(z).float()
        err = (x_hat - x).abs()
        l1 = (err * weights).mean() if weights is not None else err.mean()
        ssim_loss = 1 - ssim(x_hat, x)
        kl = kl_divergence(mean, logvar)
        loss = cfg.l1_weight * l1 + cfg.ssim_weight * ssim_loss + cfg.kl_weight * kl
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.vae.parameters() if p.requires_grad], cfg.grad_clip)
        self.opt.step()
        mse = F.mse_loss(x_hat.detach().clamp(-1, 1), x).item()
        return {"loss": loss.item(), "l1": l1.item(), "ssim_loss": ssim_loss.item(), "kl": kl.item(),
                "psnr": 10 * math.log10(4.0 / max(mse, 1e-10))}  # peak-to-peak 2 in [-1, 1]

    def _write_samples(self) -> None:
        self.vae.eval()
        recon = reconstruct(self.vae, self.sample_images)
        self.vae.train()
        save_samples(self.run_dir / "samples" / f"step_{self.step:06d}.png", self.sample_images, recon)

    # Run ------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
        self.frames, self.refs = load_frames(self.data_dir, "train", self.cache_dir,
                                             cfg.train_frames_per_clip, with_refs=True)
        if len(self.frames) == 0:
            raise LpmError(f"{self.data_dir}: no clips in the train split")
        h, w = self.frames.shape[1:3]
        if h % self.vae.downsample or w % self.vae.downsample:
            raise LpmError(f"frames are {w}x{h}; the VAE needs sides divisible by {self.vae.downsample}")
        held_out = {s: load_frames(self.data_dir, s, self.cache_dir, cfg.eval_frames_per_clip)[0]
                    for s in ("val", "zeroshot")}
        if cfg.face_weight > 0:
            masks = face_masks(self.data_dir, "train", self.cache_dir, cfg.train_frames_per_clip)
            if len(masks) != len(self.frames) or not masks.any():
                raise LpmError(f"face_weight={cfg.face_weight}: {self.data_dir} has no mouth/eye regions (world "
                               f"clips with motion have them); use face_weight=0")
            self.masks = np.concatenate([  # dilated by 2 px, once (in slices: a float copy of all is large)
                F.max_pool2d(torch.from_numpy(masks[i:i + 1024]).float()[:, None], 5, 1, 2)[:, 0].numpy() > 0
                for i in range(0, len(masks), 1024)])
        pool = held_out["val"] if len(held_out["val"]) else self.frames
        self.sample_images = pool[_even(len(pool), cfg.sample_images)]
        what = "" if cfg.train_encoder else f" (decoder only, from {cfg.init})"
        print(f"VAE {count_parameters(self.vae) / 1e6:.2f}M trainable params{what}, {len(self.frames)} train frames + "
              f"{len(self.refs)} refs at {w}x{h}, precision {self.autocast_dtype or 'fp32'}", flush=True)

        self._resume()
        self.vae.train()
        log = (self.run_dir / "log.jsonl").open("a")
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train vae", dynamic_ncols=True)
        t_last = time.perf_counter()
        while self.step < cfg.steps:
            self.step += 1
            lr = self.lr_at(self.step)
            for group in self.opt.param_groups:
                group["lr"] = lr
            parts = self.train_step(*self._batch())
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                now = time.perf_counter()
                s_per_step = (now - t_last) / (cfg.log_every if self.step % cfg.log_every == 0 else 1)
                t_last = now
                log.write(json.dumps({"step": self.step, **parts, "lr": lr, "s_per_step": s_per_step}) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{parts['loss']:.4f}", psnr=f"{parts['psnr']:.1f}")
            if self.step % cfg.sample_every == 0 or self.step == cfg.steps:
                self._write_samples()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self._checkpoint()
        bar.close()
        log.close()
        if not (self.run_dir / "vae.safetensors").is_file():  # steps == 0: still leave usable weights
            self._checkpoint()
        return self.evaluate(held_out)

    def evaluate(self, held_out: dict[str, np.ndarray]) -> dict[str, Any]:
        """PSNR per split (fp32, uint8-quantised output vs the decoded mp4 frames) and codec timings."""
        self.vae.eval()
        train_eval = self.frames[_even(len(self.frames), 256)]
        params = sum(p.numel() for p in self.vae.parameters())  # the whole VAE, also when only the decoder trained
        result: dict[str, Any] = {"step": self.step, "params": params, "psnr_db": {},
                                  "frames": {}}
        result["psnr_face_db"] = {}  # over the mouth and eye pixels (world clips), where the look is decided
        for split, frames in {"train": train_eval, **held_out}.items():
            if len(frames):
                recon = reconstruct(self.vae, frames)
                result["psnr_db"][split] = round(float(psnr_uint8(frames, recon).mean()), 3)
                result["frames"][split] = len(frames)
                if split != "train":
                    masks = face_masks(self.data_dir, split, self.cache_dir, self.cfg.eval_frames_per_clip)
                    face = psnr_masked_uint8(frames, recon, masks) if len(masks) == len(frames) else None
                    if face is not None:
                        result["psnr_face_db"][split] = round(face, 3)
        h, w = self.frames.shape[1:3]
        result["resolution"] = [int(h), int(w)]
        result["threads"] = torch.get_num_threads()
        result["ms_per_frame"] = time_codec(self.vae, h, w, dtypes=(torch.float32, torch.bfloat16))
        (self.run_dir / "eval.json").write_text(json.dumps(result, indent=1))
        log = self.run_dir / "log.jsonl"
        if log.is_file():
            plot_losses(log, self.run_dir / "loss.png")
        return result


def load_train_config(yaml_path: str | None, overrides: list[str]) -> VAETrainConfig:
    """VAETrainConfig from defaults, an optional YAML file and ``key=value`` overrides."""
    return load_config(VAETrainConfig, yaml_path=yaml_path, overrides=overrides)
