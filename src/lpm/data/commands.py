"""``lpm data ...`` subcommands."""

from __future__ import annotations

import argparse

from lpm.errors import LpmError


def _clip_seconds(text: str) -> tuple[float, float]:
    """'3-8' -> (3.0, 8.0); '5' -> (5.0, 5.0)."""
    try:
        lo, _, hi = text.partition("-")
        return float(lo), float(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX seconds like 3-8, got {text!r}") from None


def _ingest(args: argparse.Namespace) -> int:
    from lpm.data.ingest import IngestOptions, ingest

    if args.fps != 24:
        raise LpmError(f"--fps: the clip format is 24 fps, got {args.fps}")
    lo, hi = args.clip_seconds
    opts = IngestOptions(res=args.res, clip_min_s=lo, clip_max_s=hi, partner_channel=args.partner_channel,
                         split=args.split, progress=not args.quiet)
    report = ingest(args.inputs, args.out, opts, ray=args.ray)
    skipped = [s for s in report.sources if s.status == "skipped"]
    dropped = ", ".join(f"{k} {v}" for k, v in report.dropped_frames.items() if v) or "none"
    print(f"ingested {report.seconds_ingested:.1f} s of footage from {len(report.sources) - len(skipped)} file(s) "
          f"into {report.clips} clips ({report.seconds_in_clips:.1f} s) in {args.out}; "
          f"{report.speed:.2f} s of footage per second; frames dropped: {dropped}")
    if report.damaged_files:
        print(f"{report.damaged_files} file(s) decoded with damage: {report.seconds_damaged:.2f} s skipped, filled or "
              f"cut off (per source in {args.out}/ingest_report.json)")
    for s in skipped:
        print(f"skipped {s.path}: {s.reason}")
    return 1 if len(skipped) == len(report.sources) else 0


def _cache(args: argparse.Namespace) -> int:
    from lpm.models.dit_config import preset
    from lpm.training.latent_cache import fill_latent_cache

    folder = fill_latent_cache(args.data, args.split, args.vae, preset(args.preset).mel, args.cache, ray=args.ray,
                               limit=args.limit, show_progress=not args.quiet)
    print(f"latent cache of {args.data} ({args.split}) complete in {folder}; train with cache_dir={args.cache}")
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    from lpm.data.ray_jobs import RAY_HELP

    p = groups["data"].add_parser("ingest", help="real footage (mp4, mkv, avi, mov, webm) into the clip format")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files or directories of them")
    p.add_argument("--out", required=True, help="data set directory (created; existing clips are kept)")
    p.add_argument("--res", type=int, default=128, help="output frame side in pixels")
    p.add_argument("--fps", type=int, default=24, help="output frame rate (the clip format fixes 24)")
    p.add_argument("--clip-seconds", type=_clip_seconds, default=(3.0, 8.0), metavar="MIN-MAX")
    p.add_argument("--partner-channel", default="auto",
                   help="auto (by voice and mouth), N (that channel is the partner) or none (all audio is self); "
                        "a file INPUT_STEM.partner.wav beside an input is used as its partner voice")
    p.add_argument("--split", default="auto", choices=("auto", "train", "val", "zeroshot"),
                   help="auto: by a hash of the source name (10%% val)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS", help=RAY_HELP + "; one task per source file")
    p.set_defaults(func=_ingest)

    p = groups["data"].add_parser("cache", help="encode a split into the Base trainer's latent cache (here or on Ray)")
    p.add_argument("--data", required=True, help="clip data set (with manifest.jsonl)")
    p.add_argument("--vae", required=True, help="codec spec: lpm VAE checkpoint or diffusers:/folder")
    p.add_argument("--cache", required=True, help="cache directory (give it to lpm train base as cache_dir=)")
    p.add_argument("--split", default="train", choices=("train", "val", "zeroshot"))
    p.add_argument("--preset", default="tiny", help="DiT preset whose mel configuration the cache holds")
    p.add_argument("--limit", type=int, default=0, help="only the first N clips of the split (0: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS", help=RAY_HELP + "; one task per clip")
    p.set_defaults(func=_cache)
