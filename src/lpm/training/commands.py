"""``lpm train ...`` subcommands (argument parsing only; the work is in the trainers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides of a train command, with ``--steps`` / ``--batch`` as shorthands.

    The shorthands come last, so they win over the YAML file like any override.
    """
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if args.batch is not None:
        overrides.append(f"batch={args.batch}")
    return overrides


def add_run_arguments(p: argparse.ArgumentParser, config_class: str, batch_help: str, example: str) -> None:
    """The arguments every resumable train command shares: --out, --steps, --batch, --config, key=value."""
    p.add_argument("--out", required=True, help="run directory (created; resumed if it holds a run)")
    p.add_argument("--steps", type=int, help="total optimizer steps (config key steps)")
    p.add_argument("--batch", type=int, help=f"{batch_help} (config key batch)")
    p.add_argument("--config", help=f"YAML file with {config_class} keys")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {example}")


def _train_vae(args: argparse.Namespace) -> int:
    from lpm.training.vae_trainer import VAETrainer, load_train_config

    cfg = load_train_config(args.config, config_overrides(args))
    result = VAETrainer(cfg, args.data, args.out).run()
    print(json.dumps(result, indent=1))
    return 0


def _train_speech(args: argparse.Namespace) -> int:
    from lpm.training.speech_trainer import SpeechTrainer, load_speech_config

    cfg = load_speech_config(args.config, config_overrides(args))
    result = SpeechTrainer(cfg, args.data, args.out).run()
    print(json.dumps(result, indent=1))
    return 0


def _train_causal_vae(args: argparse.Namespace) -> int:
    from lpm.training.causal_vae_trainer import CausalVAETrainer, load_causal_vae_config

    cfg = load_causal_vae_config(args.config, config_overrides(args))
    result = CausalVAETrainer(cfg, args.data, args.out).run()
    print(json.dumps(result, indent=1))
    return 0


def _train_restorer(args: argparse.Namespace) -> int:
    from lpm.training.restorer_trainer import load_restorer_config, train_restorer

    cfg = load_restorer_config(args.config, config_overrides(args))
    results = train_restorer(args.data, args.vae, args.out, cfg)
    print((Path(args.out) / "eval.md").read_text())
    print(f"wrote {args.out}/restorer.safetensors ({len(results)} held-out splits evaluated)")
    return 0


def _train_motion_expert(args: argparse.Namespace) -> int:
    from lpm.config import load_config
    from lpm.training.motion_expert import ExpertConfig, train_expert_run

    cfg = load_config(ExpertConfig, yaml_path=args.config, overrides=config_overrides(args))
    report = train_expert_run(args.data, args.vae, args.dit, args.out, cfg, cache_dir=args.cache_dir or "")
    print(report.table())
    print(f"wrote {args.out}/expert.safetensors")
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add ``lpm train vae``, ``causal-vae``, ``speech``, ``motion-expert`` and ``restorer``."""
    p = groups["train"].add_parser(
        "speech", help="train the speech -> motion network on world truth (minutes on CPU); rerunning resumes",
        description="Train the DiT preset's speech network (own and partner log-mel -> the motion track: mouth, "
                    "blinks, head, brows, smile) on the ground-truth motion of world clips. Writes "
                    "RUN/speech.safetensors for `lpm train base speech=RUN/speech.safetensors` and RUN/eval.json "
                    "(Pearson r per channel on val, with own voices shuffled as the control).")
    p.add_argument("--data", required=True, help="world clip data set (with manifest.jsonl and motion.npz)")
    add_run_arguments(p, "SpeechTrainConfig", "windows per step", "lr=1e-3 frames=64 preset=tiny")
    p.set_defaults(func=_train_speech)
    p = groups["train"].add_parser(
        "vae", help="train the VAE (L1 + SSIM + light KL); rerunning resumes",
        description="Train lpm's per-frame VAE on the train split of a clip data set; rerun the same command "
                    "to resume from RUN/train_state.pt. Ends with PSNR on val / zeroshot in RUN/eval.json.")
    p.add_argument("--data", required=True,
                   help="clip data set (with manifest.jsonl) or a frame set from `lpm world frames`")
    add_run_arguments(p, "VAETrainConfig", "images per step", "lr=5e-4 model.latent_channels=8")
    p.set_defaults(func=_train_vae)
    p = groups["train"].add_parser(
        "causal-vae", help="train the causal video VAE (temporal compression t_down); rerunning resumes",
        description="Train lpm's causal video VAE (lpm.models.causal_vae) on windows of consecutive frames of the "
                    "train split; ends with RUN/eval.json (streamed-decode PSNR on val clips, latent size per "
                    "second of video, codec ms per frame).")
    p.add_argument("--data", required=True, help="clip data set (with manifest.jsonl)")
    add_run_arguments(p, "CausalVAETrainConfig", "windows per step", "model.t_down=4 model.latent_channels=16")
    p.set_defaults(func=_train_causal_vae)
    p = groups["train"].add_parser(
        "motion-expert", help="train the motion expert: a latent frame -> motion track reader, used as a loss",
        description="Fit a small CNN that reads a DiT's motion track (its channels) from one VAE latent frame beside "
                    "the clip's global reference latent, on the world's encoded frames and their true motion. "
                    "`lpm distill dmd expert=OUT/expert.safetensors expert_weight=W` then checks that the student "
                    "draws the motion its track asks for. Writes OUT/expert.safetensors and OUT/report.md (r per "
                    "channel on held-out identities). Minutes on CPU; a rerun starts over.")
    p.add_argument("--data", required=True, help="world clip data set (with manifest.jsonl and motion.npz)")
    p.add_argument("--vae", required=True, help="the VAE the DiT's latents come from")
    p.add_argument("--dit", required=True, help="DiT checkpoint whose track channels and mel features to use")
    p.add_argument("--cache-dir", help="latent cache folder (default OUT/cache; the DiT trainers' cache_dir)")
    add_run_arguments(p, "ExpertConfig", "frames per step", "steps=1500 noise_std=0.3")
    p.set_defaults(func=_train_motion_expert)
    p = groups["train"].add_parser(
        "restorer", help="train the restorer: the reference's detail back into decoded frames (minutes on CPU)",
        description="Fit the restorer (lpm.models.restorer) on the world: VAE round trips of true frames, clean and "
                    "from softened latents, beside the clip's global reference, back to the true frames (mouth and "
                    "eyes weighted). Writes OUT/restorer.safetensors and OUT/eval.md (PSNR over the frame and over "
                    "the mouth and eyes on held-out identities and the zero-shot style, before and after); a rerun "
                    "resumes.")
    p.add_argument("--data", required=True, help="world clip data set (with manifest.jsonl)")
    p.add_argument("--vae", required=True, help="the VAE whose decodes it restores (the DiTs' VAE)")
    add_run_arguments(p, "RestorerTrainConfig", "frames per step", "steps=1500 face_weight=10")
    p.set_defaults(func=_train_restorer)
