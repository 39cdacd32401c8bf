"""``lpm data ingest`` on world-rendered mp4s, whose truth (states, jaw_open, views) is known."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason="the ingest extra (pip install -e '.[ingest]') is not installed")

from lpm.cli import main  # noqa: E402
from lpm.data.clip import load_image, read_clip, read_manifest  # noqa: E402
from lpm.data.ingest import FACE_BOX_FRACTION, FACE_CENTRE_Y, IngestOptions, clip_ranges, ingest  # noqa: E402
from lpm.data.ingest_audio import label_states  # noqa: E402
from lpm.data.ingest_shots import ShotDetector  # noqa: E402
from lpm.data.video import read_mp4, read_wav, write_mp4  # noqa: E402

RES = 128
SECONDS = 4
STYLES = ("photo", "toon3d")  # mediapipe's mesh follows these closely; anime/creature mouths are weaker
OPTS = dict(res=RES, clip_min_s=1.0, clip_max_s=4.0, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Two conversation clips at 256x256, one per style, with known states and motion."""
    from lpm.world.synth import plan, synth

    root = tmp_path_factory.mktemp("world")
    specs = plan(clips=2, seed=3, seconds=SECONDS, res=256, split="train", styles=list(STYLES), mode="conversation")
    synth(root, specs, workers=1, progress=False)
    return root


def _world_clips(world: Path) -> list[Path]:
    return [world / r["path"] for r in read_manifest(world)]


def _sweep(path: Path, style: str) -> dict[str, np.ndarray]:
    """A silent video (no audio stream) of a character turning its body -80..80 degrees; returns world refs."""
    from lpm.world.identity import sample_identity
    from lpm.world.motion import MOTION_INDEX, neutral_pose
    from lpm.world.render import Renderer
    from lpm.world.synth import render_references

    identity = sample_identity(5, style)
    pose = neutral_pose(144)
    pose[:, MOTION_INDEX["body_yaw"]] = np.concatenate([np.linspace(0, 80, 48), np.linspace(80, -80, 96)])
    write_mp4(path, Renderer(identity, 256).render_sequence(pose))
    np.save(path.with_suffix(".yaw.npy"), pose[:, MOTION_INDEX["body_yaw"]])
    return render_references(Renderer(identity, RES))


@pytest.fixture(scope="module")
def ingested(world, tmp_path_factory):
    """World clips as stereo mp4s, a corrupt file and a silent turning sweep, ingested in one call."""
    inputs = tmp_path_factory.mktemp("inputs")
    for clip in _world_clips(world):
        audio, _ = read_wav(clip / "audio.wav")
        write_mp4(inputs / f"{clip.name}.mp4", read_mp4(clip / "video.mp4"), audio=audio)
    # Two characters one after the other: a cut, two shots, references never taken across it.
    clips = _world_clips(world)
    frames = np.concatenate([read_mp4(c / "video.mp4") for c in clips])
    audio = np.concatenate([read_wav(c / "audio.wav")[0] for c in clips], axis=1)
    write_mp4(inputs / "two_shots.mp4", frames, audio=audio)
    (inputs / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    refs = _sweep(inputs / "sweep.mkv", "photo")
    out = tmp_path_factory.mktemp("ingested")
    report = ingest([str(inputs)], out, IngestOptions(**OPTS))
    return out, report, inputs, refs


def _source(report, name: str):
    return next(s for s in report.sources if Path(s.path).stem == name)


def _agreement_and_mouth_r(out: Path, source, truth_dir: Path) -> tuple[float, float]:
    truth = json.loads((truth_dir / "meta.json").read_text())
    with np.load(truth_dir / "motion.npz") as z:
        jaw = z["values"][:, list(z["names"]).index("jaw_open")]
    agree, est, true = [], [], []
    for cid in source.clips:
        clip = read_clip(out / cid, load_video=False)
        a, b = clip.meta.extra["source_frames"]
        agree += [x == y for x, y in zip(clip.meta.states, truth["states"][a:b])]
        est.append(clip.motion[:, clip.motion_names.index("mouth_open")].numpy())
        true.append(jaw[a:b])
    return float(np.mean(agree)), float(np.corrcoef(np.concatenate(est), np.concatenate(true))[0, 1])


def test_labels_and_mouth_match_world_truth(ingested, world):
    out, report, _, _ = ingested
    for clip in _world_clips(world):
        source = _source(report, clip.name)
        assert source.status == "ok" and source.clips, source
        assert source.audio_method == "channels" and source.self_channel == 0
        agreement, mouth_r = _agreement_and_mouth_r(out, source, clip)
        assert agreement >= 0.9, (clip.name, agreement)
        assert mouth_r >= 0.7, (clip.name, mouth_r)


def test_output_is_the_clip_format_with_estimated_motion(ingested):
    out, report, _, _ = ingested
    rows = read_manifest(out)
    assert len(rows) == report.clips > 0
    for row in rows:
        clip = read_clip(out / row["path"])  # validates every field
        assert clip.video.shape[1:] == (3, RES, RES) and clip.meta.style == "real"
        assert clip.meta.extra["motion_estimated"] is True
        assert {"head_yaw", "mouth_open", "eye_open_l"} <= set(clip.motion_names)
        assert "global" in clip.refs
    # Splits follow the source file: every clip of one source shares one split.
    for source in report.sources:
        assert len({read_clip(out / c, load_video=False).meta.split for c in source.clips}) <= 1
    saved = json.loads((out / "ingest_report.json").read_text())
    assert saved["clips"] == report.clips and set(saved["dropped_frames"]) >= {"face_lost", "blur"}
    assert list(out.glob("contact_*.png"))


def test_crops_frame_the_face_like_the_world(ingested, world):
    import mediapipe as mp

    out, report, _, _ = ingested
    detector = mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.3)
    for clip in _world_clips(world):
        source = _source(report, clip.name)
        frames = read_mp4(out / source.clips[0] / "video.mp4")
        boxes = []
        for f in frames[::4]:
            dets = detector.process(f).detections
            assert dets, f"no face in an ingested frame of {clip.name}"
            b = dets[0].location_data.relative_bounding_box
            boxes.append((b.xmin + b.width / 2, b.ymin + b.height / 2, b.height))
        cx, cy, side = np.mean(boxes, axis=0)
        assert abs(cx - 0.5) < 0.06 and abs(cy - FACE_CENTRE_Y) < 0.06, (cx, cy)
        assert abs(side - FACE_BOX_FRACTION) < 0.05, side
        # The crop looks like the world's own 128x128 frame of the same instant.
        from PIL import Image

        a, _ = read_clip(out / source.clips[0], load_video=False).meta.extra["source_frames"]
        world_frame = np.asarray(Image.fromarray(read_mp4(clip / "video.mp4", start=a, count=1)[0]).resize((RES, RES)))
        assert np.abs(frames[0].astype(float) - world_frame).mean() < 20
    detector.close()


def test_reference_views_match_rendered_views(ingested):
    out, report, inputs, world_refs = ingested
    source = _source(report, "sweep")
    assert source.status == "ok" and source.audio_method == "none"
    yaw = np.load(inputs / "sweep.yaw.npy")
    views = {}
    for cid in source.clips:
        clip = read_clip(out / cid, load_video=False)
        assert set(clip.meta.states) == {"idle"}  # no audio at all: idle throughout
        views.update({k: v for k, v in clip.meta.extra["ref_frames"].items() if k.startswith("body_")})
        a, b = clip.meta.extra["source_frames"]
        assert not a <= clip.meta.extra["ref_frames"]["global"] < b  # taken from outside the clip
    assert {"body_front", "body_left", "body_right"} <= set(views)
    assert abs(yaw[views["body_front"]]) < 20
    assert yaw[views["body_left"]] > 30 and yaw[views["body_right"]] < -30  # world: +90 = "left" view
    front = load_image(out / source.clips[0] / "refs" / "body_front.png").astype(float)
    dist = {v: np.abs(front - world_refs[f"body_{v}"]).mean() for v in ("front", "left", "right")}
    assert min(dist, key=dist.get) == "front", dist


def test_cut_splits_shots_and_references_stay_with_their_person(ingested):
    out, report, _, _ = ingested
    source = _source(report, "two_shots")
    assert source.shots == 2
    cut = SECONDS * 24
    for cid in source.clips:
        meta = read_clip(out / cid, load_video=False).meta.extra
        a, b = meta["source_frames"]
        assert b <= cut or a >= cut  # no clip spans the cut
        for frame in meta["ref_frames"].values():
            assert (frame < cut) == (a < cut)  # the other shot shows another character


def test_corrupt_file_is_skipped_with_a_reason(ingested):
    _, report, _, _ = ingested
    bad = _source(report, "corrupt")
    assert bad.status == "skipped" and "corrupt.mp4" in bad.reason
    assert report.skipped_files == 1 and report.clips > 0


def test_mono_mix_is_separated_by_voice_and_mouth(world, tmp_path):
    clip = _world_clips(world)[0]
    audio, _ = read_wav(clip / "audio.wav")
    path = tmp_path / f"{clip.name}.mp4"
    write_mp4(path, read_mp4(clip / "video.mp4"), audio=audio.mean(axis=0, keepdims=True))
    report = ingest([str(path)], tmp_path / "out", IngestOptions(**OPTS))
    source = report.sources[0]
    assert source.audio_method == "separated"
    agreement, _ = _agreement_and_mouth_r(tmp_path / "out", source, clip)
    assert agreement >= 0.9, agreement


def test_vae_trains_on_an_ingested_directory(ingested, tmp_path):
    out, _, _, _ = ingested
    tiny = ["model.channels=[8,16,16]", "model.latent_channels=4", "model.norm_groups=4", "threads=1",
            "stats_frames=8", "eval_frames_per_clip=2", "train_frames_per_clip=4", "sample_every=1000",
            "checkpoint_every=1000"]
    assert main(["train", "vae", "--data", str(out), "--out", str(tmp_path / "run"), "--steps", "3",
                 "--batch", "2", *tiny]) == 0
    assert (tmp_path / "run" / "vae.safetensors").is_file()


def test_cuts_split_shots_and_clips_stay_inside_them():
    rng = np.random.default_rng(0)
    a = np.clip(rng.normal(60, 10, (30, 48, 48, 3)), 0, 255).astype(np.uint8)
    b = np.clip(rng.normal(190, 10, (40, 48, 48, 3)), 0, 255).astype(np.uint8)
    det = ShotDetector()
    for f in np.concatenate([a, b]):
        det.update(f)
    assert det.shots() == [(0, 30), (30, 70)]
    ranges = clip_ranges(np.ones(70, bool), det.shots(), min_frames=12, max_frames=24)
    assert all(e <= 30 or s >= 30 for s, e in ranges) and ranges[0] == (0, 15)
    assert clip_ranges(np.ones(10, bool), [(0, 10)], 12, 24) == []  # a shot shorter than the minimum is dropped


def test_label_rules():
    f = 60
    partner = np.zeros(f, bool)
    partner[0:20] = True
    own = np.zeros(f, bool)
    own[22:30] = True  # a short "mm-hm" right after the partner: still listening
    own[45:60] = True  # a real turn
    states = label_states(own, partner)
    assert states[10] == "listen" and states[25] == "listen" and states[50] == "speak"
    assert states[40] == "idle"  # past the listening hangover
    assert set(label_states(np.zeros(f, bool), np.zeros(f, bool))) == {"idle"}


def test_partner_voice_from_a_sidecar_file(world, tmp_path):
    from lpm.data.video import write_wav

    clip = _world_clips(world)[1]
    audio, _ = read_wav(clip / "audio.wav")
    write_mp4(tmp_path / f"{clip.name}.mp4", read_mp4(clip / "video.mp4"), audio=audio[:1])
    write_wav(tmp_path / f"{clip.name}.partner.wav", audio[1:])
    report = ingest([str(tmp_path)], tmp_path / "out", IngestOptions(**OPTS))
    assert len(report.sources) == 1  # the sidecar is no input of its own
    source = report.sources[0]
    assert source.audio_method == "sidecar"
    agreement, _ = _agreement_and_mouth_r(tmp_path / "out", source, clip)
    assert agreement >= 0.9, agreement
