"""The bench's clip emotion decision and its calibration (``lpm.eval.emotion_fit``) on constructed readings."""

import numpy as np
import pytest

from lpm.eval.emotion_fit import NEUTRAL_SCALES, clip_emotion, fit_neutral_scale
from lpm.world.motion import EMOTIONS


def probs(**p: float) -> np.ndarray:
    """A (len(EMOTIONS),) probability vector from named entries, the rest shared out evenly."""
    v = np.array([p.get(e, np.nan) for e in EMOTIONS])
    rest = 1 - np.nansum(v)
    v[np.isnan(v)] = rest / np.isnan(v).sum()
    return v


def test_clip_emotion_is_the_weighted_argmax_of_the_frame_mean():
    frames = np.stack([probs(neutral=0.6, surprised=0.3), probs(neutral=0.2, surprised=0.7)])  # mean: 0.4 / 0.5
    assert clip_emotion(frames) == "surprised"
    assert clip_emotion(frames[:1]) == "neutral"
    w = [1.0] * len(EMOTIONS)
    w[EMOTIONS.index("neutral")] = 0.4
    assert clip_emotion(frames[:1], w) == "surprised"  # 0.6 x 0.4 < 0.3
    with pytest.raises(ValueError, match="expected"):
        clip_emotion(frames, [1.0, 1.0])


def test_the_fit_finds_the_neutral_weight_that_separates_weak_emotions():
    # Weak surprises read neutral 0.45 / surprised 0.3; true neutrals read neutral 0.7 / happy 0.1 (others 0.07):
    # any scale in (0.1 / 0.7, 0.3 / 0.45) ~ (0.14, 0.67) reads both right, and the tie goes to the one nearest 1.
    clips = [probs(neutral=0.45, surprised=0.3)] * 4 + [probs(neutral=0.7, happy=0.1)] * 4
    labels = ["surprised"] * 4 + ["neutral"] * 4
    fit = fit_neutral_scale(np.stack(clips), labels)
    assert fit.accuracy_unscaled == 0.5 and fit.accuracy == 1.0 and fit.clips == 8
    assert fit.scale == max(s for s in NEUTRAL_SCALES if s < 0.3 / 0.45) == 0.65
    assert fit.weights[EMOTIONS.index("neutral")] == fit.scale and sum(fit.weights) == fit.scale + len(EMOTIONS) - 1
    # Already right at 1: the fit keeps 1.
    assert fit_neutral_scale(np.stack(clips[4:]), labels[4:]).scale == 1.0


def test_the_fit_refuses_malformed_calibration():
    with pytest.raises(ValueError, match="expected"):
        fit_neutral_scale(np.ones((3, 2)), ["happy"] * 3)
    with pytest.raises(ValueError, match="unknown emotions"):
        fit_neutral_scale(np.stack([probs(happy=0.5)]), ["glee"])


def test_instruments_take_the_weights_from_the_face_checkpoint(tmp_path):
    import shutil

    from lpm.errors import LpmError
    from lpm.eval import DEFAULT_FACE
    from lpm.eval.suites import load_instruments
    from lpm.eval.train import FACE_KIND
    from lpm.training.checkpoint import load_checkpoint, save_checkpoint

    face = tmp_path / "face.safetensors"
    shutil.copy(DEFAULT_FACE, face)
    state, meta = load_checkpoint(face, FACE_KIND)
    w = [0.5, 1.0, 1.0, 1.0, 1.0]
    save_checkpoint(face, state, meta["config"], FACE_KIND, extra={**meta["extra"], "emotion_weights": w})
    assert load_instruments(face_path=face).emotion_weights == w
    assert load_instruments(face_path="none").emotion_weights is None  # the probe's emotion: plain argmax
    save_checkpoint(face, state, meta["config"], FACE_KIND, extra={**meta["extra"], "emotion_weights": [1.0]})
    with pytest.raises(LpmError, match="emotion_weights"):
        load_instruments(face_path=face)


def test_train_clips_are_read_without_their_audio_and_name_what_is_missing(tmp_path):
    import json

    from lpm.errors import LpmError
    from lpm.eval.emotion_fit import train_clip_emotion, train_clip_video

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "meta.json").write_text(json.dumps({"emotion": "sad"}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "meta.json").write_text(json.dumps({}))
    assert train_clip_emotion(tmp_path, {"path": "a"}) == "sad"
    assert train_clip_emotion(tmp_path, {"path": "b"}) == "neutral"
    with pytest.raises(LpmError, match="a/video.mp4"):
        train_clip_video(tmp_path, {"path": "a"})
