"""``lpm bench --suite speed`` on a shrunken tiny DiT at 64 px (seconds on one CPU thread)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from lpm.cli import main
from lpm.errors import LpmError
from lpm.eval import speed
from lpm.models.dit_config import preset
from lpm.models.timing import OnlineChunkBench, kv_cache_bytes

MIB = 2**20


def micro():
    """The tiny preset cut to 2 narrow blocks: the same code paths, a fraction of the time."""
    return replace(
        preset("tiny"),
        num_blocks=2,
        dim=64,
        num_heads=2,
        ffn_dim=128,
        text_dim=32,
        text_layers=1,
        text_heads=2,
        audio_dim=32,
        audio_layers=1,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("speed")
    # 64 MiB: the micro model fits, small (60 M fp32 parameters) does not.
    rep = speed.run_speed(
        out,
        {"micro": micro(), "small": preset("small")},
        res="64",
        device="cpu",
        repeats=1,
        memory_budget=64 * MIB,
        log=lambda text: None,
    )
    return out, rep


def test_report_rows_and_files(report):
    out, rep = report
    assert json.loads((out / "report.json").read_text()) == rep
    assert {"name", "cpu", "threads", "torch"} <= set(rep["device"])
    assert rep["device"]["threads"] == 1
    row = rep["rows"][0]
    assert row["status"] == "ok" and row["dtype"] == "fp32"
    assert row["latent"] == [8, 8, 8] and row["resolution"] == [64, 64]
    for key in (
        "generate_ms",
        "refine_ms",
        "decode_ms",
        "pipelined_fps",
        "sequential_fps",
        "peak_memory_mb",
        "kv_cache_mb",
        "pipelined_fps_no_refiner",
        "sequential_fps_no_refiner",
    ):
        assert row[key] > 0, key
    assert isinstance(row["realtime"], bool)
    # Overlapping stages can only be faster than running them one after another.
    assert row["pipelined_fps"] >= row["sequential_fps"]
    assert row["pipelined_fps_no_refiner"] >= row["sequential_fps_no_refiner"]
    frames = row["frames_per_chunk"]
    slowest = max(row["generate_ms"], row["refine_ms"], row["decode_ms"])
    assert row["pipelined_fps"] == pytest.approx(1000 * frames / slowest, rel=0.01)
    md = (out / "report.md").read_text()
    assert "Device:" in md and "| micro |" in md and "| small |" in md


def test_too_big_is_skipped(report):
    _, rep = report
    row = rep["rows"][1]
    assert row["preset"] == "small" and row["status"].startswith("skipped: needs ~")
    assert row["generate_ms"] is None and row["estimated_gib"] * 2**30 > 64 * MIB
    assert 40e6 < row["params"] < 120e6  # counted on the meta device


def test_kv_cache_bytes_match_the_built_cache():
    torch.set_num_threads(1)
    cfg, _ = speed.at_resolution(micro(), (64, 64))
    bench = OnlineChunkBench.build(cfg)
    assert bench.cache.nbytes() == kv_cache_bytes(cfg, torch.float32)
    assert bench.cache.chunks_seen == cfg.sink_chunks + cfg.window_chunks + 1  # full, one eviction done


def test_resolutions():
    cfg, note = speed.at_resolution(preset("tiny"), speed.parse_resolution("480p"))
    assert (cfg.latent_height, cfg.latent_width) == (60, 104) and note == ""
    cfg, note = speed.at_resolution(preset("tiny"), speed.parse_resolution("720p"))
    assert (cfg.latent_height, cfg.latent_width) == (92, 160) and "736x1280" in note  # 90 rows: not a multiple of 4
    cfg, _ = speed.at_resolution(preset("small"), speed.parse_resolution("128"))
    assert (cfg.latent_height, cfg.latent_width) == (16, 16)
    cfg, _ = speed.at_resolution(preset("base"), None)
    assert (cfg.latent_height, cfg.latent_width, cfg.attention) == (60, 104, "block_causal")
    with pytest.raises(LpmError):
        speed.parse_resolution("1080i")


def test_cli_passes_the_options(monkeypatch, tmp_path):
    seen = {}

    def fake(out, configs, **kwargs):
        seen.update(out=out, names=list(configs), **kwargs)
        return {"wall_s": 0.0}

    monkeypatch.setattr(speed, "run_speed", fake)
    argv = [
        "bench",
        "--suite",
        "speed",
        "--preset",
        "tiny",
        "base",
        "--res",
        "480p",
        "--device",
        "cpu",
        "--repeats",
        "3",
        "--memory-gib",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    assert seen["names"] == ["tiny", "base"] and seen["res"] == "480p" and seen["device"] == "cpu"
    assert seen["repeats"] == 3 and seen["memory_budget"] == 2 * 2**30


def test_codec_for_other_latent_channels():
    codec, label = speed.speed_codec(16, torch.device("cpu"))
    assert codec.latent_channels == 16 and codec.downsample == speed.VAE_DOWNSAMPLE
    assert label.startswith("random LpmVAE")


def test_model_time_still_runs():
    """``lpm model time``'s function, now on the shared ``OnlineChunkBench``."""
    from lpm.models.timing import time_online_chunk

    torch.set_num_threads(1)
    assert time_online_chunk(micro(), iters=1, warmup=0, bf16=False) > 0
