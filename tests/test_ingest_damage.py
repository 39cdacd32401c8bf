"""``lpm data ingest`` over the damage corpus made from a rendered world character: a damaged file is ingested
with its damage counted in ingest_report.json and a warning line; only files with nothing decodable are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason="the ingest extra (pip install -e '.[ingest]') is not installed")

from lpm.data.ingest import IngestOptions, ingest  # noqa: E402
from lpm.media.corpus import build_corpus  # noqa: E402

FPS, RATE, SECONDS = 25, 48000, 2.0
# The damage kinds ingest meets in practice (the readers' tests run the whole corpus).
CASES = ("clean", "truncated_60", "last_audio_frame_cut", "bad_audio_packets", "bad_video_packets",
         "dropped_video_packets", "flipped_200", "no_audio", "empty_audio_stream", "zero_length_video", "zero_bytes",
         "vfr", "timestamp_jump", "video_ends_first", "surround_7_1", "truncated_mp4_index_last")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    from lpm.world.identity import sample_identity
    from lpm.world.motion import MOTION_INDEX, neutral_pose
    from lpm.world.render import Renderer

    n = int(SECONDS * FPS)
    pose = neutral_pose(n)
    pose[:, MOTION_INDEX["jaw_open"]] = 0.5 + 0.5 * np.sin(np.arange(n) / 3)
    frames = Renderer(sample_identity(11, "photo"), 128).render_sequence(pose)
    t = np.arange(int(SECONDS * RATE)) / RATE
    voice = (0.2 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
    cases = {c.name: c for c in build_corpus(tmp_path_factory.mktemp("corpus"), frames, np.stack([voice, voice]),
                                             FPS, RATE) if c.name in CASES}
    out = tmp_path_factory.mktemp("ingested")
    report = ingest([str(cases[name].path) for name in CASES], out,
                    IngestOptions(res=128, clip_min_s=1.0, clip_max_s=4.0, partner_channel="none", progress=False))
    return cases, report, out


def test_damaged_files_are_ingested_and_accounted(ingested, capfd):
    cases, report, out = ingested
    by_name = {Path(s.path).stem: s for s in report.sources}
    assert set(by_name) == set(CASES)
    for name, case in cases.items():
        source = by_name[name]
        if case.refused:
            assert source.status == "skipped" and case.path.name in source.reason, (name, source.reason)
            continue
        assert source.status == "ok", (name, source.reason)
        damage = source.damage
        # Nothing silently lost: frames decoded plus the counted truncation make the source's length.
        assert abs(source.frames / 24 + damage.video_tail_lost_s - case.seconds) <= 2 / 24, (name, damage)
        if case.video_lost_s is not None:
            assert abs(damage.video_held_s - case.video_lost_s) < 0.5 / FPS, (name, damage)
        if case.audio_lost_s is not None:
            assert abs(damage.audio_silence_s - case.audio_lost_s) < 0.005, (name, damage)
        assert abs(damage.audio_absent_s - case.audio_absent_s) < 0.05, (name, damage)
        assert abs(damage.audio_past_video_s - case.audio_past_video_s) < 0.05, (name, damage)
        assert source.damaged_s == pytest.approx(damage.damaged_s)
    assert by_name["clean"].clips and by_name["bad_video_packets"].clips and by_name["timestamp_jump"].clips
    # The report: per source and in total, on disk.
    saved = json.loads((out / "ingest_report.json").read_text())
    assert saved["damaged_files"] == report.damaged_files == sum(s.damage.any for s in report.sources) >= 6
    assert saved["seconds_damaged"] == pytest.approx(sum(s.damage.damaged_s for s in report.sources))
    assert saved["damage"]["audio_bad_packets"] == sum(s.damage.audio_bad_packets for s in report.sources) >= 3
    bad = next(s for s in saved["sources"] if Path(s["path"]).stem == "bad_audio_packets")
    assert bad["damage"]["audio_bad_packets"] == 3 and "Invalid data" in bad["damage"]["messages"][0]
    assert saved["skipped_files"] == sum(c.refused for c in cases.values())


def test_damage_is_warned_about(tmp_path, capfd):
    """One warning line per damaged file on stderr, also without progress bars."""
    from lpm.media.corpus import drop_at, mux, ramp_content

    frames, times, audio = ramp_content(1.0, FPS, size=(64, 64), rate=RATE)
    path = mux(tmp_path / "holes.mkv", frames, times, audio, RATE, audio_hook=drop_at({5, 6}))
    report = ingest([str(path)], tmp_path / "out", IngestOptions(res=64, partner_channel="none", progress=False))
    assert report.sources[0].status == "ok" and report.damaged_files == 1
    err = capfd.readouterr().err
    assert f"lpm: warning: {path}: " in err and "0.04 s of silence filled in" in err, err
