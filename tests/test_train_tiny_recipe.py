"""``scripts/train_tiny.sh``, the whole recipe from an empty folder, at a few steps per stage: every stage's
inputs are the previous stages' outputs, and what it writes is what the engine ships."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lpm.training.checkpoint import read_metadata

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["data", "speech", "base", "ode", "online_concat", "online_resid", "base_same", "dmd", "dmd_mouth",
          "restorer", "dmd_critic", "dmd_blend"]
MICRO = {"SYNTH_CLIPS": "8", "SYNTH_SECONDS": "1", "SPEECH_STEPS": "2", "SPEECH_WORLD_CLIPS": "4",
         "BASE_STEPS": "2", "ODE_STEPS": "2", "ODE_PAIRS": "4", "CONCAT_STEPS": "2", "RESID_STEPS": "2",
         "BASE_SAME_STEPS": "2", "DMD_STEPS": "2", "DMD_MOUTH_STEPS": "2", "RESTORER_STEPS": "2",
         "DMD_CRITIC_STEPS": "2", "DMD_BLEND_STEPS": "2", "THREADS": "1"}


@pytest.mark.slow  # twelve stages, each a process that imports torch: ~3 min on an idle 2-core CPU
def test_the_recipe_runs_from_scratch_and_writes_the_shipped_files(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **MICRO, "RUNS": str(tmp_path / "runs"), "CKPT": str(tmp_path / "ckpt"),
           "DATA": str(tmp_path / "data"), "LPM": str(bin_dir / "lpm"), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts/train_tiny.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = tmp_path / "ckpt"
    assert {p.name for p in ckpt.iterdir()} == {"base_tiny.safetensors", "online_tiny.safetensors",
                                                "restorer_tiny.safetensors", "speech_tiny.safetensors"}
    meta = read_metadata(ckpt / "online_tiny.safetensors")
    online = meta["extra"]["online"]
    assert online["restorer"] == "restorer_tiny.safetensors"  # beside it, as shipped
    assert online["track_gain"]["smile"] == 3.0 and online["timesteps"] == [1.0, 0.0]
    assert "head_pitch" in online["track_range"]  # the gained track clipped to the data's range
    assert online["brow_exemplar"] == [0.5, 0.84]  # the brow raise drawn from the surprised exemplar
    assert meta["config"]["expression_canvas"] and meta["config"]["expression_blend"]
    times = [line.split("\t") for line in (tmp_path / "runs/recipe_times.tsv").read_text().splitlines()]
    assert [t[0] for t in times] == STAGES and all(int(t[1]) >= 0 for t in times)
    table = (tmp_path / "runs/recipe_times.md").read_text()
    assert all(f"| {s} |" in table for s in STAGES) and "| **all** |" in table
