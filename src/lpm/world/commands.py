"""``lpm world synth|render|show|frames`` and ``lpm demo``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lpm.errors import LpmError


def _synth(args: argparse.Namespace) -> int:
    from lpm.world.synth import plan, synth

    try:
        specs = plan(args.clips, args.seed, args.seconds, args.res, args.split, args.styles, args.mode)
    except ValueError as e:
        raise LpmError(str(e)) from None
    t0 = time.time()
    rows = synth(args.out, specs, workers=args.workers, ray=args.ray)
    dt = time.time() - t0
    print(f"wrote {len(rows)} clips to {args.out} in {dt:.1f} s ({60 * len(rows) / max(dt, 1e-9):.1f} clips/min)")
    return 0


def _render(args: argparse.Namespace) -> int:
    from lpm.world.demo import render_world_video

    path = render_world_video(args.out, seed=args.seed, style=args.style, seconds=args.seconds, res=args.res,
                              mode=args.mode)
    print(f"wrote {path}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from lpm.world.show import contact_sheet

    out = args.out or str(Path(args.data) / "contact_sheet.png")
    print(f"wrote {contact_sheet(args.data, out, max_clips=args.clips)}")
    return 0


def _frames(args: argparse.Namespace) -> int:
    from lpm.world.frames import write_frame_sets

    counts = write_frame_sets(args.out, {"train": args.identities, "val": args.val_identities,
                                         "zeroshot": args.zeroshot_identities},
                              args.per_identity, args.res, args.seed, args.workers)
    print(f"wrote {counts} frames to {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import sys

    from lpm.world.demo import MODEL_DEMO_SECONDS, RIG_DEMO_SECONDS, render_model_demo, render_world_video

    if Path(args.checkpoint).is_file():
        import torch

        torch.set_num_threads(1)  # the session's stages already run in parallel, one core each
        path = render_model_demo(args.out, args.checkpoint, seed=args.seed, seconds=args.seconds or MODEL_DEMO_SECONDS)
        print(f"wrote {path}: {args.checkpoint} (left) beside the traditional pipeline (right), held-out character")
        return 0
    print(f"lpm demo: no model checkpoint at {args.checkpoint}: rendering the traditional pipeline only (the world's "
          "rule-driven rig)", file=sys.stderr)
    path = render_world_video(args.out, seed=args.seed, style=None, seconds=args.seconds or RIG_DEMO_SECONDS, res=256,
                              mode="conversation", split="val")
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    from lpm.data.ray_jobs import RAY_HELP
    from lpm.world.identity import ALL_STYLES

    world = groups["world"]
    p = world.add_parser("synth", help="write a data set of world clips in the clip format")
    p.add_argument("--out", required=True, help="data set directory (created; existing clips are kept)")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--styles", nargs="+", default=None, choices=ALL_STYLES)
    p.add_argument("--split", default="mixed", help="train | val | zeroshot | mixed (80/10/10)")
    p.add_argument("--mode", default=None, help="speak | listen | conversation | idle (default: drawn per clip)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS", help=RAY_HELP)
    p.set_defaults(func=_synth)

    p = world.add_parser("render", help="render one world character performing a conversation to an mp4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", default="anime", choices=ALL_STYLES)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--mode", default="conversation")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_render)

    p = world.add_parser("show", help="write a contact sheet PNG of a data set")
    p.add_argument("data")
    p.add_argument("--out", default=None, help="PNG path (default DATA/contact_sheet.png)")
    p.add_argument("--clips", type=int, default=8)
    p.set_defaults(func=_show)

    p = world.add_parser("frames", help="render random-pose frame sets (DIR/<split>.npz) for VAE training")
    p.add_argument("--out", required=True)
    p.add_argument("--identities", type=int, default=512, help="train identities")
    p.add_argument("--val-identities", type=int, default=32)
    p.add_argument("--zeroshot-identities", type=int, default=16)
    p.add_argument("--per-identity", type=int, default=16, help="random poses per identity")
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=_frames)

    p = sub.add_parser("demo", help="render a demo conversation to out/demo.mp4")
    p.add_argument("--out", default="out/demo.mp4")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--seconds", type=float, default=None, help="default 10 with the model, 12 without")
    p.add_argument("--checkpoint", default="checkpoints/online_tiny.safetensors",
                   help="DiT checkpoint shown beside the traditional pipeline (when the file exists)")
    p.set_defaults(func=_demo)
