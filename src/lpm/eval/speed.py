"""``lpm bench --suite speed``: time per chunk of each pipeline stage, fps and memory, per DiT preset.

Random weights, batch 1, on whatever device is present (fp32 on CPU, bf16 on CUDA). Per preset, one Online chunk
of ``frames_per_chunk`` frames through the runtime's stages (``lpm.runtime.dit_engine``):

- ``generate``: the denoising steps (``DEFAULT_DENOISE_STEPS``) reading a full KV cache, then the commit forward
  (``lpm.models.timing.OnlineChunkBench``, shared with ``lpm model time``);
- ``refine``: the optional refiner's one uncached forward of the chunk plus every reference;
- ``decode``: the VAE decode of the chunk (``time_codec``): the shipped tiny VAE when its latent channels match,
  else a random ``LpmVAE`` of the same widths with the preset's latent channels (the cost is what matters).

Stages run in their own threads in the runtime pipeline, so the pipelined rate is ``frames / max(stage)``; the
sequential rate ``frames / sum(stages)`` is what one stream gets when the stages share the same compute.
A preset whose estimated memory exceeds what the device has free is reported as skipped, never built.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from lpm.errors import LpmError
from lpm.models.dit_config import DiTConfig

REALTIME_FPS = 24.0  # the frame rate a live character streams at
VAE_DOWNSAMPLE = 8  # pixels per latent cell (lpm's VAE and Wan2.1's)
# Named resolutions (height, width): Wan2.1's 480p and 720p.
RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280)}
DEFAULT_REPEATS = 5
WARMUP = 1  # untimed chunks / forwards before each measurement
# Peak memory over weights + KV cache (activations, allocator slack): lpm-17b on an H200 peaked at 61.6 GiB for
# 53.6 GiB of bf16 weights and cache (docs/measurements.md).
MEMORY_OVERHEAD = 1.2
DTYPES = {"cpu": torch.float32, "cuda": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}  # as ``time_codec`` names them
# Figures of a row that ran; a skipped row has them as None.
FIGURES = (
    "generate_ms",
    "refine_ms",
    "decode_ms",
    "pipelined_fps",
    "sequential_fps",
    "realtime",
    "pipelined_fps_no_refiner",
    "sequential_fps_no_refiner",
    "realtime_no_refiner",
    "peak_memory_mb",
    "vae",
    "vae_encode_ms_per_frame",
)
DEFAULT_PRESETS = {"cpu": ("tiny", "small"), "cuda": ("tiny", "small", "base", "lpm-17b")}
GIB = 2**30
MIB = 2**20


def parse_resolution(text: str) -> tuple[int, int]:
    """``480p`` -> (480, 832), ``720p`` -> (720, 1280), ``N`` -> (N, N) pixels."""
    if text in RESOLUTIONS:
        return RESOLUTIONS[text]
    if text.isdigit() and int(text) > 0:
        return int(text), int(text)
    raise LpmError(f"--res {text!r}: expected {', '.join(RESOLUTIONS)} or a size in pixels such as 256")


def at_resolution(cfg: DiTConfig, pixels: tuple[int, int] | None) -> tuple[DiTConfig, str]:
    """``cfg`` with the latent size of ``pixels`` (``None``: its own) and a note when a side had to be rounded.

    Latent sides are ``pixels / 8`` rounded up to a multiple of both patch sizes (720 px -> 90 -> 92 latent
    rows with the 4-cell reference patches), so the model is never smaller than asked for.
    """
    cfg = replace(cfg, attention="block_causal")  # the Online model
    if pixels is None:
        return cfg, ""
    multiple = math.lcm(cfg.patch_size, cfg.reference_patch_size)
    sides = [math.ceil(math.ceil(p / VAE_DOWNSAMPLE) / multiple) * multiple for p in pixels]
    note = ""
    if [s * VAE_DOWNSAMPLE for s in sides] != list(pixels):
        note = (
            f"{pixels[0]}x{pixels[1]} px rounded up to {sides[0] * VAE_DOWNSAMPLE}x{sides[1] * VAE_DOWNSAMPLE}: "
            f"latent sides must divide by {multiple}"
        )
    return replace(cfg, latent_height=sides[0], latent_width=sides[1]), note


def device_info(device: torch.device) -> dict:
    """The device by name (CPU model or GPU), torch threads and version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "device": device.type,
        "name": cpu,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_avg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / GIB, 1)
    return info


def memory_available(device: torch.device) -> int:
    """Bytes free now: ``MemAvailable`` on CPU, free device memory on CUDA."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise LpmError("cannot read MemAvailable from /proc/meminfo; pass a memory budget")


def estimate_memory(cfg: DiTConfig, device: torch.device, dtype: torch.dtype) -> dict:
    """Parameters (counted on the meta device, as ``lpm model info``) and the bytes a run needs."""
    from lpm.models.commands import build_meta
    from lpm.models.timing import kv_cache_bytes

    params = sum(p.numel() for p in build_meta(cfg).parameters())
    weight_dtype = dtype if device.type == "cuda" else torch.float32  # as OnlineChunkBench builds them
    weights = params * torch.empty((), dtype=weight_dtype).element_size()
    cache = kv_cache_bytes(cfg, dtype)
    return {
        "params": params,
        "weights_bytes": weights,
        "kv_cache_bytes": cache,
        "needs_bytes": int(MEMORY_OVERHEAD * (weights + cache)),
    }


def speed_codec(latent_channels: int, device: torch.device):
    """The shipped tiny VAE when its latent channels match, else a random ``LpmVAE`` of its widths; and a label."""
    from lpm.models.latent_codec import load_codec
    from lpm.models.vae import LpmVAE, VAEConfig
    from lpm.runtime.dit_engine import DEFAULT_VAE

    shipped = None
    if Path(DEFAULT_VAE).is_file():
        shipped = load_codec(DEFAULT_VAE)
        if shipped.latent_channels == latent_channels:
            return shipped.to(device).eval(), DEFAULT_VAE
    shape = replace(shipped.cfg if shipped is not None else VAEConfig(), latent_channels=latent_channels)
    label = f"random LpmVAE, channels {list(shape.channels)}, {latent_channels} latent channels"
    return LpmVAE(shape).to(device).eval(), label


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets the peak RSS (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the peak then covers the whole process so far


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rates(frames: int, stage_ms: list[float]) -> dict:
    """Pipelined (``frames / max``) and sequential (``frames / sum``) frames per second of stage times."""
    return {
        "pipelined_fps": round(1000 * frames / max(stage_ms), 2),
        "sequential_fps": round(1000 * frames / sum(stage_ms), 2),
    }


def _time_dit(
    cfg: DiTConfig, device: torch.device, dtype: torch.dtype, repeats: int, log: Callable[[str], None]
) -> tuple[float, float, int]:
    """Milliseconds of the generate and refine stages per chunk, and the KV cache's bytes."""
    from lpm.models.timing import OnlineChunkBench, median_seconds
    from lpm.runtime.dit_engine import DEFAULT_DENOISE_STEPS, DEFAULT_REFINER_TIME

    bench = OnlineChunkBench.build(cfg, device, dtype)
    log(f"generate ({DEFAULT_DENOISE_STEPS} steps + commit) x {repeats}")
    generate = median_seconds(lambda: bench.chunk(DEFAULT_DENOISE_STEPS), repeats, WARMUP, device)
    log(f"refine x {repeats}")
    refine = median_seconds(lambda: bench.refine(DEFAULT_REFINER_TIME), repeats, WARMUP, device)
    return generate * 1000, refine * 1000, bench.cache.nbytes()


def time_preset(
    name: str,
    cfg: DiTConfig,
    device: torch.device,
    repeats: int,
    budget: int,
    note: str = "",
    log: Callable[[str], None] = print,
) -> dict:
    """One report row: the stage times of ``cfg`` (already at the wanted resolution), or why it was skipped."""
    from lpm.models.latent_codec import time_codec

    dtype = DTYPES[device.type]
    fc = cfg.frames_per_chunk
    height, width = cfg.latent_height * VAE_DOWNSAMPLE, cfg.latent_width * VAE_DOWNSAMPLE
    estimate = estimate_memory(cfg, device, dtype)
    row = {
        "preset": name,
        "latent": [cfg.latent_channels, cfg.latent_height, cfg.latent_width],
        "resolution": [height, width],
        "frames_per_chunk": fc,
        "tokens_per_chunk": cfg.tokens_per_chunk,
        "params": estimate["params"],
        "dtype": DTYPE_NAMES[dtype],
        "estimated_gib": round(estimate["needs_bytes"] / GIB, 2),
        "note": note,
        "kv_cache_mb": round(estimate["kv_cache_bytes"] / MIB, 2),
        **dict.fromkeys(FIGURES),
    }
    if estimate["needs_bytes"] > budget:
        row["status"] = f"skipped: needs ~{estimate['needs_bytes'] / GIB:.1f} GiB, {budget / GIB:.1f} GiB available"
        log(f"speed {name}: {row['status']}")
        return row
    gc.collect()
    _reset_peak(device)
    log(
        f"speed {name}: building {estimate['params'] / 1e6:.1f} M parameters, latent {row['latent']}, "
        f"{height}x{width} px, {row['dtype']} on {device.type}"
    )
    generate, refine, kv_bytes = _time_dit(cfg, device, dtype, repeats, lambda what: log(f"speed {name}: {what}"))
    gc.collect()
    log(f"speed {name}: VAE decode x {repeats}")
    codec, vae = speed_codec(cfg.latent_channels, device)
    codec_ms = time_codec(
        codec, height, width, frames=fc, dtypes=(dtype,), budget_s=float("inf"), max_iters=repeats
    )  # ms per frame, one warm-up
    decode = codec_ms[f"decode_{row['dtype']}"] * fc
    del codec
    with_refiner, without = rates(fc, [generate, refine, decode]), rates(fc, [generate, decode])
    row.update(
        {
            "status": "ok",
            "generate_ms": round(generate, 2),
            "refine_ms": round(refine, 2),
            "decode_ms": round(decode, 2),
            "vae": vae,
            "vae_encode_ms_per_frame": codec_ms["encode_fp32"],
            **with_refiner,
            "realtime": with_refiner["pipelined_fps"] >= REALTIME_FPS,
            "pipelined_fps_no_refiner": without["pipelined_fps"],
            "sequential_fps_no_refiner": without["sequential_fps"],
            "realtime_no_refiner": without["pipelined_fps"] >= REALTIME_FPS,
            "peak_memory_mb": round(_peak_mb(device), 1),
            "peak_memory_kind": "rss" if device.type == "cpu" else "cuda_max_allocated",
            "kv_cache_mb": round(kv_bytes / MIB, 2),  # measured: KVCache.nbytes
        }
    )
    log(
        f"speed {name}: generate {generate:.1f} ms, refine {refine:.1f} ms, decode {decode:.1f} ms per {fc} frames "
        f"-> {row['pipelined_fps']} fps pipelined, {row['sequential_fps']} sequential"
    )
    return row


def run_speed(
    out: str | Path,
    configs: dict[str, DiTConfig],
    res: str | None = None,
    device: str | None = None,
    repeats: int = DEFAULT_REPEATS,
    memory_budget: int | None = None,
    threads: int = 0,
    log: Callable[[str], None] | None = None,
    engine_checkpoint: str | None = None,
    engine_chunks: int = 8,
    engine_seconds: float = 30.0,
) -> dict:
    """Time every config and write ``out/report.json`` and ``out/report.md``; returns the report.

    Args:
        configs: name -> ``DiTConfig`` (``lpm.models.dit_config.PRESETS`` or any custom one).
        res: ``480p``, ``720p`` or pixels ``N`` (N x N); None: each config's own latent size.
        device: ``cpu`` or ``cuda``; None: CUDA when present.
        repeats: timed chunks (and forwards, decodes) per stage; the median is reported.
        memory_budget: bytes a preset may need; None: what the device has free when the preset starts.
        threads: torch threads (0: torch's default).
        engine_checkpoint: on a CPU, also time this Online checkpoint through the runtime's engine, lever by
            lever, and a realtime session of ``engine_seconds`` (``lpm.eval.speed_engine``); None: skip.
        engine_chunks: measured chunks per lever.
    """
    from lpm.runtime.dit_engine import DEFAULT_DENOISE_STEPS

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type not in DTYPES:
        raise LpmError(f"--device {dev.type}: expected one of {', '.join(DTYPES)}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LpmError("--device cuda: no CUDA device is present")
    if repeats < 1:
        raise LpmError("--repeats must be at least 1")
    if threads:
        torch.set_num_threads(threads)
    pixels = parse_resolution(res) if res else None
    t0 = time.time()
    rows = []
    for name, base_cfg in configs.items():
        cfg, note = at_resolution(base_cfg, pixels)
        budget = memory_budget if memory_budget is not None else memory_available(dev)
        rows.append(time_preset(name, cfg, dev, repeats, budget, note, log))
    report = {
        "suite": "speed",
        "device": device_info(dev),
        "repeats": repeats,
        "warmup": WARMUP,
        "statistic": "median",
        "denoise_steps": DEFAULT_DENOISE_STEPS,
        "realtime_fps": REALTIME_FPS,
        "res": res,
        "rows": rows,
    }
    if engine_checkpoint and dev.type == "cpu":
        from lpm.eval.speed_engine import run_engine_speed

        report["engine"] = run_engine_speed(engine_checkpoint, engine_chunks, engine_seconds, log)
    report["wall_s"] = round(time.time() - t0, 1)
    write_speed_report(out, report)
    return report


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_speed_report(out: str | Path, report: dict) -> None:
    """``out/report.json`` and ``out/report.md`` (the device line and one table)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    d = report["device"]
    lines = [
        "# LPM-Bench speed",
        "",
        f"Device: {d['name']} ({d['device']}), torch threads {d['threads']}, {d['cpu_count']} CPUs "
        f"({d['cpu']}), load average {d['load_avg']}, torch {d['torch']}. Random weights, batch 1, median of "
        f"{report['repeats']} after {report['warmup']} warm-up; ms per chunk; fps = frames per chunk / stage time.",
        "",
        "| preset | latent | video | params | dtype | generate ms | refine ms | decode ms | fps pipelined | "
        "fps sequential | fps pipelined, no refiner | >= 24 fps | peak MiB | KV cache MiB |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    notes = []
    for r in report["rows"]:
        latent = "x".join(map(str, r["latent"]))
        video = "x".join(map(str, r["resolution"]))
        params = f"{r['params'] / 1e6:,.1f} M"
        if r["status"] != "ok":
            lines.append(
                f"| {r['preset']} | {latent} | {video} | {params} | {r['dtype']} | {r['status']} "
                f"| | | | | | | | {_fmt(r['kv_cache_mb'])} |"
            )
        else:
            meets = ("yes" if r["realtime"] else "no") + (
                ""
                if r["realtime"] == r["realtime_no_refiner"]
                else f" ({'yes' if r['realtime_no_refiner'] else 'no'} without refiner)"
            )
            lines.append(
                f"| {r['preset']} | {latent} | {video} | {params} | {r['dtype']} | {_fmt(r['generate_ms'])} "
                f"| {_fmt(r['refine_ms'])} | {_fmt(r['decode_ms'])} | {_fmt(r['pipelined_fps'], 2)} "
                f"| {_fmt(r['sequential_fps'], 2)} | {_fmt(r['pipelined_fps_no_refiner'], 2)} | {meets} "
                f"| {_fmt(r['peak_memory_mb'], 0)} | {_fmt(r['kv_cache_mb'])} |"
            )
        if r.get("note"):
            notes.append(f"- {r['preset']}: {r['note']}")
    lines += [
        "",
        f"generate = {report['denoise_steps']} denoising "
        "forwards + the cache commit, with a full KV cache; refine = one uncached forward of the chunk and every "
        "reference; decode = the VAE on the chunk's frames. Peak memory: process RSS on CPU, "
        "torch.cuda.max_memory_allocated on CUDA."
        + (
            " On a CPU the stages share the same cores, so the sequential rate is the one a stream gets."
            if d["device"] == "cpu"
            else ""
        ),
        *([""] + notes if notes else []),
    ]
    if report.get("engine"):
        from lpm.eval.speed_engine import engine_report_lines

        lines += engine_report_lines(report["engine"])
    (out / "report.md").write_text("\n".join(lines) + "\n")
