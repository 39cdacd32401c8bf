"""``lpm bench --suite speed --devices N ...``: measured sequence-parallel figures where the devices exist, and the
labelled projection (``lpm.parallel.projection``) for the device counts that do not.

Under ``torchrun --nproc_per_node N`` (gloo on CPU, NCCL on CUDA) it measures, over the N processes: the generate
and refine stages of the preset with ``SequenceParallelDiT`` (random weights, a full KV cache of each rank's heads)
and the all-to-all cost (``measure_all_to_all``: two message sizes, latency + bandwidth fitted). The single-device
stage times the projection starts from are measured here when the preset fits this device, else read from an
earlier speed report (``--measured docs/bench/speed_h100/report.json``). Without a measured all-to-all the
projection uses a stated link (``--link-gbps``, ``--link-latency-us``), and says so in every table.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist

from lpm.errors import LpmError
from lpm.fsutil import atomic_write_text
from lpm.models.dit_config import DiTConfig
from lpm.parallel.group import SequenceGroup, all_to_all
from lpm.parallel.projection import REALTIME_FPS, LinkCost, StageTimes, project
from lpm.parallel.sequence_dit import SequenceParallelDiT

# A stated link for projections without a measured one: NVLink-class all-to-all within one 8-GPU node (H100 SXM:
# 450 GB/s per direction per GPU; NCCL all-to-all reaches well under that), and a per-call latency. Labelled
# "assumed" wherever it is used.
ASSUMED_LINK_GBPS = 150.0
ASSUMED_LINK_LATENCY_US = 30.0
ALL_TO_ALL_BYTES = (2**18, 2**24)  # the two message sizes per rank the link fit uses


def stated_link(gbps: float = ASSUMED_LINK_GBPS, latency_us: float = ASSUMED_LINK_LATENCY_US) -> LinkCost:
    if gbps <= 0 or latency_us < 0:
        raise LpmError(f"--link-gbps must be > 0 and --link-latency-us >= 0, got {gbps}, {latency_us}")
    return LinkCost(latency_us * 1e-6, gbps * 1e9,
                    f"assumed: {gbps:g} GB/s per rank, {latency_us:g} us per collective (not measured)")


def measure_all_to_all(group: SequenceGroup, device: torch.device, repeats: int = 5) -> LinkCost:
    """Median time of ``all_to_all_single`` at two sizes per rank over ``group``; ``latency + bytes / bandwidth``
    fitted through them. Every rank must call it."""
    if group.world_size == 1:
        raise LpmError("an all-to-all needs at least two processes (run under torchrun)")
    medians = []
    for nbytes in ALL_TO_ALL_BYTES:
        pieces = torch.ones(group.world_size, nbytes // (2 * group.world_size), dtype=torch.bfloat16, device=device)
        times = []
        for i in range(repeats + 1):
            _sync(device)
            dist.barrier(group=group.stream)
            begin = time.perf_counter()
            all_to_all(pieces, group, group.stream)
            _sync(device)
            if i:  # the first is a warm-up
                times.append(time.perf_counter() - begin)
        medians.append(statistics.median(times))
    (small, large), (t_small, t_large) = ALL_TO_ALL_BYTES, medians
    bandwidth = (large - small) / max(t_large - t_small, 1e-9)
    latency = max(t_small - small / bandwidth, 0.0)
    backend = dist.get_backend(group.stream)
    return LinkCost(latency, bandwidth, f"measured: {backend} all-to-all over {group.world_size} processes on "
                                        f"{_device_name(device)}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def measure_parallel_stages(cfg: DiTConfig, group: SequenceGroup, device: torch.device, dtype: torch.dtype,
                            repeats: int) -> tuple[float, float]:
    """Milliseconds per chunk of the generate and refine stages with the tokens split over ``group``."""
    from lpm.models.timing import OnlineChunkBench, median_seconds
    from lpm.runtime.dit_engine import DEFAULT_DENOISE_STEPS, DEFAULT_REFINER_TIME

    bench = OnlineChunkBench.build(cfg, device, dtype)
    model = SequenceParallelDiT(bench.model, group)
    bench.model, bench.cache = model, model.empty_cache(1, device, dtype)  # this rank's heads
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        model.prefill(bench.cache, bench.references)
    for _ in range(cfg.sink_chunks + cfg.window_chunks + 1):  # sinks and window full, one eviction
        bench.forward(commit=True, t=0.0)
    generate = median_seconds(lambda: bench.chunk(DEFAULT_DENOISE_STEPS), repeats, 1, device)
    refine = median_seconds(lambda: bench.refine(DEFAULT_REFINER_TIME), repeats, 1, device)
    return 1000 * generate, 1000 * refine


def stage_times_from_report(path: str | Path, name: str, cfg: DiTConfig) -> StageTimes:
    """A preset's single-device stage times from a speed report (``lpm bench --suite speed``)."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
        rows = {r["preset"]: r for r in report["rows"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LpmError(f"--measured {path}: not a speed report ({e})") from None
    row = rows.get(name)
    if row is None or row.get("status") != "ok":
        raise LpmError(f"--measured {path}: no measured row for preset {name!r} (rows: {', '.join(rows)})")
    if row["tokens_per_chunk"] != cfg.tokens_per_chunk:
        raise LpmError(f"--measured {path}: {name} was measured at {row['tokens_per_chunk']} tokens per chunk, "
                       f"this run asks for {cfg.tokens_per_chunk} (pass the same --res)")
    return StageTimes(row["generate_ms"], row["refine_ms"], row["decode_ms"], report["denoise_steps"],
                      f"{report['device']['name']}, {path}")


def run_scale(out: str | Path, name: str, cfg: DiTConfig, devices: list[int], t_down: int, group: SequenceGroup,
              device: torch.device, repeats: int = 5, measured: str | Path | None = None,
              link: LinkCost | None = None, log=print) -> dict | None:
    """Measure what this job's devices allow, project the rest, write ``out/report.json`` and ``report.md``
    (rank 0). Every rank of a torchrun job calls it; returns the report on rank 0."""
    from lpm.eval.speed import DTYPES, time_preset
    from lpm.runtime.dit_engine import DEFAULT_DENOISE_STEPS

    cfg = replace(cfg, t_down=t_down)
    dtype = DTYPES[device.type]
    bad = [n for n in devices if n < 1 or cfg.num_heads % n]
    if bad:
        raise LpmError(f"--devices {bad}: sequence parallelism needs the {cfg.num_heads} heads of {name} to divide "
                       "by the device count")
    report: dict = {"suite": "speed-scale", "preset": name, "t_down": t_down, "frames_per_chunk": cfg.frames_per_chunk,
                    "video_frames_per_chunk": cfg.video_frames_per_chunk, "tokens_per_chunk": cfg.tokens_per_chunk,
                    "realtime_fps": REALTIME_FPS, "measured": [], "projection": []}
    if group.world_size > 1:
        log(f"scale {name}: measuring the all-to-all over {group.world_size} processes")
        link = measure_all_to_all(group, device, repeats)
        log(f"scale {name}: sequence-parallel generate / refine over {group.world_size} processes x {repeats}")
        generate, refine = measure_parallel_stages(cfg, group, device, dtype, repeats)
        report["measured"].append({"devices": group.world_size, "device": _device_name(device),
                                   "generate_ms": round(generate, 2), "refine_ms": round(refine, 2)})
    link = link or stated_link()
    if measured is not None:
        times = stage_times_from_report(measured, name, cfg)
    else:
        row = time_preset(name, cfg, device, repeats, _memory_budget(device), log=log) if group.is_main else None
        if row is not None and row["status"] != "ok":
            raise LpmError(f"{name} does not fit this device ({row['status']}): pass --measured REPORT with its "
                           "single-device stage times (e.g. docs/bench/speed_h100/report.json)")
        times = None if row is None else StageTimes(row["generate_ms"], row["refine_ms"], row["decode_ms"],
                                                    DEFAULT_DENOISE_STEPS, f"{_device_name(device)}, measured now")
    if not group.is_main:
        return None
    if report["measured"]:
        m = report["measured"][0]
        decode = times.decode_ms * t_down
        m["decode_ms"] = round(decode, 2)
        m["sp_fps"] = round(1000 * cfg.video_frames_per_chunk / (m["generate_ms"] + m["refine_ms"] + decode), 2)
        m["sp_no_refiner_fps"] = round(1000 * cfg.video_frames_per_chunk / max(m["generate_ms"], decode), 2)
    weights, cache = _memory(cfg)
    for n in devices:
        row = project(cfg, times, link, n, t_down, weights_bytes=weights, kv_cache_bytes=cache)
        report["projection"].append(asdict(row))
    report["single_device"] = asdict(times)
    report["link"] = asdict(link)
    write_scale_report(out, report)
    return report


def _memory_budget(device: torch.device) -> int:
    from lpm.eval.speed import memory_available

    return memory_available(device)


def _memory(cfg: DiTConfig) -> tuple[int, int]:
    """bf16 weights and the full KV cache of ``cfg`` (bytes)."""
    from lpm.eval.speed import estimate_memory

    estimate = estimate_memory(cfg, torch.device("cuda"), torch.bfloat16)
    return estimate["weights_bytes"], estimate["kv_cache_bytes"]


def write_scale_report(out: str | Path, report: dict) -> None:
    """``out/report.json`` and ``out/report.md``: the measured rows and the labelled projection table."""
    out = Path(out)
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    single, link = report["single_device"], report["link"]
    lines = [f"# LPM-Bench speed across devices: {report['preset']}, t_down {report['t_down']}", ""]
    if report["measured"]:
        lines += ["## Measured", "", "| devices | device | generate ms | refine ms | decode ms | fps (stages in turn) "
                  "| fps, no refiner |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        for m in report["measured"]:
            lines.append(f"| {m['devices']} | {m['device']} | {m['generate_ms']} | {m['refine_ms']} | "
                         f"{m['decode_ms']} | {m['sp_fps']} | {m['sp_no_refiner_fps']} |")
        lines.append("")
    lines += [
        "## PROJECTION (not measured)", "",
        f"From single-device stage times measured on {single['source']} (generate {single['generate_ms']} ms, "
        f"refine {single['refine_ms']} ms, decode {single['decode_ms']} ms per chunk of {report['frames_per_chunk']} "
        f"latent frames) and the all-to-all cost {link['source']} ({link['bytes_per_s'] / 1e9:.1f} GB/s, "
        f"{link['latency_s'] * 1e6:.1f} us). A chunk makes {report['video_frames_per_chunk']} video frames "
        f"(t_down {report['t_down']}). Assumptions: docs/scale.md.", "",
        "| devices | generate ms | refine ms | decode ms | all-to-all ms / forward | fps, stages in turn | "
        "fps, staged (gen + ref devices) | fps, no refiner | best x real time | weights GiB / device | "
        "KV cache GiB / device |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["projection"]:
        staged = "-" if r["staged_fps"] is None else f"{r['staged_fps']:.2f} ({r['staged_split'][0]} + " \
                                                     f"{r['staged_split'][1]})"
        best = max(r["sp_fps"], r["staged_fps"] or 0.0)
        lines.append(f"| {r['devices']} | {r['generate_ms']:.1f} | {r['refine_ms']:.1f} | {r['decode_ms']:.1f} | "
                     f"{r['comm_ms_per_forward']:.2f} | {r['sp_fps']:.2f} | {staged} | {r['sp_no_refiner_fps']:.2f} "
                     f"| {best / report['realtime_fps']:.2f} | {r['weights_gib_per_device']:.1f} | "
                     f"{r['kv_cache_gib_per_device']:.2f} |")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
