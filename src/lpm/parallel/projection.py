"""Projection of a preset's chunk rate onto N devices, from measured single-device stage times and a measured (or
stated) all-to-all cost. Every figure it makes is labelled a projection; ``lpm.eval.speed_scale`` measures where the
devices exist.

The model (docs/scale.md states it with its assumptions):

- sequence parallelism over ``n`` devices splits a forward's work ``n`` ways (linears: tokens / n; attention:
  heads / n over all tokens), so its compute is the single-device time / n (assumption: no loss of kernel
  efficiency at the smaller per-device shapes, and the work every rank repeats, the embeddings and the text / audio
  keys of the cross-attention, is negligible);
- each forward adds ``2 * blocks`` all-to-alls (q, k, v stacked; the attention output) of
  ``(n - 1) / n`` of the rank's ``tokens / n x D`` activations each, and one all-gather of the output; each costs
  ``latency + bytes / bandwidth`` (``LinkCost``);
- the generator runs ``denoise_steps + 1`` forwards of a chunk's tokens (the cache is per rank: no cached key
  moves), the refiner one forward of the chunk and every reference, the decoder its measured time per chunk
  (per video frame x ``t_down`` video frames per latent frame);
- a temporally compressed latent (``t_down`` video frames per latent frame) leaves the DiT's work per chunk as it is
  and multiplies the video frames a chunk makes by ``t_down``.

Layouts of ``n`` devices: ``sp`` (every stage on all ``n``, one after the other: a chunk costs the sum),
``staged`` (the generator on ``g`` devices, the refiner and the decoder on the other ``n - g``, overlapping as a
pipeline: a chunk costs the slower side; the best ``g`` is reported) and ``sp_no_refiner``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lpm.models.dit_config import DiTConfig

REALTIME_FPS = 24.0


@dataclass(frozen=True)
class StageTimes:
    """Single-device milliseconds per chunk of each stage (a speed report row), and where they were measured."""

    generate_ms: float  # denoise_steps + 1 forwards of the chunk reading the cache
    refine_ms: float  # one uncached forward of the chunk and every reference
    decode_ms: float  # the VAE on the chunk's frames (per-frame VAE: frames_per_chunk frames)
    denoise_steps: int
    source: str  # e.g. "NVIDIA H100 80GB HBM3, docs/bench/speed_h100/report.json"


@dataclass(frozen=True)
class LinkCost:
    """Cost of one collective between the devices: ``latency_s + bytes / bytes_per_s`` per rank."""

    latency_s: float
    bytes_per_s: float
    source: str  # "measured: ..." or "assumed: ..."

    def seconds(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bytes_per_s


def reference_tokens(cfg: DiTConfig) -> int:
    """Tokens of every reference kind (what the refiner's uncached forward carries beside the chunk)."""
    return sum(cfg.reference_tokens(kind) for kind in cfg.reference_kinds)


def forward_comm_seconds(cfg: DiTConfig, tokens: int, devices: int, link: LinkCost, dtype_bytes: int) -> float:
    """All-to-all and output all-gather time of one sequence-parallel forward over ``tokens`` tokens."""
    if devices == 1:
        return 0.0
    share = (devices - 1) / devices
    local = -(-tokens // devices)  # tokens per rank, padded up
    qkv = share * 3 * local * cfg.dim * dtype_bytes
    out = share * local * cfg.dim * dtype_bytes
    per_block = link.seconds(qkv) + link.seconds(out)
    patch_values = cfg.latent_channels * cfg.patch_size**2
    gather = link.seconds(share * cfg.tokens_per_chunk * patch_values * dtype_bytes)
    return cfg.num_blocks * per_block + gather


@dataclass(frozen=True)
class ProjectedRow:
    """The projected figures of one device count."""

    devices: int
    generate_ms: float  # on all devices (sp layout)
    refine_ms: float
    decode_ms: float
    comm_ms_per_forward: float  # the all-to-alls of one generator forward
    sp_fps: float  # every stage on all devices, in turn
    staged_fps: float | None  # best generator / refiner split (None for one device)
    staged_split: tuple[int, int] | None  # (generator devices, refiner + decoder devices)
    sp_no_refiner_fps: float  # generator on all devices, decode overlapped
    video_frames_per_chunk: int
    t_down: int
    kv_cache_gib_per_device: float  # the generator's cache split by heads
    weights_gib_per_device: float  # every rank holds the whole model (sequence parallelism splits tokens)

    @property
    def best_fps(self) -> float:
        return max(self.sp_fps, self.staged_fps or 0.0)

    def realtime_factor(self, fps: float) -> float:
        return fps / REALTIME_FPS


def _sp_stage_ms(single_ms: float, forwards: int, tokens: int, cfg: DiTConfig, n: int, link: LinkCost,
                 dtype_bytes: int) -> float:
    return single_ms / n + 1000 * forwards * forward_comm_seconds(cfg, tokens, n, link, dtype_bytes)


def project(cfg: DiTConfig, times: StageTimes, link: LinkCost, devices: int, t_down: int = 1,
            dtype_bytes: int = 2, weights_bytes: int = 0, kv_cache_bytes: int = 0) -> ProjectedRow:
    """Figures of ``cfg`` on ``devices`` devices (see the module docstring).

    Args:
        times: measured single-device stage times per chunk of ``cfg.frames_per_chunk`` latent frames.
        link: the all-to-all cost between the devices.
        t_down: video frames per latent frame.
        dtype_bytes: bytes per activation value in the all-to-alls (2: bf16).
        weights_bytes, kv_cache_bytes: the model's weights and its full KV cache (one device), for the memory
            columns.
    """
    if devices < 1 or t_down < 1:
        raise ValueError(f"devices and t_down must be >= 1, got {devices}, {t_down}")
    if cfg.num_heads % devices:
        raise ValueError(f"{devices} devices cannot split {cfg.num_heads} heads (Ulysses: heads / devices)")
    nc, forwards = cfg.tokens_per_chunk, times.denoise_steps + 1
    refine_tokens = nc + reference_tokens(cfg)
    frames = cfg.frames_per_chunk * t_down
    decode = times.decode_ms * t_down  # per-frame decoder cost x video frames per latent frame

    def gen(n: int) -> float:
        return _sp_stage_ms(times.generate_ms, forwards, nc, cfg, n, link, dtype_bytes)

    def ref(n: int) -> float:
        return _sp_stage_ms(times.refine_ms, 1, refine_tokens, cfg, n, link, dtype_bytes)

    def fps(ms: float) -> float:
        return 1000 * frames / ms

    usable = [n for n in range(1, devices + 1) if cfg.num_heads % n == 0]
    best = None
    for g in usable:
        r = devices - g
        if r < 1 or cfg.num_heads % r:
            continue
        rate = fps(max(gen(g), ref(r) + decode))
        if best is None or rate > best[0]:
            best = (rate, (g, r))
    return ProjectedRow(
        devices=devices,
        generate_ms=gen(devices),
        refine_ms=ref(devices),
        decode_ms=decode,
        comm_ms_per_forward=1000 * forward_comm_seconds(cfg, nc, devices, link, dtype_bytes),
        sp_fps=fps(gen(devices) + ref(devices) + decode),
        staged_fps=None if best is None else best[0],
        staged_split=None if best is None else best[1],
        sp_no_refiner_fps=fps(max(gen(devices), decode)),
        video_frames_per_chunk=frames,
        t_down=t_down,
        kv_cache_gib_per_device=kv_cache_bytes / devices / 2**30,
        weights_gib_per_device=weights_bytes / 2**30,
    )
