"""The motion expert: a frozen reader of the motion track from one frame's VAE latent, used as a loss.

Given the true track, the Online DiT draws the head pose, the brows and the smile at r 0.15-0.4 (docs/learning.md,
arm 20): the track tells it what to draw and no loss checks that it did. Regression onto the data weights every
latent cell by its error, and a nod or a brow raise moves a few cells by a little. The expert reads the track back
from a latent frame (``(C, h, w) -> (P,)``, the DiT's track channels), trained on the world's encoded frames with
their true motion. A student's one-step output read by it and compared with the track it was conditioned on gives
a loss that is large exactly when the motion is under-drawn ("a lip expert that converges", issue 12's lever 2,
for every channel of the track rather than the mouth alone).

The reader is trained with Gaussian noise on its input latents (``noise_std``) so that it reads the soft latents
of a one-step student as it reads clean ones and its gradient is smooth. Its errors are measured per channel on
held-out identities (``ExpertReport``): a channel the expert cannot read is a channel it must not be trusted on.

Checkpoint: safetensors with the reader's config, its channels and the per-channel statistics in the metadata.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lpm.errors import LpmError
from lpm.models.motion_track import to_track
from lpm.training.latent_cache import CachedClip
from lpm.world.motion import MOTION_NAMES

KIND = "motion_expert"


@dataclass(frozen=True)
class ExpertConfig:
    """The reader's shape and its training."""

    channels: tuple[str, ...] = ()  # the track channels it reads (the DiT's ``motion_channels``)
    latent_channels: int = 8
    width: int = 96  # conv channels of the first stage (doubled at the second)
    steps: int = 1500
    batch: int = 256  # frames per step
    lr: float = 2e-3
    noise_std: float = 0.3  # Gaussian noise added to the normalised latents while training
    # Read the frame beside the clip's global reference latent (the frame minus it): the motion is what differs
    # from the still reference, whoever the character is. Without it the reader learns identities by heart.
    reference: bool = True
    reference_kind: str = "global"  # which of the clip's reference latents (``CachedClip.references``)
    # The readout grid: the stride-2 features average-pooled to ``readout x readout`` cells before the linear head
    # (0 = the full grid, h/2 x w/2). A coarser grid has fewer weights to learn identities with.
    readout: int = 0
    dropout: float = 0.0  # on the readout features while training
    seed: int = 0


class LatentMotionReader(nn.Module):
    """``(N, C, h, w)`` normalised latents (and the ``(N, C, h, w)`` global reference latent of each frame's
    clip, with ``cfg.reference``) -> ``(N, P)`` the track, in track units.

    Two conv stages (3x3, GroupNorm, SiLU; the second at stride 2), then the features flattened over their grid
    (where a feature is matters: a head turn moves the face; ``cfg.readout`` pools it coarser first) into a linear
    head. Outputs are z-scores of each channel over the training frames, scaled back by ``mean`` / ``std``.
    """

    def __init__(self, cfg: ExpertConfig, height: int = 16, width: int = 16) -> None:
        super().__init__()
        if not cfg.channels:
            raise LpmError("the motion expert needs the track channels it reads (channels=...)")
        self.cfg = cfg
        self.latent_hw = (height, width)
        w = cfg.width
        inputs = cfg.latent_channels * (2 if cfg.reference else 1)
        self.body = nn.Sequential(
            nn.Conv2d(inputs, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * w), nn.SiLU(),
            nn.Conv2d(2 * w, 32, 1), nn.SiLU())
        grid = (cfg.readout, cfg.readout) if cfg.readout else (math.ceil(height / 2), math.ceil(width / 2))
        # No weights in these two: the state dict's keys do not depend on the readout.
        self.pool, self.drop = nn.AdaptiveAvgPool2d(grid), nn.Dropout(cfg.dropout)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * grid[0] * grid[1], 256), nn.SiLU(),
                                  nn.Linear(256, len(cfg.channels)))
        self.register_buffer("mean", torch.zeros(len(cfg.channels)))
        self.register_buffer("std", torch.ones(len(cfg.channels)))

    def z(self, latents: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C, h, w)`` (and the reference ``(N, C, h, w)``) -> ``(N, P)`` z-scores of the track."""
        if self.cfg.reference:
            if reference is None or reference.shape != latents.shape:
                got = None if reference is None else tuple(reference.shape)
                raise LpmError(f"this motion expert reads each frame beside its reference latent "
                               f"{tuple(latents.shape)}; got {got}")
            latents = torch.cat([latents, latents - reference], dim=1)
        return self.head(self.drop(self.pool(self.body(latents))))

    def forward(self, latents: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C, h, w) -> (N, P)`` the track in track units."""
        return self.z(latents, reference) * self.std + self.mean


@dataclass
class ExpertReport:
    """Per-channel Pearson r of the reader on held-out frames (clean latents and with the training noise)."""

    channels: tuple[str, ...]
    val_r: list[float]
    val_r_noisy: list[float]
    train_r: list[float]
    frames: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def table(self) -> str:
        rows = ["| channel | train r | val r (held-out identities) | val r, noisy input |", "| --- | --- | --- | --- |"]
        rows += [f"| {c} | {a:.3f} | {b:.3f} | {n:.3f} |"
                 for c, a, b, n in zip(self.channels, self.train_r, self.val_r, self.val_r_noisy)]
        return "\n".join(rows)


@dataclass
class Frames:
    """Every frame of some clips: ``latents (N, C, h, w)``, the ``track (N, P)``, and each frame's clip
    (``clip_of (N,)``) into the clips' reference latents ``references (K, C, h, w)``, held once per clip."""

    latents: torch.Tensor
    track: torch.Tensor
    clip_of: torch.Tensor
    references: torch.Tensor

    def __len__(self) -> int:
        return len(self.latents)

    def reference(self, index: torch.Tensor | slice) -> torch.Tensor:
        """``(n, C, h, w)``: the reference latent of frames ``index``."""
        return self.references[self.clip_of[index]]

    def take(self, index: torch.Tensor | slice) -> Frames:
        return Frames(self.latents[index], self.track[index], self.clip_of[index], self.references)


def frames_of(clips: list[CachedClip], channels: tuple[str, ...], kind: str = "global") -> Frames:
    """Every frame of ``clips`` (float32)."""
    with_motion = [c for c in clips if c.motion is not None]
    if not with_motion:
        raise LpmError("the motion expert trains on clips with ground-truth motion (world clips); these have none")
    no_ref = [c.id for c in with_motion if kind not in c.references]
    if no_ref:
        raise LpmError(f"clips without a {kind!r} reference latent: {no_ref[:3]}")
    return Frames(latents=torch.cat([c.latents.float() for c in with_motion]),
                  track=torch.cat([to_track(c.motion, MOTION_NAMES, channels) for c in with_motion]),
                  clip_of=torch.cat([torch.full((c.frames,), i) for i, c in enumerate(with_motion)]),
                  references=torch.stack([c.references[kind].float() for c in with_motion]))


def column_r(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per-column Pearson r (``lpm.eval.metrics.pearson``) of ``(N, P)`` tensors, 0 where a column is constant."""
    from lpm.eval.metrics import pearson

    rs = [pearson(a[:, i].numpy(), b[:, i].numpy()) for i in range(a.shape[1])]
    return [0.0 if math.isnan(r) else r for r in rs]


@torch.no_grad()
def read_all(reader: LatentMotionReader, frames: Frames, noise_std: float = 0.0, seed: int = 0,
             batch: int = 1024) -> torch.Tensor:
    """The reader's track of every frame ``(N, P)``, optionally with input noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(frames), batch):
        x = frames.latents[i:i + batch]
        if noise_std > 0:
            x = x + noise_std * torch.randn(x.shape, generator=g)
        out.append(reader(x, frames.reference(slice(i, i + batch))))
    return torch.cat(out)


def train_expert(cfg: ExpertConfig, train: list[CachedClip], val: list[CachedClip],
                 progress: bool = True) -> tuple[LatentMotionReader, ExpertReport]:
    """Fit a reader on ``train``'s frames; report its r on ``val``'s (held-out identities)."""
    from tqdm import tqdm

    start = time.monotonic()
    torch.manual_seed(cfg.seed)
    data = frames_of(train, cfg.channels, cfg.reference_kind)
    held = frames_of(val, cfg.channels, cfg.reference_kind) if val else data.take(slice(0, 0))
    cfg = dataclasses.replace(cfg, latent_channels=data.latents.shape[1])
    reader = LatentMotionReader(cfg, *data.latents.shape[2:])
    reader.mean.copy_(data.track.mean(0))
    reader.std.copy_(data.track.std(0).clamp_min(1e-4))
    zy = (data.track - reader.mean) / reader.std
    opt = torch.optim.AdamW(reader.parameters(), lr=cfg.lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.steps), desc="motion expert", disable=not progress)
    for step in bar:
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(data), (cfg.batch,), generator=g)
        xb = data.latents[idx]
        xb = xb + cfg.noise_std * torch.rand(len(xb), 1, 1, 1, generator=g) * torch.randn(xb.shape, generator=g)
        loss = (reader.z(xb, data.reference(idx)) - zy[idx]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    reader.eval().requires_grad_(False)
    sub = data.take(torch.randperm(len(data), generator=g)[:4096])
    report = ExpertReport(
        channels=cfg.channels, train_r=column_r(read_all(reader, sub), sub.track),
        val_r=column_r(read_all(reader, held), held.track) if len(held) else [],
        val_r_noisy=column_r(read_all(reader, held, cfg.noise_std), held.track) if len(held) else [],
        frames={"train": len(data), "val": len(held)}, seconds=time.monotonic() - start)
    return reader, report


def expert_error(reader: LatentMotionReader, video: torch.Tensor, track: torch.Tensor,
                 reference: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)``: the mean squared z-score error between the track ``reader`` reads from ``video (B, F, C, h, w)``
    (beside ``reference (B, C, h, w)``, the clips' reference latents, when the reader takes one) and ``track
    (B, F, P)`` in the reader's channels (track units), over frames and channels; ``weights (P,)`` per channel
    (None: 1). Gradients flow into ``video``; the reader is frozen."""
    b, f = video.shape[:2]
    if track.shape[:2] != (b, f) or track.shape[2] != len(reader.cfg.channels):
        raise LpmError(f"the motion expert reads {len(reader.cfg.channels)} channels of {b} x {f} frames; the track "
                       f"is {tuple(track.shape)}")
    frames = video.reshape(b * f, *video.shape[2:]).float()
    ref = None
    if reference is not None:
        ref = reference.float()[:, None].expand(b, f, *reference.shape[1:]).reshape(frames.shape)
    z = reader.z(frames, ref).reshape(b, f, -1)  # (B, F, P)
    target = (track.to(z) - reader.mean) / reader.std
    err = (z - target).square()
    if weights is not None:
        err = err * weights.to(err)
    return err.flatten(1).mean(1)


def channel_weights(reader: LatentMotionReader, channels: tuple[str, ...]) -> torch.Tensor:
    """``(P,)`` 1 on ``channels`` (all of the reader's when empty), 0 elsewhere; an unknown name is an error."""
    if not channels:
        return torch.ones(len(reader.cfg.channels))
    unknown = [c for c in channels if c not in reader.cfg.channels]
    if unknown:
        raise LpmError(f"expert_channels {unknown}: the motion expert reads {list(reader.cfg.channels)}")
    return torch.tensor([float(c in channels) for c in reader.cfg.channels])


def track_columns(reader: LatentMotionReader, dit_channels: tuple[str, ...]) -> list[int]:
    """Where each of the reader's channels sits in a DiT's track (an error naming what a DiT lacks)."""
    missing = [c for c in reader.cfg.channels if c not in dit_channels]
    if missing:
        raise LpmError(f"the motion expert reads {missing}, which the DiT's motion track ({list(dit_channels)}) "
                       "does not carry")
    return [dit_channels.index(c) for c in reader.cfg.channels]


def save_expert(reader: LatentMotionReader, report: ExpertReport, path: str | Path) -> None:
    """Atomic safetensors with the config and the report in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.asdict(reader.cfg)
    meta = {"kind": KIND, "config": json.dumps(cfg), "report": json.dumps(dataclasses.asdict(report)),
            "latent_shape": json.dumps([reader.cfg.latent_channels, *reader.latent_hw])}
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in reader.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def load_expert(path: str | Path) -> LatentMotionReader:
    """A frozen reader from ``save_expert``'s file (a clear error for another kind of file)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise LpmError(f"motion expert {path}: no such file")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("kind") != KIND:
        raise LpmError(f"{path} is not a motion expert (metadata kind {meta.get('kind')!r}, expected {KIND!r})")
    raw = json.loads(meta["config"])
    cfg = ExpertConfig(**{**raw, "channels": tuple(raw["channels"])})
    _, h, w = json.loads(meta["latent_shape"])
    reader = LatentMotionReader(cfg, h, w)
    reader.load_state_dict(load_file(str(path)))
    return reader.eval().requires_grad_(False)


def train_expert_run(data_dir: str | Path, vae: str, dit: str, out: str | Path, cfg: ExpertConfig,
                     cache_dir: str | Path = "") -> ExpertReport:
    """``lpm train motion-expert``: read the channels and the mel features (the latent cache's key) from the DiT
    checkpoint ``dit``, load (or encode) the train and val clips' latents, fit the reader and write
    ``OUT/expert.safetensors``, ``OUT/report.json`` and ``OUT/report.md``. A few minutes on CPU; a rerun starts
    over."""
    from lpm.data.clip import read_manifest
    from lpm.models.dit import load_dit
    from lpm.models.latent_codec import load_codec
    from lpm.training.latent_cache import load_latent_cache

    model = load_dit(dit)
    if not model.cfg.motion_channels:
        raise LpmError(f"{dit}: the DiT has no motion track; the motion expert reads the track's channels")
    cfg = dataclasses.replace(cfg, channels=cfg.channels or tuple(model.cfg.motion_channels))
    out = Path(out)
    codec = load_codec(vae)
    kwargs = dict(codec=codec, vae_spec=vae, mel=model.cfg.mel, cache_dir=cache_dir or out / "cache")
    train = load_latent_cache(data_dir, "train", **kwargs)
    val = load_latent_cache(data_dir, "val", **kwargs) if read_manifest(data_dir, "val") else []
    if not train:
        raise LpmError(f"{data_dir}: no train clips")
    reader, report = train_expert(cfg, train, val)
    out.mkdir(parents=True, exist_ok=True)
    save_expert(reader, report, out / "expert.safetensors")
    (out / "report.json").write_text(json.dumps(dataclasses.asdict(report), indent=1))
    (out / "report.md").write_text(
        f"# Motion expert ({report.frames['train']} train frames, {report.frames['val']} val frames, "
        f"{cfg.steps} steps, {report.seconds:.0f} s)\n\n{report.table()}\n")
    return report
