"""The ``lpm`` command: subcommands only; each area registers its own in its ``commands`` module."""

from __future__ import annotations

import argparse
import importlib
import sys

from lpm.errors import LpmError

# Groups of subcommands (``lpm world synth``, ``lpm train vae``, ...).
GROUPS: dict[str, str] = {
    "world": "the procedural character world: synthesize data sets, render, look at them",
    "model": "inspect model presets",
    "train": "train models",
    "distill": "distill the Base model into the causal Online model (ODE init, then DMD)",
    "data": "data sets from real footage: ingest videos into the clip format",
    "eval": "bench instruments: train and check the motion probe and identity embedding",
}

# Modules with a ``register(sub, groups)`` function adding their subcommands.
COMMAND_MODULES: tuple[str, ...] = (
    "lpm.world.commands",
    "lpm.training.commands",
    "lpm.models.commands",
    "lpm.data.commands",
    "lpm.eval.commands",
    "lpm.training.base_commands",
    "lpm.distill.commands",
    "lpm.serve.commands",
    "lpm.runtime.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpm", description="lpm: a video-based character performance model")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = {}
    for name, help_text in GROUPS.items():
        group = sub.add_parser(name, help=help_text)
        groups[name] = group.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub, groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LpmError as e:
        print(f"lpm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lpm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
