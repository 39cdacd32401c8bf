"""``lpm train base`` (argument parsing only; the work is in ``base_trainer``)."""

from __future__ import annotations

import argparse
import json

from lpm.training.commands import add_run_arguments, config_overrides


def _train_base(args: argparse.Namespace) -> int:
    from lpm.training.base_trainer import BaseTrainer, load_base_config

    cfg = load_base_config(args.preset, args.config, config_overrides(args))
    trainer = BaseTrainer(cfg, args.data, args.vae, args.out)
    result = trainer.run()
    if trainer.info.is_main:
        print(json.dumps(result, indent=1))
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add ``lpm train base``."""
    p = groups["train"].add_parser(
        "base", help="train the Base DiT (flow matching on VAE latents); rerunning resumes",
        description="Train the bidirectional Base DiT with flow matching on latents of the train split "
                    "(encoded once into a cache); rerun the same command to resume from RUN/train_state.pt. "
                    "Runs under `torchrun --nproc_per_node N` with FSDP2.")
    p.add_argument("--data", required=True, help="clip data set (with manifest.jsonl)")
    p.add_argument("--vae", required=True, help="VAE checkpoint or run (or diffusers:/folder)")
    p.add_argument("--preset", default="tiny", help="DiT size preset (tiny, small, base, lpm-17b)")
    add_run_arguments(p, "BaseTrainConfig", "windows per step over all processes",
                      "lr=1e-4 frames=4 model.num_blocks=4 flow.shift=3")
    p.set_defaults(func=_train_base)
