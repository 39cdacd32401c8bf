"""The Base trainer's latent cache: every clip of a split encoded once (VAE latents, reference latents,
log-mel of both voices, pose, mouth/eye coverage), one file per clip, keyed on the data and the VAE.

Encoding mp4s with the VAE at every step would cost more than the step on CPU. Per-clip files make the
first (slow) pass resumable: a killed run picks up the encoding where it stopped.

Layout: ``CACHE/<key>/<clip id>.pt`` where ``key`` hashes the split's manifest rows, the VAE checkpoint's
bytes, the mel configuration and ``CACHE_VERSION``; a new VAE or data set gets a new folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lpm.audio.mel import LogMel, MelConfig, per_latent_frame
from lpm.data.clip import read_clip, read_manifest
from lpm.errors import LpmError
from lpm.fsutil import file_digest
from lpm.models.latent_codec import LatentCodec
from lpm.training.face_weights import EXPRESSION_FEATURES, FACE_FEATURES, face_coverage
from lpm.world.motion import MOTION_NAMES

CACHE_VERSION = 3  # bump when the cached content changes (2: full motion and the mouth-only map; 3: expression map)
POSE_CHANNELS = ("head_yaw", "head_pitch", "head_roll", "body_yaw")  # the DiT's pose track, degrees
SELF_CHANNEL, PARTNER_CHANNEL = 0, 1  # clip audio rows (ARCHITECTURE.md clip format)


@dataclass
class CachedClip:
    """One clip, encoded.

    Attributes:
        latents: ``(F, C, h, w)`` float16 normalised VAE latents.
        mel: ``(2, F, k, M)`` float32 log-mel, row 0 own voice, row 1 partner.
        references: kind -> ``(C, h, w)`` float16 latents of the reference images.
        pose: ``(F, 4)`` degrees (``POSE_CHANNELS``) or None.
        coverage: ``(F, h, w)`` float16 mouth/eye coverage of each latent cell, or None.
        states: ``(F,)`` int64 speak / listen / idle per frame.
        motion: ``(F, NUM_MOTION)`` float32 ground-truth motion in ``MOTION_NAMES`` order (world clips), or None.
        mouth: ``(F, h, w)`` float16 mouth-only coverage of each latent cell, or None.
        expression: ``(F, h, w)`` float16 brows-and-cheeks coverage of each latent cell, or None.
    """

    id: str
    mode: str  # speak | listen | conversation | idle (the clip's behaviour mix), "" when unknown
    caption: str
    latents: torch.Tensor
    mel: torch.Tensor
    references: dict[str, torch.Tensor]
    pose: torch.Tensor | None
    coverage: torch.Tensor | None
    states: torch.Tensor
    motion: torch.Tensor | None = None
    mouth: torch.Tensor | None = None
    expression: torch.Tensor | None = None

    @property
    def frames(self) -> int:
        return self.latents.shape[0]


def cache_key(rows: list[dict], vae_spec: str, mel: MelConfig) -> str:
    """Hash of the manifest rows, the VAE (file bytes, or the spec of a non-file codec) and the mel config."""
    vae_path = Path(vae_spec)
    if vae_path.is_dir():
        vae_path = vae_path / "vae.safetensors"
    vae_id = file_digest(vae_path) if vae_path.is_file() else vae_spec
    text = json.dumps([CACHE_VERSION, rows, vae_id, dataclasses.asdict(mel)], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@torch.no_grad()
def encode_clip(clip_dir: Path, codec: LatentCodec, log_mel: LogMel, frames_per_batch: int = 32,
                device: str = "cpu") -> CachedClip:
    """Read one clip and encode everything the Base trainer needs.

    With a temporally compressing codec (``codec.t_down`` = T > 1) every per-frame field is per *latent* frame, so
    the trainer's windows, weights and tracks need no other change: the clip is cut to a whole number of T-frame
    groups, encoded in one causal pass, and each group's mel steps stacked (``(2, F / T, T k, M)``: the DiT's
    ``mel_steps_per_frame``), its motion and pose averaged, its state the group's last frame's, its coverage maps
    the maximum over the group (``group_frames``)."""
    clip = read_clip(clip_dir)
    video = clip.video  # (F, 3, H, W)
    t = codec.t_down
    video = video[: video.shape[0] // t * t]  # whole latent frames (all of it at t = 1)
    if not len(video):
        raise LpmError(f"{clip_dir}: fewer than t_down = {t} frames")
    f, _, h, w = video.shape
    if t > 1:  # a causal codec carries state across frames: the whole clip in one pass
        latents = codec.encode(video[None].to(device))[0].cpu()  # (F / T, C, h, w)
    else:
        latents = torch.cat([codec.encode(part[None].to(device))[0].cpu()
                             for part in video.split(frames_per_batch)])  # (F, C, h, w)
    refs = {}
    for kind, image in clip.refs.items():
        if image.shape[-2:] != (h, w):
            image = F.interpolate(image[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
        refs[kind] = codec.encode_images(image[None].to(device))[0].cpu().half()  # (C, h, w)
    mel = frame_mel(log_mel, clip.audio[[SELF_CHANNEL, PARTNER_CHANNEL]], f)  # (2, F, k, M)
    pose = None
    if clip.motion is not None and all(n in clip.motion_names for n in POSE_CHANNELS):
        pose = clip.motion[:, [clip.motion_names.index(n) for n in POSE_CHANNELS]].clone()  # (F, 4)
    down = h // latents.shape[-2]
    maps = face_coverage(clip.meta.extra, clip.meta.style, clip.motion, clip.motion_names, h, w, down,
                         (FACE_FEATURES, ("mouth",), EXPRESSION_FEATURES))
    coverage, mouth, expression = maps if maps is not None else (None, None, None)
    motion = None
    if clip.motion is not None and all(n in clip.motion_names for n in MOTION_NAMES):
        motion = clip.motion[:, [clip.motion_names.index(n) for n in MOTION_NAMES]].float().clone()  # (F, P)
    cached = CachedClip(
        id=clip.meta.id, mode=str(clip.meta.extra.get("mode", "")), caption=clip.meta.caption,
        latents=latents.half(), mel=mel, references=refs, pose=None if pose is None else pose[:f],
        coverage=None if coverage is None else coverage[:f].half(), states=clip.states[:f],
        motion=None if motion is None else motion[:f], mouth=None if mouth is None else mouth[:f].half(),
        expression=None if expression is None else expression[:f].half(),
    )
    return group_frames(cached, t) if t > 1 else cached


def group_frames(clip: CachedClip, t: int) -> CachedClip:
    """A per-video-frame cached clip (``F`` frames of everything but ``latents``, which has ``F / t``) as one per
    latent frame of ``t`` video frames (see ``encode_clip``)."""
    f = clip.mel.shape[1]
    if f % t or clip.latents.shape[0] != f // t:
        raise LpmError(f"clip {clip.id}: {f} video frames and {clip.latents.shape[0]} latent frames do not make "
                       f"groups of t_down = {t}")
    n = f // t

    def mean(x):
        return None if x is None else x.reshape(n, t, *x.shape[1:]).float().mean(1)

    def peak(x):
        return None if x is None else x.reshape(n, t, *x.shape[1:]).amax(1)

    return dataclasses.replace(clip, mel=per_latent_frame(clip.mel, t).contiguous(), pose=mean(clip.pose),
                               motion=mean(clip.motion), states=clip.states[t - 1::t].clone(),
                               coverage=peak(clip.coverage), mouth=peak(clip.mouth), expression=peak(clip.expression))


def frame_mel(log_mel: LogMel, pcm: torch.Tensor, frames: int) -> torch.Tensor:
    """Log-mel of a clip's two voices cut to exactly ``frames`` frames: ``(2, T) -> (2, frames, k, M)``; audio a
    frame short at the end (allowed by the clip format) is padded with silence."""
    mel = log_mel(pcm.float())  # (2, F', k, M)
    if mel.shape[1] < frames:
        pad = torch.full((2, frames - mel.shape[1], *mel.shape[2:]), silent_mel(log_mel.cfg))
        mel = torch.cat([mel, pad], 1)
    return mel[:, :frames].contiguous()


def silent_mel(cfg: MelConfig) -> float:
    """The log-mel of zero PCM: ``log(0 + log_floor)`` in every band."""
    return float(torch.log(torch.tensor(cfg.log_floor)).item())


def load_latent_cache(data_dir: str | Path, split: str, codec: LatentCodec, vae_spec: str, mel: MelConfig,
                      cache_dir: str | Path, limit: int = 0, device: str = "cpu",
                      show_progress: bool = True) -> list[CachedClip]:
    """The split's clips from the cache, encoding (and caching) the ones not there yet.

    Args:
        limit: only the first ``limit`` clips of the split (0 = all).
        show_progress: a tqdm bar while encoding.
    """
    rows = read_manifest(data_dir, split)
    if limit > 0:
        rows = rows[:limit]
    if not rows:
        return []
    folder = Path(cache_dir) / cache_key(read_manifest(data_dir, split), vae_spec, mel)
    folder.mkdir(parents=True, exist_ok=True)
    log_mel = LogMel(mel)
    out = []
    missing = [r for r in rows if not (folder / f"{r['id']}.pt").is_file()]
    bar = tqdm(total=len(missing), desc=f"encoding {split} clips", disable=not show_progress or not missing,
               leave=False)
    for row in rows:
        path = folder / f"{row['id']}.pt"
        if path.is_file():
            out.append(CachedClip(**torch.load(path, weights_only=False)))
            continue
        clip = encode_clip(Path(data_dir) / row["path"], codec, log_mel, device=device)
        write_cached(path, clip)
        out.append(clip)
        bar.update(1)
    bar.close()
    sizes = {c.latents.shape[1:] for c in out}
    if len(sizes) != 1:
        raise LpmError(f"{data_dir} split {split}: clips of different latent sizes {sorted(sizes)}")
    return out


def write_cached(path: Path, clip: CachedClip) -> None:
    """One clip's cache file, atomically: a kill never leaves a half-written clip."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per writer: two workers never share a temp file
    torch.save(dataclasses.asdict(clip), tmp)
    os.replace(tmp, path)


_CODECS: dict[tuple[str, str], LatentCodec] = {}  # per Ray worker process: each codec is loaded once


def _encode_task(clip_dir: Path, path: Path, vae_spec: str, mel: MelConfig, device: str) -> str:
    """One Ray task: encode a clip with the codec of ``vae_spec`` (loaded once per worker) into ``path``."""
    from lpm.models.latent_codec import load_codec

    key = (vae_spec, device)
    if key not in _CODECS:
        _CODECS[key] = load_codec(vae_spec, device=device)
    write_cached(path, encode_clip(clip_dir, _CODECS[key], LogMel(mel), device=device))
    return path.stem


def fill_latent_cache(data_dir: str | Path, split: str, vae_spec: str, mel: MelConfig, cache_dir: str | Path,
                      ray: str | None = None, limit: int = 0, device: str = "cpu",
                      show_progress: bool = True) -> Path:
    """Encode the split's clips missing from the cache ahead of training: here, or as Ray tasks (one per clip) with
    ``ray`` = ``auto`` or a cluster address.

    Writes the very files ``load_latent_cache`` writes (same folder key, same ``encode_clip``), so a trainer
    given this ``cache_dir`` finds them; clips already cached are skipped (a rerun resumes).

    Returns:
        The cache folder (``cache_dir/<key>``).
    """
    rows = read_manifest(data_dir, split)
    folder = Path(cache_dir) / cache_key(rows, vae_spec, mel)
    folder.mkdir(parents=True, exist_ok=True)
    rows = rows[:limit] if limit > 0 else rows
    missing = [(Path(data_dir) / r["path"], folder / f"{r['id']}.pt", vae_spec, mel, device) for r in rows
               if not (folder / f"{r['id']}.pt").is_file()]
    with tqdm(total=len(rows), initial=len(rows) - len(missing), desc=f"encoding {split} clips",
              disable=not show_progress) as bar:
        if ray:
            from lpm.data.ray_jobs import ray_map

            done = ray_map(_encode_task, missing, ray)
        else:
            done = (_encode_task(*item) for item in missing)
        for _ in done:
            bar.update(1)
    return folder
