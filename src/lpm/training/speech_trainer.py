"""``lpm train speech``: the speech -> motion network (``lpm.models.motion_track.SpeechMotion``) on world truth.

Supervised regression of the motion track from both voices' log-mel: own speech -> mouth, partner speech ->
listening reactions. It needs no video, so it reads only ``audio.wav`` and ``motion.npz`` and trains in minutes on
the CPU. The result is loaded into a DiT before the Base trains (``lpm train base speech=PATH``) and frozen there.

Run directory:
```
RUN/config.json            the resolved SpeechTrainConfig
RUN/log.jsonl              step, loss, lr (and val_loss / val_r_<channel> at every eval)
RUN/speech.safetensors     the network's weights, kind "speech_motion", the DiT config it fits in the metadata
RUN/train_state.pt         weights, optimizer, step (a rerun resumes)
RUN/eval.json              Pearson r per channel on the val split, own vs shuffled voices
```
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from lpm.audio.mel import LogMel
from lpm.config import ConfigError, load_config, to_dict
from lpm.data.clip import read_clip, read_manifest
from lpm.errors import LpmError
from lpm.events import EventMatch, match_events
from lpm.models.dit_config import DiTConfig, preset
from lpm.models.motion_track import SpeechMotion, load_speech, save_speech, speech_network, to_track
from lpm.models.reactions import estimate_templates, fire, onset_events, onset_targets, place
from lpm.training.checkpoint import load_into, load_train_state, save_train_state
from lpm.training.latent_cache import PARTNER_CHANNEL, SELF_CHANNEL, frame_mel, silent_mel
from lpm.training.partner_cues import CUE_KINDS, CueHead, cue_targets, partner_cue_frames


@dataclass
class SpeechTrainConfig:
    """Everything ``lpm train speech`` reads; saved as RUN/config.json."""

    preset: str = "tiny"  # the DiT preset whose speech network (mel layout, channels, width) is trained
    steps: int = 3000  # optimizer steps in total (a rerun with a larger value continues)
    batch: int = 32  # windows per step
    frames: int = 48  # frames per window (the loss is on all of them; the audio adds the network's history)
    lr: float = 2e-3  # peak AdamW learning rate (warm-up, cosine to 5 %)
    warmup_steps: int = 100
    weight_decay: float = 0.01
    eval_every: int = 500  # steps between val evaluations (and checkpoints)
    clips: int = 0  # train clips of --data used (0 = all)
    # More training clips drawn from the world in memory (audio and motion only, nothing rendered or written:
    # ~0.1 s each), train identities of seed ``world_seed``: the listening channels need more than a data set's
    # few hundred clips (val r of head_pitch / brow_raise flat from step 1,000 on 248 clips while train loss fell).
    world_clips: int = 0
    world_seed: int = 1
    world_seconds: float = 8.0
    # Weight of the reaction onsets' cross-entropy (per frame and kind; onsets are ~1 % of frames, so its mean is
    # small beside the track's variance-normalised error).
    onset_weight: float = 10.0
    # Weight of the partner cues' cross-entropy (``lpm.training.partner_cues``: a phrase / a question ended, a laugh
    # began; per frame, from the clip's script) on the network's features through an auxiliary head; 0 = off.
    cue_weight: float = 10.0
    # Share of windows whose caption is dropped (""): the network must give the caption-free track too (text
    # dropout in the DiT's training, a session without text control).
    caption_dropout: float = 0.1
    threads: int = 0  # torch CPU threads (0 = torch's default)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or self.frames < 1:
            raise ConfigError("steps must be >= 0, batch and frames >= 1")
        if self.cue_weight < 0 or self.onset_weight < 0:
            raise ConfigError(f"onset_weight and cue_weight must be >= 0, got {self.onset_weight}, {self.cue_weight}")
        if not 0 <= self.caption_dropout <= 1:
            raise ConfigError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")


@dataclass
class SpeechClip:
    """One clip's inputs and targets: ``mel (2, F, k, M)`` (own, partner), ``track (F, P)``, the listening
    reactions' ``onsets (F, R)`` (``lpm.models.reactions.onset_targets``; R = 0 without reactions), the
    caption (the text control) and the partner's ``cues (F, len(CUE_KINDS))`` (``partner_cues.cue_targets``; None
    for a clip without a script)."""

    id: str
    mel: torch.Tensor
    track: torch.Tensor
    onsets: torch.Tensor
    caption: str = ""
    cues: torch.Tensor | None = None


@dataclass
class SpeechWindows:
    """A batch of training windows (``window_batch``).

    Attributes:
        mel: ``(2, B, before + F + after, k, M)`` own and partner log-mel (silence outside the clip).
        track: ``(B, F, P)`` target track; onsets: ``(B, F, R)``; captions: the B captions.
        cues: ``(B, F, len(CUE_KINDS))`` partner cue targets (zeros where a clip has none); has_cues: ``(B,)`` bool.
    """

    mel: torch.Tensor
    track: torch.Tensor
    onsets: torch.Tensor
    captions: list[str]
    cues: torch.Tensor
    has_cues: torch.Tensor


def _events(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(str(e["type"]), int(e["frame"])) for e in events]


def load_speech_clips(data_dir: str | Path, split: str, dit: DiTConfig, limit: int = 0) -> list[SpeechClip]:
    """Every clip of ``split`` with motion, as log-mel and track (no video is decoded)."""
    rows = read_manifest(data_dir, split)
    if limit > 0:
        rows = rows[:limit]
    log_mel = LogMel(dit.mel)
    out = []
    for row in tqdm(rows, desc=f"reading {split} audio", leave=False):
        clip = read_clip(Path(data_dir) / row["path"], load_video=False)
        if clip.motion is None:
            continue
        n = clip.motion.shape[0]
        mel = frame_mel(log_mel, clip.audio[[SELF_CHANNEL, PARTNER_CHANNEL]], n)
        segments = clip.meta.extra.get("segments")
        cues = (cue_targets(partner_cue_frames(segments, clip.meta.fps, clip.meta.sample_rate), n)
                if isinstance(segments, list) else None)
        out.append(SpeechClip(clip.meta.id, mel, to_track(clip.motion, clip.motion_names, dit.motion_channels),
                              onset_targets(_events(clip.meta.events), dit.reaction_kinds, n), clip.meta.caption,
                              cues))
    return out


def world_speech_clips(count: int, seed: int, seconds: float, dit: DiTConfig) -> list[SpeechClip]:
    """``count`` train-split world clips made in memory (``lpm.world.synth.make_clip``: audio and motion).

    Made in a worker process, a fresh one for every ``WORLD_CLIPS_PER_WORKER`` clips: making a clip leaves ~9 MB
    behind in the process that made it (2,000 clips held 18 GB), which the worker's exit returns. (One pool per
    block rather than ``max_tasks_per_child``: the replaced worker broke the pool under Python 3.11.)"""
    from lpm.world.synth import plan

    specs = plan(count, seed, seconds, 128, split="train")
    out: list[SpeechClip] = []
    context = multiprocessing.get_context("spawn")  # no forked copy of the parent's torch threads
    with tqdm(total=len(specs), desc="world clips (audio + motion)", leave=False) as bar:
        for first in range(0, len(specs), WORLD_CLIPS_PER_WORKER):
            block = specs[first:first + WORLD_CLIPS_PER_WORKER]
            tasks = [block[i:i + WORLD_CLIPS_PER_TASK] for i in range(0, len(block), WORLD_CLIPS_PER_TASK)]
            with ProcessPoolExecutor(1, mp_context=context, initializer=torch.set_num_threads,
                                     initargs=(1,)) as pool:
                for clips in pool.map(_speech_clips_of, tasks, [dit] * len(tasks)):
                    out.extend(clips)
                    bar.update(len(clips))
    return out


WORLD_CLIPS_PER_TASK = 10
WORLD_CLIPS_PER_WORKER = 200


def _speech_clips_of(specs: list, dit: DiTConfig) -> list[SpeechClip]:
    """The speech network's inputs and targets of world clip specs (run in a worker of ``world_speech_clips``)."""
    from lpm.world.motion import MOTION_NAMES
    from lpm.world.synth import FPS, SAMPLE_RATE, make_clip

    log_mel = LogMel(dit.mel)
    out = []
    for spec in specs:
        clip = make_clip(spec)
        motion = torch.from_numpy(clip.performance.motion.astype(np.float32))  # (F, NUM_MOTION)
        n = motion.shape[0]
        mel = frame_mel(log_mel, torch.from_numpy(clip.conversation.stereo()), n)  # (2, F, k, M)
        cues = cue_targets(partner_cue_frames([s.to_dict() for s in clip.conversation.segments], FPS, SAMPLE_RATE), n)
        out.append(SpeechClip(spec.clip_id, mel, to_track(motion, MOTION_NAMES, dit.motion_channels),
                              onset_targets(_events(clip.performance.events), dit.reaction_kinds, n), clip.caption,
                              cues))
    return out


def window_batch(clips: list[SpeechClip], rng: np.random.Generator, size: int, frames: int, before: int,
                 after: int, silent: float,
                 caption_dropout: float = 0.0) -> SpeechWindows:
    """``size`` random windows of ``frames`` frames with ``before`` / ``after`` frames of audio around them (each
    caption "" with ``caption_dropout``)."""
    mels, tracks, onsets, captions, cues = [], [], [], [], []
    for _ in range(size):
        clip = clips[int(rng.integers(len(clips)))]
        n = clip.track.shape[0]
        f = min(frames, n)
        start = int(rng.integers(0, n - f + 1))
        idx = torch.arange(start - before, start + frames + after)
        inside = (idx >= 0) & (idx < n)
        mel = clip.mel[:, idx.clamp(0, n - 1)].clone()  # (2, Fa, k, M)
        mel[:, ~inside] = silent
        frame_idx = torch.arange(start, start + frames).clamp(max=n - 1)
        mels.append(mel)
        tracks.append(clip.track[frame_idx])
        onsets.append(clip.onsets[frame_idx])
        captions.append("" if rng.random() < caption_dropout else clip.caption)
        cues.append(clip.cues[frame_idx] if clip.cues is not None else None)
    has = torch.tensor([c is not None for c in cues])
    blank = torch.zeros(frames, len(CUE_KINDS))
    return SpeechWindows(torch.stack(mels, 1), torch.stack(tracks), torch.stack(onsets), captions,
                         torch.stack([c if c is not None else blank for c in cues]), has)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson r of two flat tensors (0 when either is constant)."""
    a, b = a.flatten().double() - a.double().mean(), b.flatten().double() - b.double().mean()
    denom = (a.square().sum() * b.square().sum()).sqrt()
    return float((a * b).sum() / denom) if denom > 0 else 0.0


@torch.no_grad()
def evaluate(net: SpeechMotion, clips: list[SpeechClip], shuffle_self: bool = False) -> dict[str, Any]:
    """Pearson r per channel over whole clips (the clip's audio from its start, as streaming sees it), and MSE.

    ``shuffle_self`` gives every clip another clip's own voice: the r of the mouth channels must collapse, which
    validates that the figures measure the audio, not the channels' means."""
    net.eval()
    preds, truths, match = [], [], EventMatch(0, 0, 0, [])
    for i, clip in enumerate(clips):
        mel_self = clips[(i + 1) % len(clips)].mel[0] if shuffle_self else clip.mel[0]
        n = min(mel_self.shape[0], clip.mel.shape[1])
        track, logits = net.heads(mel_self[None, :n], clip.mel[1][None, :n], [clip.caption])
        if logits is not None:
            fired = net.onsets(logits)  # (1, n, R)
            track = net.with_reactions(track, fired)
            match = match + match_events(onset_events(clip.onsets[:n], net.reactions),
                                         onset_events(fired[0], net.reactions))
        preds.append(track[0])
        truths.append(clip.track[:n])
    pred, truth = torch.cat(preds), torch.cat(truths)  # (N, P)
    net.train()
    r = {c: pearson(pred[:, j], truth[:, j]) for j, c in enumerate(net.channels)}
    out = {"r": r, "mse": float((pred - truth).square().mean())}
    if net.reactions:
        hits = match.true_positives
        delay = sum(d.frame - t.frame for t, d in match.pairs) / hits if hits else float("nan")
        out["reactions"] = {"f1": match.f1, "true": hits + match.false_negatives,
                            "fired": hits + match.false_positives, "hits": hits, "delay_frames_mean": delay}
    return out


# Frames after a partner cue in which ``reactions_after_cues`` counts fired reactions (the world reacts 0.2-0.6 s
# after the cue; a nod's onset is matched within 8 frames).
AFTER_CUE_FRAMES = 20


@torch.no_grad()
def reactions_after_cues(net: SpeechMotion, clips: list[SpeechClip]) -> dict[str, dict[str, float]]:
    """Per partner cue kind (``CUE_KINDS``), the mean number of reactions of each kind the network fires within
    ``AFTER_CUE_FRAMES`` frames after the cue, over the cues of ``clips`` that have a script. The world answers a
    phrase end with a nod (85 %), a question with a brow raise (60 %) or a head tilt: a network that cannot tell
    them apart fires the same after both. Cues with no frames after them in the clip are left out."""
    was_training = net.training
    net.eval()
    sums = {k: torch.zeros(len(net.reactions)) for k in CUE_KINDS}
    counts = dict.fromkeys(CUE_KINDS, 0)
    for c in clips:
        if c.cues is None or not net.reactions:
            continue
        fired = net.onsets(net.heads(c.mel[0][None], c.mel[1][None], [c.caption])[1])[0]  # (F, R)
        starts = (c.cues[1:] > c.cues[:-1]).nonzero()  # the frames each cue's target rises
        for frame, k in starts.tolist():
            frame += 1
            if frame + AFTER_CUE_FRAMES > fired.shape[0]:
                continue
            sums[CUE_KINDS[k]] += fired[frame:frame + AFTER_CUE_FRAMES].sum(0)
            counts[CUE_KINDS[k]] += 1
    net.train(was_training)
    return {k: {"cues": counts[k], **{r: round(float(sums[k][i]) / max(1, counts[k]), 3)
                                      for i, r in enumerate(net.reactions)}} for k in CUE_KINDS}


def load_speech_into(speech_motion: torch.nn.Module, path: str | Path, dit: DiTConfig) -> dict[str, Any]:
    """Load a ``lpm train speech`` checkpoint into a DiT's ``speech_motion`` (``motion_track.load_speech``
    checks that it fits); returns the checkpoint's extra metadata."""
    state, extra = load_speech(path, dit)
    load_into(speech_motion, state, source=str(path))
    return extra


# Train clips the reactions' firing level is calibrated on (their onsets; the fired track is not compared).
CALIBRATION_CLIPS = 400
# 0.02 .. 0.1 finely (a hazard spread over more frames than the window sums low), then 0.15 .. 0.9.
FIRE_LEVELS = tuple(round(0.02 * k, 2) for k in range(1, 5)) + tuple(round(0.05 * k, 2) for k in range(2, 19))


@torch.no_grad()
def calibrate_fire_level(net: SpeechMotion, clips: list[SpeechClip]) -> dict[float, float]:
    """Set ``net.fire_level`` to the level whose fired onsets match ``clips``' true ones best (onset F1 over
    ``FIRE_LEVELS``; ties go to the higher level, fewer reactions). Returns the F1 of each level.

    Why: the hazard is trained as per-frame probabilities, but how much of a reaction's probability a window holds
    depends on how sharply the network places the cue; the level that fires the right number of reactions is
    measured, not assumed."""
    was_training = net.training
    net.eval()
    hazards = [(torch.sigmoid(net.heads(c.mel[0][None], c.mel[1][None], [c.caption])[1]), c.onsets) for c in clips]
    f1 = {}
    for level in FIRE_LEVELS:
        match = EventMatch(0, 0, 0, [])
        for h, true in hazards:
            match = match + match_events(onset_events(true[:h.shape[1]], net.reactions),
                                         onset_events(fire(h, net.reaction_window, level)[0], net.reactions))
        f1[level] = 0.0 if math.isnan(match.f1) else match.f1
    best = max(FIRE_LEVELS, key=lambda lv: (f1[lv], lv))
    net.fire_level.fill_(best)
    net.train(was_training)
    return f1


class SpeechTrainer:
    """One ``lpm train speech`` run (resumable)."""

    def __init__(self, cfg: SpeechTrainConfig, data_dir: str | Path, run_dir: str | Path) -> None:
        self.cfg, self.data_dir, self.run_dir = cfg, Path(data_dir), Path(run_dir)
        self.dit = preset(cfg.preset)
        if not self.dit.motion_channels:
            raise ConfigError(f"preset {cfg.preset!r} has no motion track (motion_channels is empty)")
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if step <= cfg.warmup_steps:
            return cfg.lr * step / max(1, cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    def run(self) -> dict[str, Any]:
        cfg, dit = self.cfg, self.dit
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
        train = load_speech_clips(self.data_dir, "train", dit, cfg.clips)
        if cfg.world_clips:
            train += world_speech_clips(cfg.world_clips, cfg.world_seed, cfg.world_seconds, dit)
        val = load_speech_clips(self.data_dir, "val", dit)
        if not train:
            raise LpmError(f"{self.data_dir}: no train clips with motion.npz (world clips) to learn from")
        torch.manual_seed(cfg.seed)
        net = speech_network(dit)
        if net.reactions:
            # The reactions' shapes from the data; the regression then learns the track without them.
            net.templates.copy_(estimate_templates([c.track for c in train], [c.onsets for c in train],
                                                   dit.reaction_frames))
            for c in train:
                c.track = c.track - place(c.onsets[None], net.templates)[0]
            self.calibration_clips = train[:CALIBRATION_CLIPS]
            counts = torch.cat([c.onsets for c in train]).sum(0)
            print("reaction onsets in train: " + ", ".join(f"{k} {int(v)}" for k, v in zip(net.reactions, counts)),
                  flush=True)
        cue_head = CueHead(net.norm.normalized_shape[0])
        params = list(net.parameters()) + (list(cue_head.parameters()) if cfg.cue_weight > 0 else [])
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # Each channel's error in units of its variance, so small channels (nods, brows) count as much as the jaw.
        all_tracks = torch.cat([c.track for c in train])
        inv_var = 1.0 / all_tracks.var(0).clamp(min=1e-4)  # (P,)
        step, state_path = 0, self.run_dir / "train_state.pt"
        if state_path.is_file():
            state = load_train_state(state_path)
            net.load_state_dict(state["model"])
            if "cue_head" in state:
                cue_head.load_state_dict(state["cue_head"])
            if (len(state["optimizer"]["param_groups"][0]["params"]) != len(params)):
                raise ConfigError(f"{state_path} was trained with cue_weight {'0' if cfg.cue_weight else '> 0'}: "
                                  f"resume it with the same cue_weight (the optimizer's parameters differ)")
            opt.load_state_dict(state["optimizer"])
            step = int(state["step"])
            print(f"resuming from step {step}", flush=True)
        before, after = dit.speech_history_frames, dit.self_audio_lookahead_frames
        silent = silent_mel(dit.mel)
        log = (self.run_dir / "log.jsonl").open("a")
        bar = tqdm(total=cfg.steps, initial=step, desc="train speech", dynamic_ncols=True)
        result: dict[str, Any] = {}
        t0 = time.perf_counter()
        while step < cfg.steps:
            step += 1
            rng = np.random.default_rng([cfg.seed, step])
            w = window_batch(train, rng, cfg.batch, cfg.frames, before, after, silent, cfg.caption_dropout)
            h = net.features(w.mel[0], w.mel[1], w.captions)  # (B, Fa, D)
            pred, logits = net.heads_of(h)
            pred = pred[:, before:before + cfg.frames]  # (B, F, P)
            loss = ((pred - w.track).square() * inv_var).mean()
            if logits is not None:  # the onset hazard: a per-frame cross-entropy (its sums must be probabilities)
                logits = logits[:, before:before + cfg.frames]  # (B, F, R)
                loss = loss + cfg.onset_weight * F.binary_cross_entropy_with_logits(logits, w.onsets)
            cue_loss = None
            if cfg.cue_weight > 0:
                cue_loss = cue_head.loss(h[:, before:before + cfg.frames], w.cues, w.has_cues)
                loss = loss + cfg.cue_weight * cue_loss
            for g in opt.param_groups:
                g["lr"] = self.lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            row: dict[str, Any] = {"step": step, "loss": loss.item(), "lr": self.lr_at(step)}
            if cue_loss is not None:
                row["cue_loss"] = cue_loss.item()
            if step % cfg.eval_every == 0 or step == cfg.steps:
                result = self._checkpoint(net, cue_head, opt, step, val or train, time.perf_counter() - t0)
                row.update({"val_mse": result["val"]["mse"],
                            **{f"val_r_{k}": v for k, v in result["val"]["r"].items()}})
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        log.close()
        if not result:
            result = self._checkpoint(net, cue_head, opt, step, val or train, time.perf_counter() - t0)
        return result

    def _checkpoint(self, net: SpeechMotion, cue_head: CueHead, opt: torch.optim.Optimizer, step: int,
                    val: list[SpeechClip], seconds: float) -> dict[str, Any]:
        calibration = calibrate_fire_level(net, self.calibration_clips) if net.reactions else {}
        right, shuffled = evaluate(net, val), evaluate(net, val, shuffle_self=True)
        result = {"step": step, "val": right, "val_shuffled_own_voice": shuffled, "train_seconds": round(seconds)}
        if net.reactions:
            result["fire_level"] = round(float(net.fire_level), 4)
            result["calibration_onset_f1"] = calibration
            result["reactions_after_cues"] = reactions_after_cues(net, self.calibration_clips)
        save_speech(self.run_dir / "speech.safetensors", net, self.dit, {"step": step, "val_r": right["r"]})
        save_train_state(self.run_dir / "train_state.pt",
                         {"step": step, "model": net.state_dict(), "optimizer": opt.state_dict(),
                          "cue_head": cue_head.state_dict()})
        (self.run_dir / "eval.json").write_text(json.dumps(result, indent=1))
        return result


def load_speech_config(yaml_path: str | None, overrides: list[str]) -> SpeechTrainConfig:
    return load_config(SpeechTrainConfig, yaml_path=yaml_path, overrides=overrides)
