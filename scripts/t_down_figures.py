"""The tiny preset at t_down 1 and 4 side by side: DiT tokens and generator time per second of video, and the
causal VAE runs' reconstruction (``lpm train causal-vae`` eval.json files). Writes OUT/figures.json and
OUT/figures.md.

    python scripts/t_down_figures.py --out docs/bench/t_down runs/causal_vae_t1c4 runs/causal_vae_t4c16 ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch

from lpm.fsutil import atomic_write_text
from lpm.models.dit_config import preset
from lpm.models.latent_codec import load_codec, time_codec
from lpm.models.timing import time_online_chunk

FPS = 24


def at_t_down(name: str, t_down: int):
    """The preset with latent frames of ``t_down`` video frames; audio windows keep (at least) their seconds."""
    cfg = preset(name)
    scale = {k: max(1, math.ceil(getattr(cfg, k) / t_down)) for k in
             ("self_audio_before_frames", "self_audio_lookahead_frames", "partner_audio_before_frames")}
    return dataclasses.replace(cfg, t_down=t_down, **scale)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*", help="lpm train causal-vae run folders (with eval.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dit = []
    for t in (1, 4):
        cfg = at_t_down(args.preset, t)
        seconds = time_online_chunk(cfg, iters=args.iters, warmup=2, bf16=False)
        video_frames = cfg.video_frames_per_chunk
        dit.append({
            "t_down": t, "latent_frames_per_chunk": cfg.frames_per_chunk, "video_frames_per_chunk": video_frames,
            "tokens_per_latent_frame": cfg.tokens_per_frame,
            "video_tokens_per_second": FPS / t * cfg.tokens_per_frame,
            "window_seconds": (cfg.sink_chunks + cfg.window_chunks) * video_frames / FPS,
            "own_speech_lookahead_s": round(cfg.self_audio_lookahead_frames * t / FPS, 3),
            "generator_forward_ms": round(seconds * 1000, 1),
            "generator_forward_ms_per_video_second": round(seconds * 1000 * FPS / video_frames, 1),
            "fps_at_2_steps_plus_commit": round(video_frames / (3 * seconds), 1),
        })
    codecs = []
    for run in args.runs:
        result = json.loads((Path(run) / "eval.json").read_text()) | {"run": str(run)}
        # Timed again here, one codec after the other under the same load (eval.json's timing ran mid-training).
        codec, res = load_codec(run), result["resolution"]
        result["ms_per_frame"] = time_codec(codec, res, res, frames=16, budget_s=3.0, max_iters=30)
        codecs.append(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"preset": args.preset, "threads": args.threads, "device": "cpu (2 shared cores, fp32)",
              "dit": dit, "codecs": codecs}
    atomic_write_text(out / "figures.json", json.dumps(report, indent=1))
    lines = [f"# t_down 1 vs 4: the {args.preset} preset (CPU, {args.threads} thread, fp32, random weights)", "",
             "| t_down | video frames / chunk | tokens / s of video | generator forward ms | ms / s of video "
             "| fps (2 steps + commit) | own-speech lookahead s |", "|---|---|---|---|---|---|---|"]
    for d in dit:
        lines.append(f"| {d['t_down']} | {d['video_frames_per_chunk']} | {d['video_tokens_per_second']:.0f} | "
                     f"{d['generator_forward_ms']} | {d['generator_forward_ms_per_video_second']} | "
                     f"{d['fps_at_2_steps_plus_commit']} | {d['own_speech_lookahead_s']} |")
    lines += ["", "| causal VAE run | t_down | C | values / s of video | compression | steps | val PSNR dB "
              "(streamed decode) | decode ms / frame | encode ms / frame |", "|---|---|---|---|---|---|---|---|---|"]
    for c in codecs:
        lines.append(f"| {Path(c['run']).name} | {c['t_down']} | {c['latent_channels']} | "
                     f"{c['latent_values_per_second']:.0f} | {c['compression']}x | {c['step']} | {c['val_psnr_db']} | "
                     f"{c['ms_per_frame']['decode_fp32']} | {c['ms_per_frame']['encode_fp32']} |")
    atomic_write_text(out / "figures.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
