"""KVCache bookkeeping: ring slots, window-relative positions, the position bound over 10,000 chunks."""

from __future__ import annotations

import pytest
import torch

from lpm.models import KVCache, preset
from lpm.models.attention import online_chunk_positions, plan_chunk
from lpm.models.rope import Rope3D


def small_cfg(**kw):
    base = dict(
        latent_height=2,
        latent_width=2,
        patch_size=2,
        reference_patch_size=2,
        dim=32,
        num_heads=2,
        num_blocks=1,
        frames_per_chunk=4,
        sink_chunks=1,
        window_chunks=3,
    )
    base.update(kw)
    return preset("tiny", **base)


def test_positions_are_absolute_until_the_window_is_full_then_frozen():
    s, w = 1, 3
    for c in range(s + w + 1):
        keys, positions, q = online_chunk_positions(c, s, w)
        assert keys == positions == list(range(c)) and q == c
    for c in (s + w + 1, 57, 10_000):
        keys, positions, q = online_chunk_positions(c, s, w)
        assert keys == [0, *range(c - w, c)]
        assert positions == list(range(s + w)) and q == s + w


def test_position_bound_after_10000_chunks():
    cfg = small_cfg()
    rope = Rope3D(cfg.head_dim)
    cache = KVCache.empty(cfg, 1)
    cache.set_references([], torch.zeros(0, 3, dtype=torch.float64))
    first_full = None
    largest_key = float("-inf")
    for c in range(10_000):
        groups, num_slots = plan_chunk(cfg, rope, cache)
        assert num_slots == min(c, cfg.sink_chunks + cfg.window_chunks)
        # keys never sit beyond the query chunk
        key_angles = torch.atan2(groups[0].k_rope[1][:, 0], groups[0].k_rope[0][:, 0])
        largest_key = max(largest_key, float(key_angles.max()))
        if c == cfg.sink_chunks + cfg.window_chunks:
            first_full = cache.max_time_position
        cache.commit(None)
    bound = (cfg.sink_chunks + cfg.window_chunks + 1) * cfg.frames_per_chunk - 1
    assert first_full == bound
    assert cache.max_time_position == bound  # after 10,000 chunks: the same as the first full window
    assert largest_key <= bound + 1e-9  # axis-t angle at frequency 1 equals the time position


def test_ring_slots_and_constant_memory():
    cfg = small_cfg()
    cache = KVCache.empty(cfg, 2)
    cache.set_references([(torch.zeros(2, 2, 3, 16), torch.zeros(2, 2, 3, 16))], torch.zeros(3, 3))
    nbytes = cache.nbytes()
    nc = cfg.tokens_per_chunk
    for c in range(20):
        kv = torch.full((2, 2, nc, 16), float(c))
        cache.commit([(kv, kv)])
        assert cache.nbytes() == nbytes
    # chunk 0 is the sink; slots 1..3 hold the last three chunks 17, 18, 19 (ring: 17 -> slot 1 + 16 % 3 = 2)
    assert cache.slot_chunk[0] == 0
    assert sorted(cache.slot_chunk[1:]) == [17, 18, 19]
    for slot, chunk in enumerate(cache.slot_chunk):
        assert torch.all(cache.slot_k[0][:, :, slot * nc : (slot + 1) * nc] == chunk)
    num_slots, positions, q = cache.context()
    assert num_slots == 4 and q == 4 and sorted(positions) == [0, 1, 2, 3]
    k, v = cache.prefix(0, num_slots)
    assert torch.cat(k, 2).shape == (2, 2, 3 + 4 * nc, 16)


def test_out_of_order_use_is_an_error():
    cfg = small_cfg()
    cache = KVCache.empty(cfg, 1)
    for _ in range(5):
        cache.commit(None)
    with pytest.raises(RuntimeError, match="committed in order"):
        cache.context(chunk=9)
