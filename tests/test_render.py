"""Identities and the renderer: determinism, every channel visible where it should be, shapes and errors."""

import itertools
import json

import numpy as np
import pytest

from lpm.world.identity import ALL_STYLES, TRAIN_STYLES, ZEROSHOT_STYLE, Identity, sample_identity
from lpm.world.motion import BODY_VIEWS, MOTION_INDEX, MOTION_NAMES, MOTION_RANGE, NUM_MOTION
from lpm.world.render import Renderer, benchmark

RES = 96
# Mean abs diff (0..255) between body views. Left/right are near mirror images and front/back share the
# silhouette (a bald photo head differs only by its face), so those pairs get the lower bound.
VIEW_MIN_DIFF = 0.5
TURN_MIN_DIFF = 2.0  # between a side view and the front or back view
CHANNEL_MIN_DIFF = 0.02  # every motion channel at its extreme changes the frame at least this much
MOUTH_RATIO = 8.0  # jaw_open changes the mouth box this many times more per pixel than the rest of the frame


def pose(**channels) -> np.ndarray:
    p = np.zeros(NUM_MOTION, np.float32)
    for name, value in channels.items():
        p[MOTION_INDEX[name]] = value
    return p


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel mean abs difference over RGB, (H, W)."""
    return np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(-1)


def inside(box, shape) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture(scope="module")
def renderers() -> dict[str, Renderer]:
    return {style: Renderer(sample_identity(3, style), RES) for style in ALL_STYLES}


def test_styles_contract():
    assert TRAIN_STYLES == ("photo", "anime", "toon3d", "creature")
    assert ZEROSHOT_STYLE == "sketch" and ALL_STYLES == TRAIN_STYLES + ("sketch",)


def test_identity_is_deterministic_and_varied():
    for style in ALL_STYLES:
        a, b, c = sample_identity(7, style), sample_identity(7, style), sample_identity(8, style)
        assert a == b and a.to_dict() == b.to_dict()
        assert a != c
        d = a.to_dict()
        assert len(d) >= 20 and d["style"] == style and d["seed"] == 7
        assert json.loads(json.dumps(d)) == d  # JSON-safe
    # Across seeds the parameters really vary.
    ids = [sample_identity(s, "anime") for s in range(30)]
    for field in ("hair_style", "hair", "eye", "clothing", "clothing_color", "background", "glasses"):
        assert len({getattr(i, field) for i in ids}) > 1, field
    creatures = [sample_identity(s, "creature") for s in range(40)]
    assert {c.kind for c in creatures} == {"blob", "robot", "animal"}
    assert {c.eye_count for c in creatures} == {1, 2, 3}


def test_unknown_style_and_bad_resolution_are_clear_errors():
    with pytest.raises(ValueError, match="photo, anime, toon3d, creature, sketch"):
        sample_identity(0, "oil painting")
    ident = sample_identity(0, "photo")
    for res in (63, 513, 0, 128.0, True, "128"):
        with pytest.raises(ValueError, match=r"\[64, 512\]"):
            Renderer(ident, res)
    with pytest.raises(ValueError, match="shape"):
        Renderer(ident, 64).render(np.zeros(NUM_MOTION + 1))


def test_render_is_deterministic(renderers):
    p = pose(jaw_open=0.6, head_yaw=12.0, gaze_x=0.3, emo_happy=0.5, breath=0.4)
    for style, r in renderers.items():
        again = Renderer(sample_identity(3, style), RES)
        a, b = r.render(p), again.render(p)
        assert a.dtype == np.uint8 and a.shape == (RES, RES, 3)
        assert a.tobytes() == b.tobytes(), style
        other = Renderer(sample_identity(4, style), RES).render(p)
        assert diff(a, other).mean() > 3.0, style


@pytest.mark.parametrize("res", [64, 128, 200, 512])
def test_resolutions(res):
    r = Renderer(sample_identity(1, "toon3d"), res)
    frame = r.render(pose(jaw_open=1.0))
    assert frame.shape == (res, res, 3) and frame.dtype == np.uint8
    seq = r.render_sequence(np.stack([pose(), pose(blink_l=1.0)]))
    assert seq.shape == (2, res, res, 3)
    for x0, y0, x1, y1 in r.face_regions(pose()).values():
        assert 0 <= x0 < x1 <= res and 0 <= y0 < y1 <= res


def test_every_style_shows_four_distinct_views():
    for style in ALL_STYLES:
        for seed in range(3):
            r = Renderer(sample_identity(seed, style), 64)
            views = {name: r.render(pose(body_yaw=yaw)) for name, yaw in BODY_VIEWS.items()}
            for a, b in itertools.combinations(views, 2):
                d = diff(views[a], views[b]).mean()
                limit = VIEW_MIN_DIFF if {a, b} in ({"left", "right"}, {"front", "back"}) else TURN_MIN_DIFF
                assert d > limit, (style, seed, a, b, d)
            # "left" shows the character's left side: its face points to the viewer's left.
            mouth_left = r.face_regions(pose(body_yaw=BODY_VIEWS["left"]))["mouth"]
            mouth_right = r.face_regions(pose(body_yaw=BODY_VIEWS["right"]))["mouth"]
            assert mouth_left[0] < 32 < mouth_right[0], (style, seed)
            back = r.face_regions(pose(body_yaw=BODY_VIEWS["back"]))
            assert all(x0 == x1 for x0, _, x1, _ in back.values())  # no face from behind


def test_jaw_open_changes_the_mouth_box(renderers):
    for style, r in renderers.items():
        closed, opened = r.render(pose()), r.render(pose(jaw_open=1.0))
        box = r.face_regions(pose(jaw_open=1.0))["mouth"]
        d = diff(closed, opened)
        m = inside(box, d.shape)
        assert d[m].mean() > MOUTH_RATIO * d[~m].mean(), style
        assert d[m].mean() > 15.0, style


def test_mouth_is_large_enough_to_learn():
    """At 128x128 the mouth spans several 8x8 latent cells: >= 20 px wide, >= 12 px tall when open."""
    for style in ALL_STYLES:
        r = Renderer(sample_identity(5, style), 128)
        x0, y0, x1, y1 = r.face_regions(pose(jaw_open=1.0))["mouth"]
        assert x1 - x0 >= 20 and y1 - y0 >= 12, style
        # The opening itself: dark interior pixels appear inside the box.
        box = r.render(pose(jaw_open=1.0))[y0:y1, x0:x1].astype(int)
        closed = r.render(pose())[y0:y1, x0:x1].astype(int)
        assert (box.sum(-1) < closed.sum(-1) - 60).sum() >= 40, style


def test_blink_left_closes_only_the_left_eye():
    for style in ALL_STYLES:
        seed = next(s for s in range(20) if sample_identity(s, style).eye_count >= 2)
        r = Renderer(sample_identity(seed, style), RES)
        regions = r.face_regions(pose())
        d = diff(r.render(pose()), r.render(pose(blink_l=1.0)))
        left = d[inside(regions["eye_l"], d.shape)].mean()
        right = d[inside(regions["eye_r"], d.shape)].mean()
        assert left > 8.0 and right < 0.1 * left, (style, left, right)
        # The character's left eye is on the viewer's right.
        assert regions["eye_l"][0] > regions["eye_r"][0]


def test_one_eyed_creature_blinks_with_either_channel():
    seed = next(s for s in range(40) if sample_identity(s, "creature").eye_count == 1)
    r = Renderer(sample_identity(seed, "creature"), RES)
    regions = r.face_regions(pose())
    assert regions["eye_l"] == regions["eye_r"]
    base = r.render(pose())
    for ch in ("blink_l", "blink_r"):
        d = diff(base, r.render(pose(**{ch: 1.0})))
        assert d[inside(regions["eye_l"], d.shape)].mean() > 8.0


def test_every_motion_channel_is_visible(renderers):
    for style, r in renderers.items():
        base = r.render(pose())
        for name in MOTION_NAMES:
            lo, hi = MOTION_RANGE[name]
            value = hi if name != "body_yaw" else 90.0
            d = diff(base, r.render(pose(**{name: value}))).mean()
            assert d > CHANNEL_MIN_DIFF, (style, name, d)


def test_gaze_moves_the_pupils(renderers):
    r = renderers["anime"]
    box = r.face_regions(pose())["eye_l"]
    d = diff(r.render(pose(gaze_x=-1.0)), r.render(pose(gaze_x=1.0)))
    assert d[inside(box, d.shape)].mean() > 10.0


def test_describe_mentions_style_attributes():
    for style in ALL_STYLES:
        for seed in range(6):
            ident: Identity = sample_identity(seed, style)
            text = ident.describe()
            assert text and "  " not in text and " a a" not in text
            if style == "sketch":
                assert text.startswith("a pencil sketch")
            elif style == "creature":
                assert "creature" in text and ident.kind in text and ident.skin in text
            else:
                assert ident.skin in text and ident.eye in text
                assert ident.clothing in text and ident.clothing_color in text
                if ident.hair_style != "bald":
                    assert ident.hair in text
            if ident.glasses != "none":
                assert "glasses" in text
            if ident.hat != "none":
                assert ident.hat in text


def test_benchmark_runs():
    assert benchmark(res=64, frames=10, style="photo") > 0
