"""``lpm bench``: load the instruments, run the suite over every system, write the report."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from lpm.errors import LpmError
from lpm.eval import DEFAULT_DATA, DEFAULT_DATA_RECIPE
from lpm.eval.report import instrument_summary, write_report
from lpm.eval.suites import (
    QUICK_BASE_STEPS,
    QUICK_MODEL_CLIPS,
    SUITES,
    clip_metrics,
    load_instruments,
    run_clip_suite,
    select_clips,
)
from lpm.eval.systems import make_systems

# Most threads for the instruments' convolutions (this is a 2-core machine).
MAX_THREADS = 2


def _threads() -> int:
    """Threads on idle cores only: on a busy, shared machine, oversubscribed OpenMP threads spin and run ~10x slower."""
    cores = os.cpu_count() or 1
    busy = int(round(os.getloadavg()[0])) if hasattr(os, "getloadavg") else 0
    return max(1, min(MAX_THREADS, cores - busy))


def build_default_data(data: str | Path, log=print) -> None:
    """Synthesize the default world data set (``DEFAULT_DATA_RECIPE``; about a minute on two cores). A rerun after
    a kill keeps the finished clips."""
    from lpm.world.synth import plan, synth

    r = DEFAULT_DATA_RECIPE
    log(f"building the bench's case set {data} (lpm world synth --clips {r['clips']} --seconds {r['seconds']:g} "
        f"--res {r['res']} --seed {r['seed']})")
    synth(data, plan(r["clips"], r["seed"], r["seconds"], r["res"]))


def run_bench(suite: str, out: str | Path, data: str | Path, probe: str | Path, identity: str | Path,
              checkpoints: dict[str, str] | None = None, minutes: float = 0.0, seed: int = 0,
              refiner: bool = False, base_steps: int | None = None, model_clips: dict[str, int] | None = None,
              log=print) -> dict:
    """Run one suite and write ``out/report.json``, ``report.md`` and plots; returns the report object.

    ``refiner``: also run ``online+refiner`` (the online checkpoint with the one-step refiner on);
    ``base_steps``: ODE steps per window of ``base`` (None: its default; ``QUICK_BASE_STEPS`` in the quick suite);
    ``model_clips``: clips each trained model rates in the quick suite, by system name (``"*"``: any other), over
    ``QUICK_MODEL_CLIPS``.
    """
    if suite not in SUITES:
        raise LpmError(f"unknown suite {suite!r}; expected one of {SUITES}")
    for path, what in ((probe, "--probe"), (identity, "--identity")):
        if not Path(path).is_file():
            raise LpmError(f"{what} {path} does not exist (train it with `lpm eval train-probe` / "
                           "`lpm eval train-identity`, or use the shipped one under checkpoints/)")
    if not (Path(data) / "manifest.jsonl").is_file():
        if Path(data).resolve() != Path(DEFAULT_DATA).resolve():
            raise LpmError(f"--data {data} is not a clip data set (make one with `lpm world synth`)")
        build_default_data(data, log)
    threads = _threads()
    torch.set_num_threads(threads)
    machine = {"cpus": os.cpu_count(), "threads": threads,
               "load_avg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    t0 = time.time()
    inst = load_instruments(probe, identity, data)
    if base_steps is None and suite == "quick":
        base_steps = QUICK_BASE_STEPS
    systems = make_systems(checkpoints, seed, refiner, base_steps)
    rows = select_clips(data, suite)
    log(f"bench {suite}: {len(rows)} clips, systems {', '.join(s.name for s in systems)}")
    caps = {**QUICK_MODEL_CLIPS, **(model_clips or {})} if suite == "quick" else None
    results, truths = run_clip_suite(systems, rows, data, inst, log, model_clips=caps)
    by_name = {r.name: r for r in results}
    if minutes > 0:
        from lpm.eval.long import run_long

        run_long(systems, by_name, minutes, inst, seed, log=log)
    else:
        for s in systems:
            by_name[s.name].metrics["long"] = clip_metrics([], None, inst, s)
    truth_by_id = {r["id"]: t for r, t in zip(rows, truths)}
    return write_report(out, suite, results, truth_by_id,
                        instrument_summary(inst.probe_accuracy, inst.identity_accuracy), time.time() - t0, machine)
