"""``lpm bench``: load the instruments, run the suite over every system, write the report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from lpm.errors import LpmError
from lpm.eval import DEFAULT_DATA, DEFAULT_DATA_RECIPE, LISTEN_DATA, LISTEN_DATA_RECIPE
from lpm.eval.report import instrument_summary, write_report
from lpm.eval.suites import (
    QUICK_BASE_STEPS,
    SUITE_MODEL_CLIPS,
    SUITES,
    check_identity_instrument,
    clip_metrics,
    face_path_or_none,
    head_path_or_none,
    load_clip,
    load_instruments,
    run_clip_suite,
    select_clips,
)
from lpm.eval.systems import make_systems

# Most threads for the instruments' convolutions (this is a 2-core machine).
MAX_THREADS = 2


def _cpu_times() -> tuple[int, int]:
    """``(busy, total)`` jiffies of all cores since boot, from the first line of /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(seconds: float = 0.5) -> float:
    """Cores busy with other work now: measured over ``seconds`` from /proc/stat where there is one, else the
    1-minute load average (which lags: a training run that ended a minute ago still reads as two busy cores)."""
    try:
        a = _cpu_times()
        time.sleep(seconds)
        b = _cpu_times()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    total = b[1] - a[1]
    return (os.cpu_count() or 1) * (b[0] - a[0]) / total if total > 0 else 0.0


def _threads(busy: float) -> int:
    """Threads on the cores not ``busy`` (``busy_cores``): on a busy, shared machine, oversubscribed OpenMP threads
    spin and run ~10x slower."""
    cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores - int(round(busy))))


# Written into the default case set once it is complete: the recipe it was built with.
CASE_SET_STAMP = "bench_case_set.json"


def default_data(suite: str) -> str:
    """The case set a suite reads when no --data is given."""
    return LISTEN_DATA if suite == "listen" else DEFAULT_DATA


def ensure_default_data(data: str | Path, log=print, recipe: dict | None = None) -> None:
    """Make sure ``data`` is one of the bench's case sets (``recipe``, default ``DEFAULT_DATA_RECIPE``), building
    what is missing.

    A complete set carries a stamp with its recipe. Without one, the clips the recipe plans are compared with
    the manifest: missing ones are synthesized (about a minute on two cores for the whole set; a build that was
    killed resumes), then the stamp is written. A stamp of another recipe or version, or clips the recipe does
    not plan (another data set at that path), is an error naming the difference.
    """
    from lpm.data.clip import read_manifest
    from lpm.fsutil import atomic_write_text
    from lpm.world.synth import plan, synth

    r = recipe or DEFAULT_DATA_RECIPE
    root = Path(data)
    stamp = root / CASE_SET_STAMP
    if stamp.is_file():
        got = json.loads(stamp.read_text())
        if got != r:
            raise LpmError(f"{data} was built as the bench's case set with recipe {got}, but this version of lpm "
                           f"uses {r}: move {data} away (the bench then rebuilds it) or pass --data")
        return
    specs = plan(r["clips"], r["seed"], r["seconds"], r["res"], split=r.get("split", "mixed"), styles=r.get("styles"),
                 mode=r.get("mode"))
    want = {s.clip_id for s in specs}
    have = {row["id"] for row in read_manifest(root)} if (root / "manifest.jsonl").is_file() else set()
    if have - want:
        extra = sorted(have - want)
        raise LpmError(f"{data} holds {len(extra)} clips that the bench's case set does not plan (e.g. {extra[0]}): "
                       f"it is another data set; move it away (the bench then builds its own) or pass --data")
    missing = [i for i in sorted(want) if i not in have or not (root / i / "meta.json").is_file()]
    if missing:
        more = "".join(f" --{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in r.items()
                       if k in ("split", "mode", "styles"))
        log(f"building the bench's case set {data} ({len(missing)} of {len(want)} clips missing; lpm world "
            f"synth --clips {r['clips']} --seconds {r['seconds']:g} --res {r['res']} --seed {r['seed']}{more})")
        synth(root, specs)
    atomic_write_text(stamp, json.dumps(r))


def run_bench(suite: str, out: str | Path, data: str | Path | None, probe: str | Path, identity: str | Path,
              states: str | Path, checkpoints: dict[str, str] | None = None, face: str | Path | None = None,
              head: str | Path | None = None,
              minutes: float = 0.0, seed: int = 0,
              refiner: bool = False, base_steps: int | None = None, model_clips: dict[str, int] | None = None,
              baseline: str | list[str] | None = None, log=print) -> dict:
    """Run one suite and write ``out/report.json``, ``report.md`` and plots; returns the report object.

    ``refiner``: also run ``online+refiner`` (the online checkpoint with the one-step refiner on);
    ``base_steps``: ODE steps per window of ``base`` (None: its default; ``QUICK_BASE_STEPS`` in the quick suite);
    ``model_clips``: clips each trained model rates in the quick suite, by system name (``"*"``: any other), over
    ``SUITE_MODEL_CLIPS`` (quick and listen suites); ``face``: the face reader (``suites.face_path_or_none``;
    None: the probe alone); ``head``: the head pose reader (``suites.head_path_or_none``; None: the probe's head
    angles); ``data``: None for the suite's own case set (``default_data``); ``baseline``: the
    system every other is compared with clip for clip in the report's paired differences (None: ``online`` when it
    runs), or several (one paired table each, e.g. ``["online", "base"]`` to judge Base variants too).
    """
    if suite not in SUITES:
        raise LpmError(f"unknown suite {suite!r}; expected one of {SUITES}")
    for path, what, how in ((probe, "--probe", "train-probe"), (identity, "--identity", "train-identity"),
                            (states, "--states", "train-states")):
        if not Path(path).is_file():
            raise LpmError(f"{what} {path} does not exist (train it with `lpm eval {how}`, or use the shipped one "
                           "under checkpoints/)")
    face_path_or_none(face)
    head_path_or_none(head)
    if base_steps is None and suite in SUITE_MODEL_CLIPS:
        base_steps = QUICK_BASE_STEPS
    systems = make_systems(checkpoints, seed, refiner, base_steps)
    names = [s.name for s in systems]
    baselines = [baseline] if isinstance(baseline, str) else list(baseline or [])
    for name in baselines:
        if name not in names:
            raise LpmError(f"--baseline {name!r} is not a system of this run (systems: {', '.join(names)})")
    baselines = baselines or (["online"] if "online" in names else [])
    data = default_data(suite) if data is None else data
    recipes = {DEFAULT_DATA: DEFAULT_DATA_RECIPE, LISTEN_DATA: LISTEN_DATA_RECIPE}
    recipe = next((r for path, r in recipes.items() if Path(data).resolve() == Path(path).resolve()), None)
    if recipe is not None:
        ensure_default_data(data, log, recipe)
    elif not (Path(data) / "manifest.jsonl").is_file():
        raise LpmError(f"--data {data} is not a clip data set (make one with `lpm world synth`)")
    busy = busy_cores()
    threads = _threads(busy)
    torch.set_num_threads(threads)
    machine = {"cpus": os.cpu_count(), "threads": threads, "busy_cores": round(busy, 2),
               "load_avg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    t0 = time.time()
    inst = load_instruments(probe, identity, states, face, head)
    rows = select_clips(data, suite)
    log(f"bench {suite}: {len(rows)} clips, systems {', '.join(s.name for s in systems)}")
    caps = {**SUITE_MODEL_CLIPS[suite], **(model_clips or {})} if suite in SUITE_MODEL_CLIPS else None
    loaded = [load_clip(data, r) for r in rows]
    identity_checks = check_identity_instrument(loaded, inst)
    results, truths = run_clip_suite(systems, rows, loaded, inst, log, model_clips=caps)
    by_name = {r.name: r for r in results}
    if minutes > 0:
        from lpm.eval.long import run_long

        run_long(systems, by_name, minutes, inst, seed, log=log)
    else:
        for s in systems:
            by_name[s.name].metrics["long"] = clip_metrics([], None, inst, s)
    truth_by_id = {r["id"]: t for r, t in zip(rows, truths)}
    return write_report(out, suite, results, truth_by_id,
                        instrument_summary(inst, identity_checks), time.time() - t0, machine, baselines)
