"""Training of the bench instruments (motion probe, face reader, identity embedding) on labelled world renders.

One run directory per instrument: ``RUN/model.safetensors`` (weights + config + accuracy in the metadata),
``RUN/train_state.pt`` (optimizer, step, RNG: rerunning the command resumes), ``RUN/log.jsonl``.
The render sets are cached in ``RUN/../renders`` so both instruments (and reruns) share them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lpm.eval.face import FaceReader, FaceReaderConfig, face_accuracy, face_loss, face_targets, region_anchors
from lpm.eval.head import HEAD_POSE_CONFIG, HeadPoseReader, head_accuracy, head_loss, head_targets
from lpm.eval.identity import IdentityConfig, IdentityNet, embed_frames, supcon_loss, verification
from lpm.eval.probe import (
    MotionProbe,
    ProbeConfig,
    channel_weights,
    encode_targets,
    frames_to_tensor,
    probe_accuracy,
    probe_loss,
)
from lpm.eval.renders import RenderSet, cached_render_set, load_clip_motion
from lpm.media.restyle import style_augment
from lpm.training.checkpoint import (
    load_checkpoint,
    load_into,
    load_train_state,
    save_checkpoint,
    save_train_state,
)

PROBE_KIND = "motion_probe"
FACE_KIND = "face_reader"
HEAD_KIND = "head_pose_reader"
IDENTITY_KIND = "identity_embedding"


@dataclass(frozen=True)
class InstrumentTrainConfig:
    """What to render and how long to train."""

    train_identities: int = 600
    val_identities: int = 48
    zeroshot_identities: int = 32
    per_identity: int = 32  # poses per identity
    res: int = 128
    seed: int = 0
    steps: int = 3000
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    blur_prob: float = 0.3  # share of training images blurred: generated frames are softer than renders
    identities_per_batch: int = 16  # identity embedding: P identities x (batch / P) poses each
    checkpoint_every: int = 250
    threads: int = 2
    init_from: str = ""  # warm start: weights from another run's train_state.pt or model.safetensors
    # Motion probe only: channels of its full-resolution stem (ProbeConfig.stem; 0 = the first probe's shape),
    # and per-channel loss weights 1 / std (``channel_weights``) instead of equal ones.
    probe_stem: int = 16
    balance_channels: bool = True
    # Identity embedding only: input size, whether it reads the head crop, and the share of each batch added as
    # damaged copies (``identity_check.degrade``: blur, a swapped face, smear; random strength) that count as
    # other identities, so damage lowers the similarity instead of being ignored.
    identity_res: int = 96
    identity_crop: bool = True
    identity_negatives: float = 0.5
    # Face reader only: the random offset (pixels of a 128 frame, normal, per axis) of the true anchors at which
    # its patch nets read in training; about the locator's error, so they read well at the locator's guess.
    face_jitter: float = 1.5
    # Face reader only: share of training images restyled (``style_augment``: grey, outlined, contrast, noise), so
    # it finds and reads faces of styles it has not seen.
    style_prob: float = 0.5
    # Face reader only: its training identities cycle through every style, the zero-shot sketch style too (from
    # the train seed range: never a zeroshot identity). The zero-shot style tests the generative models, which
    # never see it; an instrument must read every style it measures.
    face_all_styles: bool = True
    # Identity embedding only: the same for its training identities (the shipped one since stop 25).
    identity_all_styles: bool = True
    # Head pose reader only: the same (its stem is ``probe_stem``).
    head_all_styles: bool = True


def load_sets(cfg: InstrumentTrainConfig, cache: str | Path, data: str | Path | None,
              all_styles: bool = False) -> dict[str, RenderSet]:
    """The train / val / zeroshot render sets (rendered once, then read from ``cache``); ``all_styles``: the
    train set's identities cycle through every style (``render_set``)."""
    motion = load_clip_motion(data, "train")
    sizes = {"train": cfg.train_identities, "val": cfg.val_identities, "zeroshot": cfg.zeroshot_identities}
    return {split: cached_render_set(cache, split, n, cfg.per_identity, cfg.res, cfg.seed, motion,
                                     all_styles=all_styles and split == "train")
            for split, n in sizes.items()}


def augment(x: torch.Tensor, blur_prob: float, gen: torch.Generator) -> torch.Tensor:
    """Blur a random share of images (down- then up-sampling by 2): the probe must read soft frames too.

    Args:
        x: (B, 3, H, W).
    """
    pick = torch.rand(x.shape[0], generator=gen) < blur_prob
    if pick.any():
        h, w = x.shape[-2:]
        soft = F.interpolate(F.avg_pool2d(x[pick], 2), size=(h, w), mode="bilinear", align_corners=False)
        x = x.clone()
        x[pick] = soft
    return x


def _batch_indices(kind: str, rs: RenderSet, cfg: InstrumentTrainConfig, rng: np.random.Generator) -> np.ndarray:
    if kind in (PROBE_KIND, FACE_KIND, HEAD_KIND):
        return rng.integers(0, len(rs.frames), cfg.batch)
    # Identity: P identities, K poses each, so every image has positives in the batch.
    per = max(2, cfg.batch // cfg.identities_per_batch)
    ids = rng.choice(int(rs.identity.max()) + 1, cfg.identities_per_batch, replace=False)
    per_identity = len(rs.frames) // (int(rs.identity.max()) + 1)
    return np.concatenate([i * per_identity + rng.choice(per_identity, per, replace=False) for i in ids])


def degraded_negatives(frames: np.ndarray, per_identity: int, share: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Damaged copies of a share of an identity batch (P identities x ``per_identity`` poses, in that order).

    Args:
        frames: (B, H, W, 3) uint8.
    Returns:
        (round(share * B), H, W, 3) uint8: each a random degradation (``identity_check.DEGRADATIONS``) at a
        random strength of 0.75-1.5; a swap takes the face of the next identity in the batch.
    """
    from lpm.eval.identity_check import DEGRADATIONS, degrade

    n = int(round(share * len(frames)))
    out = []
    for i in rng.choice(len(frames), n, replace=False):
        kind = DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))]
        other = frames[(i + per_identity) % len(frames)][None]
        out.append(degrade(frames[i][None], kind, other, float(rng.uniform(0.75, 1.5)))[0])
    return np.stack(out) if out else frames[:0]


def evaluate(kind: str, model: torch.nn.Module, sets: dict[str, RenderSet]) -> dict[str, Any]:
    """Accuracy on the held-out identities (val) and the zero-shot style, as JSON-safe dicts."""
    out = {}
    for split in ("val", "zeroshot"):
        rs = sets[split]
        if kind == PROBE_KIND:
            out[split] = dataclasses.asdict(probe_accuracy(model, rs.frames, rs.poses, split))
        elif kind == FACE_KIND:
            out[split] = dataclasses.asdict(face_accuracy(model, rs.frames, rs.poses, rs.boxes, split))
        elif kind == HEAD_KIND:
            out[split] = head_accuracy(model, rs.frames, rs.poses, split)
        else:
            out[split] = dataclasses.asdict(verification(embed_frames(model, rs.frames), rs.identity, split))
    return out


def train_instrument(kind: str, run: str | Path, cfg: InstrumentTrainConfig, data: str | Path | None = None,
                     log=print) -> dict[str, Any]:
    """Train (or resume) the probe or the identity embedding; returns its held-out accuracy."""
    torch.set_num_threads(cfg.threads)
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    all_styles = {FACE_KIND: cfg.face_all_styles, IDENTITY_KIND: cfg.identity_all_styles,
                  HEAD_KIND: cfg.head_all_styles}.get(kind, False)
    sets = load_sets(cfg, run.parent / "renders", data, all_styles=all_styles)
    if kind == PROBE_KIND:
        net_cfg: Any = ProbeConfig(stem=cfg.probe_stem)
        model: torch.nn.Module = MotionProbe(net_cfg)
    elif kind == FACE_KIND:
        net_cfg = FaceReaderConfig()
        model = FaceReader(net_cfg)
    elif kind == IDENTITY_KIND:
        net_cfg = IdentityConfig(res=cfg.identity_res, crop=cfg.identity_crop)
        model = IdentityNet(net_cfg)
    elif kind == HEAD_KIND:
        net_cfg = dataclasses.replace(HEAD_POSE_CONFIG, stem=cfg.probe_stem)
        model = HeadPoseReader(net_cfg)
    else:
        raise ValueError(f"unknown instrument {kind!r}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    step, rng, gen = 0, np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    state_path = run / "train_state.pt"
    if cfg.init_from and not state_path.is_file():
        src = Path(cfg.init_from)
        weights = load_train_state(src)["model"] if src.suffix == ".pt" else load_checkpoint(src, kind)[0]
        load_into(model, weights, str(src))
        log(f"initialised {kind} from {src}")
    if state_path.is_file():
        st = load_train_state(state_path)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, rng.bit_generator.state = st["step"], st["rng"]
        gen.set_state(st["gen"])
        log(f"resumed {kind} at step {step}")
    train = sets["train"]
    targets, emotion = encode_targets(train.poses)
    weights = torch.from_numpy(channel_weights(targets)) if cfg.balance_channels else None
    if kind == FACE_KIND:
        face_a, face_v = (torch.from_numpy(a) for a in region_anchors(train.boxes, train.frames.shape[1:3]))
        face_t = torch.from_numpy(face_targets(train.poses)[0])
    if kind == HEAD_KIND:
        head_t = torch.from_numpy(head_targets(train.poses))
    meta = {"train": dataclasses.asdict(cfg), "net": dataclasses.asdict(net_cfg)}

    def save_state() -> None:
        save_train_state(state_path, {"model": model.state_dict(), "opt": opt.state_dict(),
                                      "sched": sched.state_dict(), "step": step, "rng": rng.bit_generator.state,
                                      "gen": gen.get_state()})

    t0, losses = time.time(), []
    with open(run / "log.jsonl", "a") as logf:
        while step < cfg.steps:
            model.train()
            idx = _batch_indices(kind, train, cfg, rng)
            x = frames_to_tensor(train.frames[idx])
            if kind == FACE_KIND:
                x = style_augment(x, cfg.style_prob, gen)
            x = augment(x, cfg.blur_prob, gen)
            if kind == PROBE_KIND:
                loss = probe_loss(model, x, torch.from_numpy(targets[idx]), torch.from_numpy(emotion[idx]), weights)
            elif kind == HEAD_KIND:
                loss = head_loss(model, x, head_t[torch.from_numpy(idx)])
            elif kind == FACE_KIND:
                ti = torch.from_numpy(idx)
                loss = face_loss(model, x, face_a[ti], face_v[ti], face_t[ti], torch.from_numpy(emotion[idx]),
                                 cfg.face_jitter, gen)
            else:
                labels = torch.from_numpy(train.identity[idx])
                if cfg.identity_negatives > 0:
                    per = max(2, cfg.batch // cfg.identities_per_batch)
                    neg = degraded_negatives(train.frames[idx], per, cfg.identity_negatives, rng)
                    x = torch.cat([x, frames_to_tensor(neg)])
                    # Each damaged copy is its own identity: only ever a negative.
                    labels = torch.cat([labels, int(train.identity.max()) + 1 + torch.arange(len(neg))])
                loss = supcon_loss(model(x), labels, net_cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            if step % 50 == 0 or step == cfg.steps:
                rec = {"step": step, "loss": float(np.mean(losses)), "s": round(time.time() - t0, 1)}
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                log(json.dumps(rec))
                losses = []
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_state()
    accuracy = evaluate(kind, model, sets)
    save_checkpoint(run / "model.safetensors", model.state_dict(), meta, kind,
                    extra={"step": step, "accuracy": accuracy})
    (run / "accuracy.json").write_text(json.dumps(accuracy, indent=1))
    return accuracy


def probe_config(net: dict[str, Any]) -> ProbeConfig:
    """The ``ProbeConfig`` of a probe-shaped checkpoint's ``config.net`` (the motion probe, the head pose reader)."""
    return ProbeConfig(res=net["res"], widths=tuple(net["widths"]), feature_dim=net["feature_dim"],
                       stem=net.get("stem", 0))  # probes saved before the stem have none


def load_probe(path: str | Path) -> tuple[MotionProbe, dict[str, Any]]:
    """The trained probe and its metadata (``extra.accuracy`` holds its held-out accuracy)."""
    state, meta = load_checkpoint(path, PROBE_KIND)
    net = meta["config"]["net"]
    model = MotionProbe(probe_config(net))
    load_into(model, state, str(path))
    return model.eval(), meta


def load_face(path: str | Path) -> tuple[FaceReader, dict[str, Any]]:
    """The trained face reader and its metadata (``extra.accuracy`` holds its held-out accuracy)."""
    state, meta = load_checkpoint(path, FACE_KIND)
    net = meta["config"]["net"]
    tuples = {k: tuple(v) for k, v in net.items() if isinstance(v, list)}
    model = FaceReader(FaceReaderConfig(**{**net, **tuples}))
    load_into(model, state, str(path))
    return model.eval(), meta


def load_head(path: str | Path) -> tuple[HeadPoseReader, dict[str, Any]]:
    """The trained head pose reader and its metadata (``extra.accuracy`` holds its held-out accuracy)."""
    state, meta = load_checkpoint(path, HEAD_KIND)
    net = meta["config"]["net"]
    model = HeadPoseReader(probe_config(net))
    load_into(model, state, str(path))
    return model.eval(), meta


def load_identity(path: str | Path) -> tuple[IdentityNet, dict[str, Any]]:
    """The trained identity embedding and its metadata."""
    state, meta = load_checkpoint(path, IDENTITY_KIND)
    net = meta["config"]["net"]
    model = IdentityNet(IdentityConfig(res=net["res"], widths=tuple(net["widths"]), embed_dim=net["embed_dim"],
                                       temperature=net["temperature"], crop=net.get("crop", False)))
    load_into(model, state, str(path))
    return model.eval(), meta
