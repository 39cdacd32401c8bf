"""``lpm train restorer``: fit the ``Restorer`` (``lpm.models.restorer``) on the world's frames.

Pairs: a true frame, its VAE round trip (the VAE the DiTs were trained on), and the clip's global reference image
(for an ``"expression"`` restorer, the exemplar of the frame's true emotion, ``frame_reference_kinds``).
Half the round trips go through softened latents first (``soften``: a Gaussian blur of each latent map of random
width plus a little noise), as a DiT's one-step latents are softer than the encoder's: the restorer learns to take
detail from the reference where the latent lost it. With ``dit=CHECKPOINT`` the soft inputs are that DiT's own
drawing of the frames instead (``lpm.training.dit_drawn``: aligned with the truth, with the DiT's faults rather
than a blur's). Frames come as runs of consecutive frames at random offsets of
each clip (``runs_per_clip`` x ``run_frames``). The loss is the L1 error, the mouth and eyes (``Renderer``'s face
regions) weighted by ``1 + face_weight``, the brows and cheeks by ``expression_weight`` more.

Reported on held-out identities (val) and the zero-shot style, as PSNR over the frame and over the mouth and eyes:
the round trip as it is and restored, clean and softened (``RUN/eval.json``, ``RUN/eval.md``, a sample sheet
``RUN/samples.png``). The prepared pairs are cached in the run folder (keyed by ``pairs_key``); a rerun resumes
from ``RUN/train_state.pt``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lpm.config import load_config, to_dict
from lpm.data.clip import read_clip, read_manifest, tensor_to_image
from lpm.data.video import read_mp4
from lpm.errors import LpmError
from lpm.fsutil import atomic_path, file_digest
from lpm.models.expression import GLOBAL, emotion_channels, expression_kind
from lpm.models.latent_codec import load_codec
from lpm.models.restorer import Restorer, RestorerConfig, load_restorer
from lpm.training.base_samples import to_uint8
from lpm.training.face_weights import EXPRESSION_FEATURES, FACE_FEATURES, face_coverage
from lpm.training.vae_trainer import psnr_masked_uint8, psnr_uint8, to_pixels

SPLITS = ("train", "val", "zeroshot")
PAIRS_FORMAT = 2  # 2: per-frame references and the brow and cheek masks (pairs cached before are prepared again)


@dataclass
class RestorerTrainConfig:
    """``lpm train restorer`` settings."""

    model: RestorerConfig = dataclasses.field(default_factory=RestorerConfig)
    steps: int = 1500
    batch: int = 16
    lr: float = 1e-3
    face_weight: float = 10.0  # the mouth and eyes count 1 + this
    expression_weight: float = 0.0  # the brows and cheeks (where emotions show) count 1 + this, on top
    soften_share: float = 0.5  # share of training inputs decoded from softened latents
    soften_sigma: tuple[float, float] = (0.4, 1.2)  # Gaussian blur width range, in latent cells
    soften_noise: float = 0.15  # noise std (normalised latent units) at most
    runs_per_clip: int = 3
    run_frames: int = 4
    eval_clips: int = 12  # per held-out split
    seed: int = 0
    threads: int = 0
    checkpoint_minutes: float = 4.0
    max_minutes: float = 0.0
    # A restorer checkpoint to start from (same widths); modules it lacks (e.g. the window attention) start as new
    # ones, which add nothing at first. Used only when the run has no train state yet.
    init: str = ""
    # An Online checkpoint (the model the restorer will serve): when set, the soft inputs are that model's own
    # drawing of each run (``dit_drawn``: streamed from the clip's true track) instead of blurred latents. Its latent
    # cache lives in ``cache_dir`` (a DiT run's, reused).
    dit: str = ""
    dit_max_deg: float = 4.0  # drawn chunks only where the true head and body turn at most this (still_chunks)
    cache_dir: str = "runs/cache"

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or self.lr <= 0:
            raise LpmError(f"steps >= 0, batch >= 1 and lr > 0 needed, got {self.steps}, {self.batch}, {self.lr}")
        if not 0 <= self.soften_share <= 1:
            raise LpmError(f"soften_share must be in [0, 1], got {self.soften_share}")
        lo, hi = self.soften_sigma
        if not 0 < lo <= hi:
            raise LpmError(f"soften_sigma must be (low, high) with 0 < low <= high, got {self.soften_sigma}")
        if self.dit and not Path(self.dit).is_file():
            raise LpmError(f"dit={self.dit}: no such checkpoint")


@dataclass
class Pairs:
    """Prepared pairs of one split: uint8 ``truth``, ``clean`` and ``soft`` round trips ``(N, H, W, 3)``,
    ``masks (N, H, W)`` bool (mouth and eyes), ``expression (N, H, W)`` bool (brows and cheeks), ``clip (N,)``
    each frame's reference: an index into ``refs (K, H, W, 3)``."""

    truth: np.ndarray
    clean: np.ndarray
    soft: np.ndarray
    masks: np.ndarray
    clip: np.ndarray
    refs: np.ndarray
    expression: np.ndarray

    def save(self, path: Path) -> None:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path: Path) -> Pairs:
        with np.load(path) as z:
            return cls(**{f.name: z[f.name] for f in dataclasses.fields(cls)})


def soften(latents: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``latents (N, C, h, w)`` blurred per sample by a Gaussian of width ``sigma (N,)`` latent cells (reflect
    padding) plus ``noise (N, C, h, w)``."""
    radius = 3
    x = torch.arange(-radius, radius + 1, dtype=latents.dtype)
    k = torch.exp(-0.5 * (x[None] / sigma[:, None].clamp_min(1e-3)) ** 2)
    k = k / k.sum(1, keepdim=True)  # (N, 2r + 1)
    n, c = latents.shape[:2]
    out = F.pad(latents, (radius,) * 4, mode="reflect").reshape(1, n * c, *[s + 2 * radius for s in latents.shape[2:]])
    kx = k.repeat_interleave(c, 0)  # (N C, 2r + 1)
    out = F.conv2d(out, kx[:, None, None, :], groups=n * c)
    out = F.conv2d(out, kx[:, None, :, None], groups=n * c)
    return out.reshape(latents.shape) + noise


@torch.no_grad()
def prepare_pairs(data_dir: Path, split: str, codec, cfg: RestorerTrainConfig, max_clips: int = 0,
                  vae: str = "") -> Pairs | None:
    """Read runs of frames of ``split``'s clips, their face masks and global references, and decode each frame's
    round trip through ``codec`` clean and softened, or drawn by ``cfg.dit`` (None when the split has no clips).
    ``vae``: the codec's checkpoint, naming the DiT's latent cache."""
    from tqdm import tqdm

    rows = read_manifest(data_dir, split)
    if max_clips:
        rows = rows[:max_clips]
    if not rows:
        return None
    g = torch.Generator().manual_seed(cfg.seed * 7919 + SPLITS.index(split) if split in SPLITS else cfg.seed)
    drawer = cached = None
    if cfg.dit:
        from lpm.training.dit_drawn import DitDrawer, draw_runs
        from lpm.training.latent_cache import load_latent_cache

        drawer = DitDrawer(cfg.dit)
        cached = load_latent_cache(data_dir, split, codec, vae, drawer.mel, cfg.cache_dir, limit=max_clips)
    out: dict[str, list] = {"truth": [], "clean": [], "soft": [], "masks": [], "expression": [], "clip": [],
                            "refs": []}
    for k, row in enumerate(tqdm(rows, desc=f"restorer pairs ({split})", leave=False)):
        clip_dir = data_dir / row["path"]
        clip = read_clip(clip_dir, load_video=False)
        video = read_mp4(clip_dir / "video.mp4")  # (F, H, W, 3)
        f, h, w = video.shape[:3]
        if drawer is not None:
            runs = draw_runs(drawer, cached[k], codec, cfg.runs_per_clip, g, cfg.dit_max_deg)
            if not runs:
                continue
            idx = np.concatenate([i for i, _ in runs])
            soft = torch.cat([frames for _, frames in runs])
        else:
            n = min(cfg.run_frames, f)
            starts = torch.randint(0, f - n + 1, (cfg.runs_per_clip,), generator=g).tolist()
            idx = np.array([s + i for s in starts for i in range(n)])
            soft = None
        truth = video[idx]
        latents = codec.encode(to_pixels(truth)[:, None])[:, 0]  # (N, C, h, w), one latent frame each
        if soft is None:
            span = cfg.soften_sigma[1] - cfg.soften_sigma[0]
            sigma = cfg.soften_sigma[0] + span * torch.rand(len(idx), generator=g)
            scale = cfg.soften_noise * torch.rand(len(idx), 1, 1, 1, generator=g)
            noise = scale * torch.randn(latents.shape, generator=g)
            soft = codec.decode(soften(latents, sigma, noise)[:, None])[:, 0]
        clean = codec.decode(latents[:, None])[:, 0]
        motion = clip.motion[idx] if clip.motion is not None else None
        cov = face_coverage(clip.meta.extra, clip.meta.style, motion, clip.motion_names, h, w, 1,
                            groups=(FACE_FEATURES, EXPRESSION_FEATURES))
        kinds = frame_reference_kinds(clip, idx, cfg.model.reference)
        index = {}
        for kind in dict.fromkeys(kinds):  # each kind the run needs, appended once
            ref = tensor_to_image(clip.refs[kind])
            if ref.shape[:2] != (h, w):
                raise LpmError(f"{clip_dir}: reference {kind} is {ref.shape[1]}x{ref.shape[0]}, frames {w}x{h}")
            index[kind] = len(out["refs"])
            out["refs"].append(ref)
        out["truth"].append(truth)
        out["clean"].append(to_uint8(clean))
        out["soft"].append(to_uint8(soft))
        for name, i in (("masks", 0), ("expression", 1)):
            out[name].append(cov[i].numpy() > 0 if cov is not None else np.zeros((len(idx), h, w), bool))
        out["clip"].append(np.array([index[k] for k in kinds]))
    if not out["refs"]:
        return None
    return Pairs(truth=np.concatenate(out["truth"]), clean=np.concatenate(out["clean"]),
                 soft=np.concatenate(out["soft"]), masks=np.concatenate(out["masks"]),
                 clip=np.concatenate(out["clip"]), refs=np.stack(out["refs"]),
                 expression=np.concatenate(out["expression"]))


def frame_reference_kinds(clip, idx: np.ndarray, reference: str) -> list[str]:
    """The reference kind the restorer reads beside each frame ``idx`` of ``clip`` (a ``ClipData``): ``global``,
    or for an ``"expression"`` restorer ``expression_kind`` of the frame's true emotion channels, the global image
    where the clip lacks that exemplar or has no motion."""
    if reference == GLOBAL or clip.motion is None:
        return [GLOBAL] * len(idx)
    names = emotion_channels(clip.motion_names)
    values = clip.motion[idx][:, [clip.motion_names.index(n) for n in names]].float().numpy()
    kinds = [expression_kind(row, names) for row in values]
    return [k if k in clip.refs else GLOBAL for k in kinds]


def pairs_key(data_dir: Path, vae: str, cfg: RestorerTrainConfig) -> str:
    """Hash of what the prepared pairs depend on (data manifest, VAE file, the pairing and softening settings): a
    rerun with other settings prepares its own pairs instead of reading stale ones."""
    vae_id = file_digest(Path(vae)) if Path(vae).is_file() else str(vae)
    fields = ("soften_sigma", "soften_noise", "runs_per_clip", "run_frames", "eval_clips", "seed")
    drawn = [file_digest(Path(cfg.dit)), cfg.dit_max_deg] if cfg.dit else []
    text = json.dumps([PAIRS_FORMAT, (data_dir / "manifest.jsonl").read_text(), vae_id,
                       [getattr(cfg, f) for f in fields], *drawn, cfg.model.reference])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def restore_all(model: Restorer, frames: np.ndarray, refs: np.ndarray, clip: np.ndarray,
                batch: int = 64) -> np.ndarray:
    """Restore uint8 ``frames (N, H, W, 3)`` with their references ``refs[clip]``."""
    out = []
    with torch.no_grad():
        for s in range(0, len(frames), batch):
            sl = slice(s, s + batch)
            out.append(to_uint8(model(to_pixels(frames[sl]), to_pixels(refs[clip[sl]]))))
    return np.concatenate(out) if out else frames[:0]


def evaluate(model: Restorer, pairs: Pairs) -> dict[str, float]:
    """PSNR over the frame and over the mouth and eyes, of the round trip as it is and restored, clean and soft."""
    res: dict[str, float] = {"frames": len(pairs.truth)}
    for name in ("clean", "soft"):
        frames = getattr(pairs, name)
        restored = restore_all(model, frames, pairs.refs, pairs.clip)
        for label, x in ((name, frames), (f"{name}_restored", restored)):
            res[f"{label}_psnr"] = float(psnr_uint8(pairs.truth, x).mean())
            face = psnr_masked_uint8(pairs.truth, x, pairs.masks)
            res[f"{label}_face_psnr"] = float(face) if face is not None else float("nan")
    return res


def _sample_sheet(path: Path, model: Restorer, pairs: Pairs, count: int = 6) -> None:
    """Rows: truth, clean round trip, restored, soft round trip, restored; one column per sample."""
    from PIL import Image

    idx = np.linspace(0, len(pairs.truth) - 1, count).astype(int)
    rows = [pairs.truth[idx]]
    for name in ("clean", "soft"):
        frames = getattr(pairs, name)[idx]
        rows += [frames, restore_all(model, frames, pairs.refs, pairs.clip[idx])]
    sheet = np.concatenate([np.concatenate(list(r), 1) for r in rows], 0)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.Resampling.NEAREST).save(
            tmp, format="PNG")


def _table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| split | frames | PSNR clean -> restored | mouth+eyes clean -> restored | PSNR soft -> restored | "
             "mouth+eyes soft -> restored |", "| --- | --- | --- | --- | --- | --- |"]
    for split, r in results.items():
        lines.append(f"| {split} | {int(r['frames'])} | {r['clean_psnr']:.2f} -> {r['clean_restored_psnr']:.2f} | "
                     f"{r['clean_face_psnr']:.2f} -> {r['clean_restored_face_psnr']:.2f} | {r['soft_psnr']:.2f} -> "
                     f"{r['soft_restored_psnr']:.2f} | {r['soft_face_psnr']:.2f} -> "
                     f"{r['soft_restored_face_psnr']:.2f} |")
    return "\n".join(lines)


def train_restorer(data_dir: str | Path, vae: str, out: str | Path, cfg: RestorerTrainConfig,
                   progress: bool = True) -> dict[str, dict[str, float]]:
    """Prepare (or load) the pairs, train (resuming ``OUT/train_state.pt``), write ``OUT/restorer.safetensors``,
    ``OUT/eval.json``, ``OUT/eval.md``, ``OUT/samples.png`` and ``OUT/log.jsonl``; returns the evaluation."""
    from tqdm import tqdm

    data_dir, out = Path(data_dir), Path(out)
    if not (data_dir / "manifest.jsonl").is_file():
        raise LpmError(f"--data {data_dir} is not a clip data set (no manifest.jsonl)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    codec = load_codec(vae)
    pairs: dict[str, Pairs] = {}
    key = pairs_key(data_dir, vae, cfg)
    for split in SPLITS:
        path = out / f"pairs_{split}_{key}.npz"
        if not path.is_file():
            made = prepare_pairs(data_dir, split, codec, cfg, max_clips=0 if split == "train" else cfg.eval_clips,
                                 vae=vae)
            if made is None:
                continue
            made.save(path)
        pairs[split] = Pairs.load(path)
    if "train" not in pairs:
        raise LpmError(f"{data_dir}: no train clips")
    train = pairs["train"]
    if train.truth.shape[1] != cfg.model.resolution:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, resolution=int(train.truth.shape[1])))
    torch.manual_seed(cfg.seed)
    model = Restorer(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    step, state_path = 0, out / "train_state.pt"
    if cfg.init and not state_path.is_file():
        start = load_restorer(cfg.init).state_dict()
        own = model.state_dict()
        wrong = sorted(k for k in start if k not in own or own[k].shape != start[k].shape)
        if wrong:
            raise LpmError(f"init {cfg.init}: weights {wrong[:4]} do not fit this restorer ({cfg.model})")
        model.load_state_dict(start, strict=False)
        print(f"started from {cfg.init}; new: {sorted(set(own) - set(start)) or 'nothing'}", flush=True)
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)  # this run's own state
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])

    def checkpoint() -> None:
        with atomic_path(state_path, suffix=".pt") as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)

    truth, clean, soft = to_pixels(train.truth), train.clean, train.soft
    masks, expression = torch.from_numpy(train.masks), torch.from_numpy(train.expression)
    refs = to_pixels(train.refs)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    for _ in range(step):  # the same draws after a resume as without one
        torch.randint(0, len(truth), (cfg.batch,), generator=g)
        torch.rand(cfg.batch, generator=g)
    started, last_save = time.monotonic(), time.monotonic()
    bar = tqdm(range(step, cfg.steps), desc="restorer", disable=not progress, initial=step, total=cfg.steps)
    with open(out / "log.jsonl", "a") as log:
        for step in bar:
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, cfg.steps)))
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, len(truth), (cfg.batch,), generator=g)
            use_soft = (torch.rand(cfg.batch, generator=g) < cfg.soften_share).numpy()
            inputs = np.where(use_soft[:, None, None, None], soft[idx.numpy()], clean[idx.numpy()])
            x = to_pixels(inputs)
            weights = 1 + cfg.face_weight * masks[idx].float() + cfg.expression_weight * expression[idx].float()
            weights = weights[:, None]
            pred = model(x, refs[torch.from_numpy(train.clip[idx.numpy()])])
            loss = ((pred - truth[idx]).abs() * weights).mean() / weights.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 25 == 0 or step == cfg.steps:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                log.write(json.dumps({"step": step, "loss": loss.item(), "lr": lr}) + "\n")
                log.flush()
            now = time.monotonic()
            if now - last_save > cfg.checkpoint_minutes * 60:
                checkpoint()
                last_save = now
            if cfg.max_minutes and now - started > cfg.max_minutes * 60:
                print(f"\nstopped at step {step}: max_minutes {cfg.max_minutes} reached; rerun to resume", flush=True)
                break
    checkpoint()
    model.eval()
    results = {split: evaluate(model, p) for split, p in pairs.items() if split != "train"}
    meta = {"data": str(data_dir), "vae": str(vae), "step": step, "eval": results}
    model.save(out / "restorer.safetensors", extra=meta)
    (out / "eval.json").write_text(json.dumps({"config": to_dict(cfg), **meta}, indent=1))
    (out / "eval.md").write_text(f"# Restorer after {step} steps (PSNR, dB)\n\n{_table(results)}\n")
    if "val" in pairs:
        _sample_sheet(out / "samples.png", model, pairs["val"])
    return results


def load_restorer_config(yaml_path: str | None, overrides: list[str]) -> RestorerTrainConfig:
    """RestorerTrainConfig from an optional YAML file and ``key=value`` overrides."""
    return load_config(RestorerTrainConfig, base=RestorerTrainConfig(), yaml_path=yaml_path, overrides=overrides)
