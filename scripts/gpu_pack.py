"""Carry a Base run's latent cache to a GPU machine in a small file, and rebuild the cache there.

A device call carries at most 64 MiB with the whole working tree, and the tiny Base's cache is 146 MB: its VAE
latents (96 x 8 x 16 x 16 fp16 per 4-s clip, 393 KB) are ten times the clip's mp4 (40 KB). So ``pack`` keeps the
mp4 and what the cache holds besides the latents, quantised to 8 bits where that loses nothing a training step
notices (log-mel: 0.03 steps on a range of ~14; reference latents: per channel), and ``unpack`` decodes each mp4
(OpenCV where PyAV is missing, as on the GPU machines), encodes it with the VAE on the device and writes the
cache folder the Base trainer reads (``lpm.training.latent_cache``), under the key of the carried manifest.

    python scripts/gpu_pack.py pack --data data/world128 --cache runs/base_tiny/cache --vae VAE \
        --out .gpu/pack --max-mb 30
    python scripts/gpu_pack.py unpack --pack .gpu/pack --vae VAE --cache /tmp/cache --device cuda

``pack`` writes PACK/clips.safetensors (tensors ``<id>/<field>``; ids, modes and captions in the metadata) and
PACK/data/manifest.jsonl: the source manifest's rows of the packed clips, so the carried data set's ``train``
split is exactly what was packed. Train with ``--data PACK/data cache_dir=CACHE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lpm.data.clip import read_manifest
from lpm.errors import LpmError
from lpm.fsutil import atomic_path
from lpm.training.base_trainer import load_base_config
from lpm.training.latent_cache import CachedClip, cache_key

SPLITS = ("train", "val")  # val: the first clip only (the trainer's sample clip)


def quantise(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 codes of ``x`` and ``(n, 2)`` float32 [low, high] per index of ``dim``."""
    moved = x.float().movedim(dim, 0)
    flat = moved.reshape(moved.shape[0], -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    scale = (hi - lo).clamp_min(1e-8)
    shape = (-1,) + (1,) * (moved.dim() - 1)
    codes = ((moved - lo.view(shape)) / scale.view(shape) * 255).round().clamp(0, 255).to(torch.uint8)
    return codes.movedim(0, dim).contiguous(), torch.stack([lo, hi], 1)


def dequantise(codes: torch.Tensor, ranges: torch.Tensor, dim: int) -> torch.Tensor:
    moved = codes.float().movedim(dim, 0)
    shape = (-1,) + (1,) * (moved.dim() - 1)
    lo, hi = ranges[:, 0].view(shape), ranges[:, 1].view(shape)
    return (lo + moved / 255 * (hi - lo)).movedim(0, dim).contiguous()


def _cache_folder(cache: Path, data: Path, split: str, vae: str, mel) -> Path:
    return cache / cache_key(read_manifest(data, split), vae, mel)


def pack(args: argparse.Namespace) -> None:
    data, cache, out = Path(args.data), Path(args.cache), Path(args.out)
    mel = load_base_config(args.preset, None, []).model.mel
    tensors: dict[str, torch.Tensor] = {}
    meta, rows_out, size = [], [], 0
    for split in SPLITS:
        folder = _cache_folder(cache, data, split, args.vae, mel)
        rows = read_manifest(data, split)[: 1 if split == "val" else None]
        for row in rows:
            path = folder / f"{row['id']}.pt"
            if not path.is_file():
                raise LpmError(f"{path}: not in the cache (run `lpm train base` on {data} first)")
            clip = CachedClip(**torch.load(path, weights_only=False))
            mp4 = (data / row["path"] / "video.mp4").read_bytes()
            part = {"mp4": torch.frombuffer(bytearray(mp4), dtype=torch.uint8),
                    "states": clip.states.to(torch.int8)}
            part["mel"], part["mel_range"] = quantise(clip.mel, 0)
            for kind, ref in clip.references.items():
                part[f"ref.{kind}"], part[f"ref.{kind}.range"] = quantise(ref, 0)
            if clip.pose is not None:
                part["pose"] = clip.pose.float()
            if clip.coverage is not None:
                part["coverage"] = (clip.coverage.float() * 255).round().clamp(0, 255).to(torch.uint8)
            if clip.mouth is not None:
                part["mouth"] = (clip.mouth.float() * 255).round().clamp(0, 255).to(torch.uint8)
            if clip.motion is not None:
                part["motion"] = clip.motion.float()
            nbytes = sum(t.numel() * t.element_size() for t in part.values())
            if split == "train" and args.max_mb and size + nbytes > args.max_mb * 1e6:
                break
            size += nbytes
            tensors.update({f"{row['id']}/{k}": v for k, v in part.items()})
            meta.append({"id": clip.id, "mode": clip.mode, "caption": clip.caption, "split": split,
                         "frames": int(clip.latents.shape[0])})
            rows_out.append(row)
    (out / "data").mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "clips.safetensors"), metadata={"clips": json.dumps(meta)})
    (out / "data" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_out))
    train = sum(m["split"] == "train" for m in meta)
    print(f"packed {train} train + {len(meta) - train} val clips, {size / 1e6:.1f} MB -> {out}")


def decode_mp4(data: bytes) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB: PyAV when installed (as the cache was made), else OpenCV."""
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        try:
            from lpm.data.video import read_mp4

            return read_mp4(f.name)
        except ImportError:
            import cv2

            cap, frames = cv2.VideoCapture(f.name), []
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            cap.release()
            if not frames:
                raise LpmError("OpenCV decoded no frames of a packed mp4") from None
            return np.stack(frames)


def halve(args: argparse.Namespace) -> None:
    """fp16 copies of safetensors checkpoints (metadata kept): half the bytes to carry; the loaders cast weights
    to the model's own dtype (``load_state_dict`` copies), so the copies load where the originals do."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.checkpoints:
        with safe_open(name, framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        target = out / Path(name).name
        save_file(tensors, str(target), metadata=meta)
        print(f"{name} -> {target} ({target.stat().st_size / 1e6:.1f} MB)")


@torch.no_grad()
def unpack(args: argparse.Namespace) -> None:
    from lpm.models.latent_codec import load_codec

    src, cache = Path(args.pack), Path(args.cache)
    data = src / "data"
    mel = load_base_config(args.preset, None, []).model.mel
    codec = load_codec(args.vae, device=args.device)
    folders = {}  # split -> cache folder (its key hashes the VAE file: once per split, not per clip)
    for split in SPLITS:
        folders[split] = _cache_folder(cache, data, split, args.vae, mel)
        folders[split].mkdir(parents=True, exist_ok=True)
    with safe_open(str(src / "clips.safetensors"), framework="pt") as f:
        clips = json.loads(f.metadata()["clips"])
        keys = set(f.keys())
        for m in clips:
            cid = m["id"]

            def get(name: str, _cid=cid) -> torch.Tensor:
                return f.get_tensor(f"{_cid}/{name}")

            frames = decode_mp4(get("mp4").numpy().tobytes())[: m["frames"]]
            video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            latents = torch.cat([codec.encode(part[None].to(args.device))[0].cpu() for part in video.split(32)])
            ref_names = sorted(k.split("/", 1)[1] for k in keys
                               if k.startswith(f"{cid}/ref.") and not k.endswith(".range"))  # "ref.<kind>"
            refs = {name[len("ref."):]: dequantise(get(name), get(f"{name}.range"), 0).half() for name in ref_names}
            clip = CachedClip(
                id=cid, mode=m["mode"], caption=m["caption"], latents=latents.half(),
                mel=dequantise(get("mel"), get("mel_range"), 0),
                references=refs,
                pose=get("pose") if f"{cid}/pose" in keys else None,
                coverage=get("coverage").float().div(255).half() if f"{cid}/coverage" in keys else None,
                states=get("states").long(),
                motion=get("motion") if f"{cid}/motion" in keys else None,
                mouth=get("mouth").float().div(255).half() if f"{cid}/mouth" in keys else None,
            )
            with atomic_path(folders[m["split"]] / f"{cid}.pt", ".pt") as tmp:
                torch.save(dataclasses.asdict(clip), tmp)
    print(f"unpacked {len(clips)} clips into {cache}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--data", required=True)
    a.add_argument("--cache", required=True, help="the run's cache folder (RUN/cache)")
    a.add_argument("--out", required=True)
    a.add_argument("--max-mb", type=float, default=0, help="stop adding train clips past this many MB")
    b = sub.add_parser("unpack")
    b.add_argument("--pack", required=True)
    b.add_argument("--cache", required=True)
    b.add_argument("--device", default="cpu")
    for q in (a, b):
        q.add_argument("--vae", required=True)
        q.add_argument("--preset", default="tiny", help="the DiT preset whose mel features the cache holds")
    c = sub.add_parser("halve", help="fp16 copies of checkpoints, to carry")
    c.add_argument("checkpoints", nargs="+")
    c.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        {"pack": pack, "unpack": unpack, "halve": halve}[args.cmd](args)
    except LpmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
