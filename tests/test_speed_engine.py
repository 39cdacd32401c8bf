"""The speed suite's engine part on a random micro DiT with the shipped VAE: every lever timed, the frames' wait
counts the commit only where it is not deferred, a realtime session reports the stats message's figures."""

from __future__ import annotations

import os

import pytest
import torch
from tests.test_bench_speed import micro

from lpm.eval.speed_engine import LEVERS, engine_report_lines, measure_levers, measure_session, run_engine_speed
from lpm.models.dit import DiT, save_dit

VAE = "checkpoints/vae_tiny.safetensors"


@pytest.mark.skipif(not os.path.isfile(VAE), reason="the shipped VAE is not in this checkout")
def test_levers_and_session_on_a_micro_model(tmp_path, one_thread):
    from dataclasses import replace

    torch.manual_seed(0)
    model = DiT(replace(micro(), latent_height=8, latent_width=8, attention="block_causal")).eval()
    path = save_dit(tmp_path / "micro.safetensors", model)
    rows = measure_levers(str(path), chunks=1, log=lambda text: None)
    assert [r["lever"] for r in rows] == [lever.name for lever in LEVERS]
    for row, lever in zip(rows, LEVERS):
        assert row["generate_cpu_ms"] > 0 and row["commit_ms"] > 0 and row["decode_ms"] > 0
        inline = 0.0 if lever.settings.get("defer_commit", True) else row["commit_ms"]
        assert row["frames_wait_ms"] == pytest.approx(row["generate_ms"] + row["decode_ms"] + inline, abs=0.2)
        assert row["pipelined_fps"] >= row["sequential_fps"] > 0
    session = measure_session(str(path), LEVERS[-1].settings, seconds=1.5, log=lambda text: None)
    assert session["frames"] > 0 and session["latency_p95_s"] >= session["latency_p50_s"] > 0
    report = {"status": "ok", "checkpoint": str(path), "chunks": 1, "levers": rows, "session": session}
    text = "\n".join(engine_report_lines(report))
    assert LEVERS[-1].name in text and f"p95 {session['latency_p95_s']} s" in text
    assert run_engine_speed(str(tmp_path / "missing.safetensors"))["status"].startswith("skipped")
