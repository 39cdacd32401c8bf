"""The world: determinism, listening reactions that follow audible partner cues, interruptions, the CLI."""

import json

import numpy as np
import pytest

from lpm.cli import main
from lpm.data.clip import read_clip, read_manifest
from lpm.world.controller import NOD_DELAY_S, QUESTION_DELAY_S, SMILE_DELAY_S, cues_from_conversation, perform_audio
from lpm.world.dialogue import build_conversation
from lpm.world.motion import MOTION_INDEX, NUM_MOTION
from lpm.world.speech import SAMPLE_RATE
from lpm.world.synth import ClipSpec, make_clip, plan

FPS = 24
SPF = SAMPLE_RATE / FPS


def _clips(mode, n=3, seconds=8.0):
    return [make_clip(ClipSpec(11, i, "train", "anime", seconds, 64, mode)) for i in range(n)]


@pytest.fixture(scope="module")
def listen_clips():
    return _clips("listen") + _clips("conversation")


def test_make_clip_is_deterministic():
    a = make_clip(ClipSpec(5, 2, "train", "photo", 3.0, 64, None))
    b = make_clip(ClipSpec(5, 2, "train", "photo", 3.0, 64, None))
    c = make_clip(ClipSpec(5, 3, "train", "photo", 3.0, 64, None))
    assert np.array_equal(a.performance.motion, b.performance.motion)
    assert np.array_equal(a.conversation.stereo(), b.conversation.stereo())
    assert a.performance.events == b.performance.events and a.caption == b.caption
    assert not np.array_equal(a.conversation.stereo(), c.conversation.stereo())
    assert a.performance.motion.shape == (72, NUM_MOTION)


def test_val_identities_are_held_out():
    train = {make_clip(s).identity.seed for s in plan(6, 0, 1.0, 64, "train")}
    val = {make_clip(s).identity.seed for s in plan(6, 0, 1.0, 64, "val")}
    assert not train & val


def test_reactions_follow_audible_partner_cues(listen_clips):
    delays = {"phrase_end": NOD_DELAY_S, "question": QUESTION_DELAY_S, "laugh": SMILE_DELAY_S}
    n_reactions = 0
    for clip in listen_clips:
        partner = clip.conversation.partner_pcm
        for ev in clip.performance.events:
            if "cue" not in ev:
                continue
            n_reactions += 1
            lo, hi = delays[ev["cue"]]
            delay = (ev["frame"] - ev["cue_frame"]) / FPS
            assert lo - 1 / FPS <= delay <= hi + 1 / FPS, ev
            # The cue is audible: partner voice just before a phrase end / just after a laugh onset.
            c = int(ev["cue_frame"] * SPF)
            span = partner[max(0, c - 8000): c] if ev["cue"] != "laugh" else partner[c: c + 8000]
            assert np.sqrt(np.mean(span ** 2)) > 0.01, ev
            # And the reaction is visible in the rig channel it drives.
            ch = {"nod": "head_pitch", "brow_raise": "brow_raise", "head_tilt": "head_roll", "smile": "smile"}
            track = clip.performance.motion[:, MOTION_INDEX[ch[ev["type"]]]]
            seg = track[ev["frame"]: ev["end"]]
            if seg.size > 3:
                assert np.ptp(seg) > 0.2, ev
    assert n_reactions >= 4


def test_states_match_audio(listen_clips):
    for clip in listen_clips:
        states = np.array(clip.performance.states)
        self_pcm = clip.conversation.self_pcm
        for f in np.flatnonzero(states == "speak"):
            seg = self_pcm[int(f * SPF): int((f + 1) * SPF)]
            assert seg.size == 0 or np.abs(seg).max() > 0.005 or f > 0 and states[f - 1] == "speak"


def test_interrupted_character_stops_quickly():
    found = 0
    for i in range(12):
        rng = np.random.default_rng([3, i])
        conv = build_conversation(rng, 10 * SAMPLE_RATE, "conversation")
        for seg in conv.segments:
            if seg.speaker == "self" and seg.interrupted:
                onsets = [p.start for p in conv.segments if p.speaker == "partner" and seg.start < p.start < seg.end]
                assert onsets, "an interrupted turn has a partner onset inside it"
                assert (seg.end - max(onsets)) / SAMPLE_RATE <= 0.4
                found += 1
        cues = cues_from_conversation(conv)
        assert len(cues.interruptions) == sum(s.interrupted for s in conv.segments)
    assert found >= 1


def test_traditional_pipeline_performs_arbitrary_audio(listen_clips):
    """The rig performs two bare wav tracks: states and mouth agree with the script's ground truth."""
    agree, rs = [], []
    for clip in listen_clips:
        conv = clip.conversation
        perf = perform_audio(conv.self_pcm, conv.partner_pcm, seed=0)
        truth = clip.performance
        assert perf.motion.shape == truth.motion.shape
        speak_t = np.array(truth.states) == "speak"
        speak_p = np.array(perf.states) == "speak"
        agree.append((speak_t == speak_p).mean())
        j = MOTION_INDEX["jaw_open"]
        if truth.motion[:, j].std() > 0.05:
            rs.append(np.corrcoef(truth.motion[:, j], perf.motion[:, j])[0, 1])
    assert np.mean(agree) > 0.85, agree
    assert np.mean(rs) > 0.5, rs


def test_silence_gives_idle():
    perf = perform_audio(np.zeros(3 * SAMPLE_RATE, np.float32), np.zeros(3 * SAMPLE_RATE, np.float32))
    assert set(perf.states) == {"idle"}
    assert perf.motion[:, MOTION_INDEX["jaw_open"]].max() < 0.05
    assert any(e["type"] == "blink" for e in perf.events)


def test_synth_cli_writes_valid_clips(tmp_path):
    out = tmp_path / "ds"
    assert main(["world", "synth", "--out", str(out), "--clips", "3", "--seconds", "1.5", "--res", "64",
                 "--seed", "1", "--workers", "2", "--split", "train"]) == 0
    rows = read_manifest(out)
    assert len(rows) == 3
    for r in rows:
        clip = read_clip(out / r["path"])
        assert clip.video.shape == (36, 3, 64, 64)
        assert {"global", "body_front", "body_left", "body_right", "body_back", "expr_happy"} <= set(clip.refs)
        meta = json.loads((out / r["path"] / "meta.json").read_text())
        assert meta["caption"] and meta["identity"]["style"] == r["style"]
    # Same seed again: the same bytes of ground truth.
    out2 = tmp_path / "ds2"
    assert main(["world", "synth", "--out", str(out2), "--clips", "3", "--seconds", "1.5", "--res", "64",
                 "--seed", "1", "--workers", "1", "--split", "train"]) == 0
    for r in rows:
        a = np.load(out / r["path"] / "motion.npz")["values"]
        b = np.load(out2 / r["path"] / "motion.npz")["values"]
        assert np.array_equal(a, b)
        assert (out / r["path"] / "audio.wav").read_bytes() == (out2 / r["path"] / "audio.wav").read_bytes()
    assert main(["world", "show", str(out), "--out", str(tmp_path / "sheet.png")]) == 0
    assert (tmp_path / "sheet.png").stat().st_size > 1000


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    assert main(["world", "synth", "--out", str(tmp_path / "x"), "--res", "1000"]) == 2
    assert "--res" in capsys.readouterr().err
    assert main(["world", "synth", "--out", str(tmp_path / "x"), "--split", "nope"]) == 2
    assert "split" in capsys.readouterr().err


def test_expression_exemplars_close_the_lips():
    """Each exemplar shows its emotion with the lips closed: the mouth's box is the closed mouth's height (the
    canvas must not carry an open jaw into silence), while brows and eyes are the emotion's."""
    from lpm.world.identity import sample_identity
    from lpm.world.render import Renderer
    from lpm.world.synth import exemplar_pose, render_references

    renderer = Renderer(sample_identity(123, "photo"), 128)
    refs = render_references(renderer)
    still = refs["global"].astype(int)
    _, y0, _, y1 = renderer.face_regions(exemplar_pose("neutral"))["mouth"]
    for emotion in ("happy", "surprised"):
        pose = exemplar_pose(emotion)
        _, e0, _, e1 = renderer.face_regions(pose, lips_closed=True)["mouth"]
        _, o0, _, o1 = renderer.face_regions(pose)["mouth"]
        assert e1 - e0 <= y1 - y0 + 3  # about the mouth at rest (a smile lifts its corners)
        if emotion == "surprised":
            assert e1 - e0 + 3 < o1 - o0  # surprise alone opens the jaw
        assert np.array_equal(refs[f"expr_{emotion}"], renderer.render(pose, lips_closed=True))
        exemplar = refs[f"expr_{emotion}"].astype(int)
        assert (np.abs(exemplar[: y0 - 4] - still[: y0 - 4]).max(-1) > 20).sum() >= 10  # brows, lids, eyes
