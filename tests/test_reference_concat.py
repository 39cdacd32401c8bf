"""``reference_concat``: the global reference's latent added token by token (an image-to-video model's channel
concatenation). Zero at init (a checkpoint without it loads and predicts the same), used when trained, streamed
from the KV cache equal to the full forward, and a clear error without a global reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lpm.models.conditioning import References
from lpm.models.dit import DiT
from test_dit import make_inputs, make_model, micro, stream


def test_zero_init_equals_the_model_without_it_and_trained_weights_use_the_reference():
    with_concat = make_model(micro(reference_concat=True))
    fresh = DiT(micro(reference_concat=True)).reference_in
    assert not fresh.weight.any() and not fresh.bias.any()  # a fresh model starts without the path
    with torch.no_grad():  # make_model perturbs every weight: zero it as a fresh init does
        with_concat.reference_in.weight.zero_()
        with_concat.reference_in.bias.zero_()
    without = make_model(micro())
    without.load_state_dict({k: v for k, v in with_concat.state_dict().items() if not k.startswith("reference_in.")})
    x, t, cond = make_inputs(with_concat)
    with torch.no_grad():
        assert torch.equal(with_concat(x, t, cond), without(x, t, cond))
        torch.nn.init.normal_(with_concat.reference_in.weight, 0, 0.1)
        base = with_concat(x, t, cond)
        other = References([r.clone() for r in cond.references.latents], list(cond.references.kinds))
        other.latents[0] = other.latents[0] + 1.0  # another global reference
        assert (with_concat(x, t, dataclasses.replace(cond, references=other)) - base).abs().max() > 1e-4
    with_concat(x, t, cond).square().mean().backward()  # and it trains (the uncached forward keeps the graph)
    assert with_concat.reference_in.weight.grad.abs().sum() > 0


def test_streaming_takes_the_reference_from_the_cache_and_equals_the_full_forward():
    model = make_model(micro(reference_concat=True))
    with torch.no_grad():
        torch.nn.init.normal_(model.reference_in.weight, 0, 0.1)
    x, t, cond = make_inputs(model)
    with torch.no_grad():
        full = model(x, t, cond)
    streamed = stream(model, x, t, cond)
    assert (streamed - full).abs().max() <= 1e-10 * full.abs().max()


def test_a_missing_or_misshapen_global_reference_is_a_clear_error():
    model = make_model(micro(reference_concat=True))
    x, t, cond = make_inputs(model)
    refs = cond.references
    no_global = References(refs.latents[1:], refs.kinds[1:])
    with pytest.raises(ValueError, match="global reference"):
        model(x, t, dataclasses.replace(cond, references=no_global))
    small = References([refs.latents[0][..., :4, :4], *refs.latents[1:]], list(refs.kinds))
    with pytest.raises(ValueError, match="not a frame's latent"):
        model(x, t, dataclasses.replace(cond, references=small))


def test_reference_residual_starts_as_the_still_reference_and_streams_equal_to_the_full_forward():
    model = make_model(micro(reference_residual=True))
    x, t, cond = make_inputs(model)
    ref = cond.references.latents[cond.references.kinds.index("global")]
    with torch.no_grad():
        out = model(x, t, cond)
        model.restart_head()  # as a fresh model or a fine-tune from weights without it: the still reference
        still = model(x, t, cond)
    assert (out - ref[:, None]).abs().max() > 1e-3  # the perturbed head adds something of its own
    assert torch.equal(still, ref[:, None].expand_as(still))
    model = make_model(micro(reference_residual=True, reference_concat=True))
    with torch.no_grad():
        full = model(x, t, cond)
    streamed = stream(model, x, t, cond)
    assert (streamed - full).abs().max() <= 1e-6 * full.abs().max()
    no_global = References(cond.references.latents[1:], cond.references.kinds[1:])
    with pytest.raises(ValueError, match="reference_residual needs the global reference"):
        make_model(micro(reference_residual=True))(x, t, dataclasses.replace(cond, references=no_global))


def test_reference_warp_starts_as_the_identity_moves_the_reference_with_the_head_pose_and_streams():
    from lpm.models.reference_warp import AFFINE_GAIN, ReferenceWarp

    channels = ("jaw_open", "head_yaw", "head_pitch", "head_roll")
    warp = ReferenceWarp(channels, 8, 8).double()
    ref = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    track = torch.randn(2, 3, len(channels), dtype=torch.float64)
    assert (warp(ref, track) - ref[:, None]).abs().max() < 1e-12  # zero pose matrices: the still reference
    with torch.no_grad():
        warp.pose_to_affine[2, 1, 2] = 0.25 / AFFINE_GAIN  # roll -> a vertical shift of an eighth of the frame per unit
        warp.mask_logit.fill_(30.0)  # every cell follows the head
    track = torch.zeros(1, 2, len(channels), dtype=torch.float64)
    track[0, 1, 3] = 1.0  # frame 1 rolls, frame 0 does not
    moved = warp(ref[:1], track)
    assert (moved[0, 0] - ref[0]).abs().max() < 1e-9
    assert torch.allclose(moved[0, 1, :, 1:-2], ref[0, :, 2:-1], atol=1e-9)  # shifted up by one cell
    track.requires_grad_(False)
    moved.square().sum().backward()
    assert warp.pose_to_affine.grad[2].abs().sum() > 0 and warp.pose_to_affine.grad[0].abs().sum() == 0  # jaw: none

    cfg = micro(reference_residual=True, reference_warp=True, motion_channels=channels, motion_spatial=True)
    model = make_model(cfg)
    x, t, cond = make_inputs(model)
    given = dataclasses.replace(cond, motion=torch.randn(1, x.shape[1], len(channels), dtype=torch.float64))
    with torch.no_grad():
        warped = model(x, t, given)
        model.reference_warp.pose_to_affine.zero_()
        unwarped = model(x, t, given)
    assert (warped - unwarped).abs().max() > 1e-3  # the track's head pose moves the reference
    with torch.no_grad():
        torch.nn.init.normal_(model.reference_warp.pose_to_affine, 0, 0.1)
        full = model(x, t, cond)  # the track predicted from audio, as when streaming
    streamed = stream(model, x, t, cond)
    assert (streamed - full).abs().max() <= 1e-6 * full.abs().max()
    with pytest.raises(Exception, match="reference_warp moves the reference"):
        micro(reference_warp=True, motion_channels=channels)
