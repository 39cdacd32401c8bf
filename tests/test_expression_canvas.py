"""``expression_canvas``: each frame drawn on the exemplar of its track's strongest emotion (the frame-aligned
reference of ``reference_concat`` / ``reference_residual``), the global reference below the floor or where the
exemplar is missing; streamed through the KV cache equal to the full forward; configs that cannot use it refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lpm.config import ConfigError
from lpm.models.conditioning import References
from test_dit import make_inputs, make_model, micro, stream

CHANNELS = ("jaw_open", "emo_happy", "emo_sad")


def _inputs(model, track_rows):
    x, t, cond = make_inputs(model, num_chunks=2)
    c, h, w = x.shape[2:]
    g = torch.Generator().manual_seed(5)
    refs = References([torch.randn(1, c, h, w, generator=g, dtype=x.dtype) for _ in range(3)],
                      ["global", "expr_happy", "expr_sad"])
    motion = torch.tensor([track_rows], dtype=x.dtype)  # (1, F, P)
    return x, t, dataclasses.replace(cond, references=refs, motion=motion, pose=None)


def test_each_frame_starts_from_the_exemplar_of_its_emotion():
    rows = [[0.5, 0.0, 0.0], [0.1, 0.6, 0.2], [0.0, 0.3, 0.9], [0.2, 0.1, 0.05]]  # none, happy, sad, below the floor
    model = make_model(micro(reference_residual=True, motion_channels=CHANNELS, expression_canvas=True))
    model.restart_head()  # the output is the canvas itself
    x, t, cond = _inputs(model, rows)
    glob, happy, sad = cond.references.latents
    with torch.no_grad():
        out = model(x, t, cond)[0]
        assert torch.equal(out[0], glob[0]) and torch.equal(out[1], happy[0]) and torch.equal(out[2], sad[0])
        assert torch.equal(out[3], glob[0])
        no_sad = References(cond.references.latents[:2], cond.references.kinds[:2])
        assert torch.equal(model(x, t, dataclasses.replace(cond, references=no_sad))[0, 2], glob[0])  # no exemplar
        plain = make_model(micro(reference_residual=True, motion_channels=CHANNELS))
        plain.load_state_dict(model.state_dict())
        assert torch.equal(plain(x, t, cond)[0], glob.expand(4, -1, -1, -1))  # without the canvas: global throughout


def test_a_blended_canvas_moves_the_global_latent_toward_the_exemplar_by_the_emotion():
    rows = [[0.5, 0.0, 0.0], [0.1, 0.6, 0.2], [0.0, 0.3, 0.9], [0.2, 0.1, 0.05], [0.0, 1.4, 0.0]]
    model = make_model(micro(reference_residual=True, motion_channels=CHANNELS, expression_canvas=True,
                             expression_blend=True))
    model.restart_head()
    x, t, cond = _inputs(model, rows[:4])
    glob, happy, sad = cond.references.latents
    with torch.no_grad():
        out = model(x, t, cond)[0]
        torch.testing.assert_close(out[1], glob[0] + 0.6 * (happy[0] - glob[0]))
        torch.testing.assert_close(out[2], glob[0] + 0.9 * (sad[0] - glob[0]))
        assert torch.equal(out[0], glob[0]) and torch.equal(out[3], glob[0])  # no emotion, below the floor
        strong = dataclasses.replace(cond, motion=torch.tensor([rows[1:]], dtype=x.dtype))
        torch.testing.assert_close(model(x, t, strong)[0, 3], happy[0])  # beyond 1: the exemplar itself


@pytest.mark.parametrize("blend", [False, True])
def test_the_canvas_streams_equal_to_the_full_forward(blend):
    rows = [[0.5, 0.0, 0.0], [0.1, 0.6, 0.2], [0.0, 0.3, 0.9], [0.2, 0.1, 0.05]]
    cfg = micro(reference_residual=True, reference_concat=True, motion_channels=CHANNELS, motion_spatial=True,
                expression_canvas=True, expression_blend=blend)
    model = make_model(cfg)
    x, t, cond = _inputs(model, rows)
    with torch.no_grad():
        full = model(x, t, cond)
        plain = make_model(dataclasses.replace(cfg, expression_canvas=False, expression_blend=False))
        plain.load_state_dict(model.state_dict())
        assert (plain(x, t, cond) - full)[0, 1:3].abs().max() > 1e-3  # the canvas changes the emotional frames
    streamed = stream(model, x, t, cond)
    assert (streamed - full).abs().max() <= 1e-6 * full.abs().max()


def test_configs_that_cannot_use_the_canvas_are_refused():
    with pytest.raises(ConfigError, match="needs reference_concat or reference_residual"):
        micro(motion_channels=CHANNELS, expression_canvas=True)
    with pytest.raises(ConfigError, match="needs expression_canvas"):
        micro(reference_residual=True, motion_channels=CHANNELS, expression_blend=True)
    with pytest.raises(ConfigError, match="has none"):
        micro(reference_residual=True, motion_channels=("jaw_open",), expression_canvas=True)


BROW = ("jaw_open", "brow_raise", "emo_happy", "emo_surprised")


def test_a_brow_raise_moves_the_canvas_toward_the_surprised_exemplar():
    """``Conditioning.brow_exemplar (lo, hi)``: each frame's canvas moves toward ``expr_surprised`` by its brow raise
    ramped from lo to hi, on top of the emotion's blend, not where the canvas already is the surprised exemplar's,
    not without that exemplar; None leaves the canvas as it was; malformed bounds are clear errors."""
    from lpm.models.expression import brow_bounds, brow_exemplar_weight

    model = make_model(micro(reference_residual=True, motion_channels=BROW, expression_canvas=True,
                             expression_blend=True))
    model.restart_head()  # the output is the canvas itself
    x, t, cond = make_inputs(model, num_chunks=2)
    c, h, w = x.shape[2:]
    g = torch.Generator().manual_seed(7)
    refs = References([torch.randn(1, c, h, w, generator=g, dtype=x.dtype) for _ in range(3)],
                      ["global", "expr_happy", "expr_surprised"])
    glob, happy, surprised = refs.latents
    rows = [[0.0, 0.2, 0.0, 0.0],  # below lo
            [0.0, 0.6, 0.0, 0.0],  # half way from 0.4 to 0.8
            [0.0, 1.5, 0.5, 0.0],  # beyond hi, on a happy canvas
            [0.0, 1.5, 0.0, 0.7]]  # already surprised: the emotion's blend alone
    cond = dataclasses.replace(cond, references=refs, motion=torch.tensor([rows], dtype=x.dtype), pose=None)
    lifted = dataclasses.replace(cond, brow_exemplar=(0.4, 0.8))
    with torch.no_grad():
        plain, out = model(x, t, cond)[0], model(x, t, lifted)[0]
        torch.testing.assert_close(out[0], plain[0])
        torch.testing.assert_close(out[1], glob[0] + 0.5 * (surprised[0] - glob[0]))
        torch.testing.assert_close(out[2], glob[0] + 0.5 * (happy[0] - glob[0]) + (surprised[0] - glob[0]))
        torch.testing.assert_close(out[3], glob[0] + 0.7 * (surprised[0] - glob[0]))
        torch.testing.assert_close(out[3], plain[3])
        no_exemplar = References(refs.latents[:2], refs.kinds[:2])
        torch.testing.assert_close(model(x, t, dataclasses.replace(lifted, references=no_exemplar))[0],
                                   model(x, t, dataclasses.replace(cond, references=no_exemplar))[0])
    w = brow_exemplar_weight(torch.tensor([[0.4, 0.5, 0.9]]), (0.4, 0.8))
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.25, 1.0]]))
    assert brow_bounds("0.5,0.84") == (0.5, 0.84) and brow_bounds([0.1, 0.2]) == (0.1, 0.2)
    for bad, match in (("0.8,0.4", "lo < hi"), ("0.5", "two numbers"), ("a,b", "two numbers"), ([1, "nan"], "finite")):
        with pytest.raises(ValueError, match=match):
            brow_bounds(bad)
