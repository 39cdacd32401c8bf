"""``lpm bench --suite speed --devices``: the projection's arithmetic on known numbers, its refusals, and the
measured path over two gloo processes (sequence-parallel stage times and a fitted all-to-all) beside the
labelled projection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lpm.errors import LpmError
from lpm.eval.speed import at_resolution, parse_resolution
from lpm.eval.speed_scale import run_scale, stage_times_from_report, stated_link
from lpm.models.dit_config import preset
from lpm.parallel.group import SequenceGroup
from lpm.parallel.projection import LinkCost, StageTimes, forward_comm_seconds, project
from lpm.training.distributed import close_group, free_port
from test_dit import micro

H100 = Path(__file__).parents[1] / "docs/bench/speed_h100/report.json"


def lpm17b():
    return at_resolution(preset("lpm-17b"), parse_resolution("480p"))[0]


def test_one_device_is_the_measurement_and_t_down_multiplies_frames():
    cfg = lpm17b()
    times = StageTimes(2754.0, 929.6, 4.7, 2, "H100")
    link = LinkCost(0.0, 1e12, "test")
    one = project(cfg, times, link, 1)
    assert one.generate_ms == 2754.0 and one.comm_ms_per_forward == 0.0 and one.staged_fps is None
    assert one.sp_fps == pytest.approx(4000 / (2754.0 + 929.6 + 4.7))
    four = project(cfg, times, link, 1, t_down=4)
    assert four.video_frames_per_chunk == 16 and four.decode_ms == pytest.approx(4 * 4.7)
    assert four.sp_no_refiner_fps == pytest.approx(4 * one.sp_no_refiner_fps)  # the generator bounds it
    eight = project(cfg, times, link, 8)
    assert eight.generate_ms == pytest.approx(2754.0 / 8, rel=0.02)  # a near-free link: compute / 8
    assert eight.kv_cache_gib_per_device == 0.0  # no cache size given


def test_all_to_all_bytes_of_one_forward():
    cfg = lpm17b()
    link = LinkCost(latency_s=1e-5, bytes_per_s=1e11, source="test")
    n, d, nc = 4, cfg.dim, cfg.tokens_per_chunk
    local = nc // n  # 6,240 tokens divide by 4
    per_block = 2 * 1e-5 + (3 + 1) * (3 / 4) * local * d * 2 / 1e11
    gather = 1e-5 + (3 / 4) * nc * cfg.latent_channels * cfg.patch_size**2 * 2 / 1e11
    assert forward_comm_seconds(cfg, nc, n, link, 2) == pytest.approx(cfg.num_blocks * per_block + gather)
    assert forward_comm_seconds(cfg, nc, 1, link, 2) == 0.0


def test_h100_report_feeds_the_projection_and_bad_inputs_are_named(tmp_path):
    cfg = lpm17b()
    times = stage_times_from_report(H100, "lpm-17b", cfg)
    assert times.generate_ms == 2754.02 and "H100" in times.source
    with pytest.raises(LpmError, match="tokens per chunk"):
        stage_times_from_report(H100, "lpm-17b", preset("lpm-17b", latent_height=32, latent_width=32))
    with pytest.raises(LpmError, match="not a speed report"):
        (tmp_path / "x.json").write_text("{}")
        stage_times_from_report(tmp_path / "x.json", "lpm-17b", cfg)
    with pytest.raises(LpmError, match="divide by the device count"):
        run_scale(tmp_path, "lpm-17b", cfg, [1, 3], 4, SequenceGroup(), torch.device("cpu"), measured=H100)
    report = run_scale(tmp_path / "out", "lpm-17b", cfg, [1, 2, 4, 8], 4, SequenceGroup(), torch.device("cpu"),
                       measured=H100, link=stated_link())
    assert [r["devices"] for r in report["projection"]] == [1, 2, 4, 8] and not report["measured"]
    assert "assumed" in report["link"]["source"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "PROJECTION (not measured)" in text and "t_down 4" in text
    fps = [r["sp_fps"] for r in report["projection"]]
    assert fps == sorted(fps) and fps[-1] > 4 * fps[0]


def _worker(rank: int, port: int, out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from lpm.parallel.group import init_sequence_group

    group = init_sequence_group("cpu")
    run_scale(out, "micro", micro(num_heads=4), [1, 2, 4], 1, group, torch.device("cpu"), repeats=1)
    close_group()


def test_measured_over_two_processes_beside_the_projection(tmp_path):
    mp.spawn(_worker, args=(free_port(), tmp_path), nprocs=2, join=True)
    report = json.loads((tmp_path / "report.json").read_text())
    (measured,) = report["measured"]
    assert measured["devices"] == 2 and measured["generate_ms"] > 0 and measured["refine_ms"] > 0
    assert report["link"]["source"].startswith("measured: gloo all-to-all over 2 processes")
    assert report["link"]["bytes_per_s"] > 0
    assert [r["devices"] for r in report["projection"]] == [1, 2, 4]
    assert report["single_device"]["source"].endswith("measured now")
    text = (tmp_path / "report.md").read_text()
    assert "## Measured" in text and "PROJECTION (not measured)" in text
