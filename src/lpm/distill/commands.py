"""``lpm distill ode`` and ``lpm distill dmd`` (argument parsing only; the work is in ``ode`` and ``dmd``)."""

from __future__ import annotations

import argparse
import json

from lpm.training.commands import add_run_arguments, config_overrides


def _sources(args: argparse.Namespace) -> tuple[str, str]:
    """--data / --vae, defaulting to what the teacher run was trained on."""
    from lpm.errors import LpmError
    from lpm.training.checkpoint import run_sources

    known = run_sources(args.teacher)
    data, vae = args.data or known.get("data"), args.vae or known.get("vae")
    if not data or not vae:
        raise LpmError(f"the teacher run {args.teacher} does not record its data set and VAE (sources.json); "
                       "give --data and --vae")
    return data, vae


def _distill(args: argparse.Namespace, stage: str) -> int:
    """Run one distillation stage (``ode`` or ``dmd``) from its parsed arguments."""
    if stage == "ode":
        from lpm.distill.ode import OdeDistiller as Trainer
        from lpm.distill.ode import load_ode_config as load
        extra = []
    else:
        from lpm.distill.dmd import DmdDistiller as Trainer
        from lpm.distill.dmd import load_dmd_config as load
        extra = [f"student={args.student}"]
    cfg = load(args.config, [*config_overrides(args), f"teacher={args.teacher}", *extra])
    data, vae = _sources(args)
    trainer = Trainer(cfg, data, vae, args.out)
    result = trainer.run()
    if trainer.info.is_main:
        print(json.dumps(result, indent=1))
    return 0


def _common(p: argparse.ArgumentParser, config_class: str, example: str) -> None:
    p.add_argument("--teacher", required=True, help="the Base run (or its .safetensors) to distill")
    p.add_argument("--data", help="clip data set (default: the teacher run's, from its sources.json)")
    p.add_argument("--vae", help="VAE checkpoint (default: the teacher run's)")
    add_run_arguments(p, config_class, "windows per step over all processes", example)


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add ``lpm distill ode`` and ``lpm distill dmd``."""
    p = groups["distill"].add_parser(
        "ode", help="causal student initialisation: regress onto teacher ODE trajectories; rerunning resumes",
        description="Generate teacher ODE trajectories (Euler with CFG, stored in RUN/pairs) and regress the "
                    "block-causal student, initialised from the teacher, onto them at its few timesteps "
                    "(CausVid). Rerun the same command to resume. Runs under torchrun with FSDP2.")
    _common(p, "OdeConfig", "pairs=256 steps=600 student_steps=2")
    p.set_defaults(func=lambda args: _distill(args, "ode"))
    p = groups["distill"].add_parser(
        "dmd", help="Distribution Matching Distillation on the student's own rollouts; rerunning resumes",
        description="Train the causal student with DMD (real score: the teacher with CFG; fake score: trained "
                    "on the student's samples) on its own autoregressive rollouts through its KV cache "
                    "(Self-Forcing). Rerun the same command to resume. Runs under torchrun with FSDP2.")
    p.add_argument("--student", required=True, help="the ODE stage's run (or its .safetensors)")
    _common(p, "DmdConfig", "generator_every=5 lr=2e-5 fake_lr=1e-4")
    p.set_defaults(func=lambda args: _distill(args, "dmd"))
