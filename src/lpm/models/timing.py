"""``OnlineChunkBench``: a random-weight DiT with a full KV cache, for timing forwards of one Online chunk.

Shared by ``lpm model time`` (one generator forward) and ``lpm bench --suite speed`` (a whole chunk: the
denoising steps, the cache commit and the refiner's uncached forward). The cache is as full as a session's ever
gets: every reference kind prefilled, the sink and window slots filled and one eviction done, so a timed
forward attends to exactly what a long session's does.

Precision: ``dtype`` is the compute precision. fp32 runs plain; a lower precision runs under autocast with the
cache stored in it, and on CUDA the weights are built in it too (lpm-17b's fp32 weights alone would need 66 GB).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lpm.models.conditioning import Conditioning, References
from lpm.models.dit import DiT
from lpm.models.dit_config import DiTConfig
from lpm.models.kv_cache import KVCache

CAPTION = "a person listening, then answering with a smile"


def full_references(
    cfg: DiTConfig, batch: int = 1, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> References:
    """Random latents for every reference kind of ``cfg`` (the largest reference set a session can have)."""
    kinds = list(cfg.reference_kinds)
    shape = (batch, cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    return References([torch.randn(shape, dtype=dtype, device=device) for _ in kinds], kinds)


def reference_token_count(cfg: DiTConfig) -> int:
    """Tokens of the full reference set (every kind), as held by a prefilled cache."""
    return sum(cfg.reference_tokens(kind) for kind in cfg.reference_kinds)


def kv_cache_bytes(cfg: DiTConfig, dtype: torch.dtype, batch: int = 1) -> int:
    """Bytes of a prefilled ``KVCache`` with every reference kind: what ``KVCache.nbytes`` reports, computed."""
    slots = cfg.sink_chunks + cfg.window_chunks
    tokens = slots * cfg.tokens_per_chunk + reference_token_count(cfg)
    per_layer = 2 * batch * cfg.num_heads * tokens * cfg.head_dim  # keys and values
    return cfg.num_blocks * per_layer * torch.empty((), dtype=dtype).element_size()


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA), so wall-clock times cover the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.ExitStack:
    """Inference mode, and autocast to ``dtype`` when it is not fp32."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if dtype != torch.float32:
        stack.enter_context(torch.autocast(device.type, dtype=dtype))
    return stack


@dataclass
class OnlineChunkBench:
    """A random-weight DiT, its full KV cache and one chunk's inputs (build with ``OnlineChunkBench.build``).

    Attributes:
        model: the DiT in eval mode (random weights, the output head made non-zero so nothing is skipped).
        cache: prefilled with every reference kind; sinks and window full.
        latents: ``(1, Fc, C, h, w)`` the chunk every forward runs on.
        references: the full reference set (the refiner's uncached forward reads it).
        device, dtype: where and in which compute precision it runs.
    """

    model: DiT
    cache: KVCache
    latents: torch.Tensor
    references: References
    text: tuple[torch.Tensor, torch.Tensor]  # (tokens (1, L, text_dim), mask (1, L))
    mel: torch.Tensor  # (1, frames, k, M), random log-mel of a long stream
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def build(
        cls,
        cfg: DiTConfig,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        max_chunks: int = 2_000,
    ) -> OnlineChunkBench:
        """Build the model, prefill every reference kind and commit ``S + W + 1`` chunks (one eviction).

        ``max_chunks``: chunks the random audio stream covers (committed chunks advance through it).
        """
        device = torch.device(device)
        torch.manual_seed(seed)
        weights = dtype if device.type == "cuda" else torch.float32
        with torch.device(device), _default_dtype(weights):
            model = DiT(cfg).eval()
        with torch.no_grad():
            torch.nn.init.normal_(model.head.linear.weight, std=0.02)
        fc = cfg.frames_per_chunk
        shape = (1, fc, cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        latents = torch.randn(shape, device=device, dtype=weights)
        frames = max_chunks * fc + cfg.audio_lookahead_frames
        mel = torch.randn(1, frames, cfg.mel_steps_per_frame, cfg.mel.n_mels, device=device, dtype=weights)
        with _autocast(device, dtype):
            tokens, mask = model.encode_text([CAPTION])
        bench = cls(
            model,
            KVCache.empty(cfg, 1, device=device, dtype=dtype),
            latents,
            full_references(cfg, device=device, dtype=weights),
            (tokens.to(device), mask.to(device)),
            mel,
            device,
            dtype,
        )
        with _autocast(device, dtype):
            model.prefill(bench.cache, bench.references)
        for _ in range(cfg.sink_chunks + cfg.window_chunks + 1):  # fill sinks and window, then one eviction
            bench.forward(commit=True, t=0.0)
        synchronize(device)
        return bench

    def forward(self, commit: bool = False, t: float = 0.5) -> None:
        """One generator forward of the next chunk reading the cache; ``commit`` stores it (CausVid's commit)."""
        fc = self.model.cfg.frames_per_chunk
        start, end = self.model.audio_frame_range(self.cache.chunks_seen * fc, fc)
        if end > self.mel.shape[1]:
            raise RuntimeError(f"the timing stream covers {self.mel.shape[1]} frames; raise max_chunks")
        cond = Conditioning(*self.text, self.mel[:, start:end], self.mel[:, start:end], start)
        t_chunk = torch.full((1,), t, device=self.device)
        with _autocast(self.device, self.dtype):
            self.model(self.latents, t_chunk, cond, cache=self.cache, update_cache=commit)

    def chunk(self, denoise_steps: int) -> None:
        """One Online chunk: ``denoise_steps`` forwards reading the cache, then the commit forward."""
        for _ in range(denoise_steps):
            self.forward(commit=False, t=0.5)
        self.forward(commit=True, t=0.0)

    def refine(self, t: float = 0.3) -> None:
        """The refiner's forward: uncached, the chunk alone plus every reference (``DiTEngine._refine``)."""
        fc = self.model.cfg.frames_per_chunk
        start, end = self.model.audio_frame_range(0, fc)
        cond = Conditioning(
            *self.text, self.mel[:, start:end], self.mel[:, start:end], start, references=self.references
        )
        with _autocast(self.device, self.dtype):
            self.model(self.latents, torch.full((1,), t, device=self.device), cond)


def median_seconds(fn: Callable[[], None], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall-clock seconds of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def time_online_chunk(
    cfg: DiTConfig, iters: int = 20, warmup: int = 5, bf16: bool = True, device: torch.device | str = "cpu"
) -> float:
    """Seconds per generator forward of one chunk with a full cache (refs + S sinks + W window chunks).

    Random weights (the head made non-zero so nothing is skipped), every reference kind, batch 1; the mean over
    ``iters`` forwards after ``warmup``.
    """
    bench = OnlineChunkBench.build(cfg, device, torch.bfloat16 if bf16 else torch.float32)
    for _ in range(warmup):
        bench.forward()
    synchronize(bench.device)
    begin = time.perf_counter()
    for _ in range(iters):
        bench.forward()
    synchronize(bench.device)
    return (time.perf_counter() - begin) / iters
