"""The damage corpus (lpm.media.corpus) through the readers and ``lpm generate``: nothing crashes, nothing hangs,
every lost second is counted where the truth is known, and only files with nothing decodable are refused."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lpm.errors import LpmError, MediaError
from lpm.media.container import DecodeClock
from lpm.media.corpus import build_corpus, ramp_content
from lpm.media.decode_audio import audio_for_video, decode_audio
from lpm.media.decode_video import FrameReader, probe

SECONDS, FPS, RATE = 3.0, 25, 48000
TIME_BOUND_S = 10.0  # per file and reader, on a busy 2-core machine (they take 0.05-0.2 s)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    frames, _, audio = ramp_content(SECONDS, FPS, rate=RATE)
    return {c.name: c for c in build_corpus(tmp_path_factory.mktemp("corpus"), frames, audio, FPS, RATE)}


def read_video_file(path):
    """(frames, reader damage merged with the aligned audio's, audio) as ingest reads a file."""
    reader = FrameReader(probe(path), 24)
    frames = list(reader)
    assert reader.num_frames == len(frames)
    audio, audio_damage = audio_for_video(path, len(frames), 24)
    return frames, reader.damage.merge(audio_damage), audio


def test_every_case_is_read_or_refused_and_accounted(corpus):
    assert len(corpus) >= 25
    for name, case in corpus.items():
        t0 = time.perf_counter()
        if case.refused:
            with pytest.raises(MediaError, match=case.path.name):
                read_video_file(case.path)
            continue
        frames, damage, audio = read_video_file(case.path)
        assert time.perf_counter() - t0 < TIME_BOUND_S, name
        got_s = len(frames) / 24
        # Nothing silently lost: what came out plus what is counted as cut off is the source's length.
        assert abs(got_s + damage.video_tail_lost_s - case.seconds) <= 2 / 24, (name, got_s, damage)
        if case.tail_s == 0:
            assert damage.video_tail_lost_s == 0 and damage.audio_tail_lost_s == 0, (name, damage)
        if case.video_lost_s is not None:
            assert abs(damage.video_held_s - case.video_lost_s) < 0.5 / FPS, (name, damage)
        if case.audio_lost_s is not None:
            assert abs(damage.audio_silence_s - case.audio_lost_s) < 0.005, (name, damage)
        assert abs(damage.audio_past_video_s - case.audio_past_video_s) < 0.05, (name, damage)
        assert abs(damage.audio_absent_s - case.audio_absent_s) < 0.05, (name, damage)
        assert audio.shape[1] == round(len(frames) * 16000 / 24)
        assert np.isfinite(audio).all() and np.abs(audio).max(initial=0) <= 1.0
        assert (damage.any and damage.summary()) or not damage.summary(), name


def test_damage_lands_where_it_was_made(corpus):
    """The pictures after a hole are the right ones, a re-timed half is re-anchored, holes are silent."""
    def source_index(frame):  # the ramp: grey level 4 x source index
        return round(float(frame.mean()) / 4)

    clean, _, _ = read_video_file(corpus["clean"].path)
    for name in ("bad_video_packets", "dropped_video_packets", "timestamp_jump"):
        frames, damage, _ = read_video_file(corpus[name].path)
        assert len(frames) == len(clean), name
        assert source_index(frames[-1]) == source_index(clean[-1]), name  # the timeline is intact after the damage
        changed = [k for k in range(len(frames)) if abs(source_index(frames[k]) - source_index(clean[k])) > 0]
        if name == "timestamp_jump":  # video and audio re-anchored exactly (up to instants halfway between frames)
            assert damage.timestamp_jumps >= 2 and all((k * FPS / 24) % 1 == 0.5 for k in changed), changed
        else:
            hole = round(corpus[name].video_lost_s * FPS)  # source frames lost (in one or more holes)
            assert 0 < len(changed) <= hole * 24 / FPS + 2, (name, changed)
            # A changed frame is a neighbour of the hole: the last picture before it or the first after it.
            assert all(abs(source_index(frames[k]) - source_index(clean[k])) <= hole // 2 + 1 for k in changed)
    # VFR: output frame k shows the source frame displayed at k / 24 s.
    frames, damage, _ = read_video_file(corpus["vfr"].path)
    starts = np.concatenate([[0.0], np.cumsum(np.where(np.arange(200) % 2 == 0, 1 / 30, 1 / 15))])
    for k in range(0, len(frames), 7):
        shown = int(np.searchsorted(starts, k / 24 + 1e-6, side="right")) - 1
        mids = (starts[shown] + starts[shown + 1]) / 2
        expect = shown if k / 24 <= mids else shown + 1  # nearest presentation time
        assert abs(source_index(frames[k]) - expect) <= 1, (k, source_index(frames[k]), expect)
    assert not damage.any
    # Holes in the audio are silence of the lost packets' length, the rest is the tone.
    decoded = decode_audio(corpus["dropped_audio_packets"].path)
    level = np.abs(decoded.pcm[0])
    block = 1024 / RATE
    silent = np.flatnonzero(level < 1e-6) / 16000
    # Packets 20-29 of 1024 samples (the encoder's 1024-sample priming moves them one block earlier).
    assert abs(silent[0] - 19 * block) < 0.005 and abs(silent[-1] - 29 * block) < 0.005, silent
    assert len(silent) / 16000 == pytest.approx(10 * block, abs=0.002)
    assert np.sqrt(np.mean(level[: int(silent[0] * 16000) - 400] ** 2)) > 0.15  # the tone before the hole


def test_odd_layouts_and_rates_keep_every_channel(corpus):
    for name, channels in (("mono_8k", 1), ("surround_5_1_44k", 6), ("surround_7_1", 8), ("three_channels_22k", 3)):
        decoded = decode_audio(corpus[name].path)
        assert decoded.rate == 16000 and decoded.pcm.shape[0] == channels, name
        assert abs(decoded.seconds - SECONDS) < 0.05 and not decoded.damage.any, (name, decoded.damage)
        rms = np.sqrt(np.mean(decoded.pcm[:, 800:-800] ** 2, axis=1))
        assert np.allclose(rms, 0.3 / np.sqrt(2), atol=0.03), (name, rms)


def test_decoding_time_is_bounded(corpus):
    path = corpus["clean"].path
    with pytest.raises(MediaError, match="decoding took .* refused"):
        list(FrameReader(probe(path), 24, clock=DecodeClock(path, base_s=0.0, per_media_s=0.0)))
    with pytest.raises(MediaError, match="decoding took"):
        decode_audio(path, clock=DecodeClock(path, base_s=0.0, per_media_s=0.0))


def test_generate_reads_every_case(corpus):
    """``lpm generate``'s voice reader over the corpus: audio is there unless the file has none."""
    from lpm.runtime.generate import load_audio

    for name, case in corpus.items():
        no_audio = case.name in ("no_audio", "zero_length_video", "zero_bytes", "truncated_mp4_index_last",
                                 "empty_audio_stream")
        if no_audio:
            with pytest.raises(MediaError, match=case.path.name):
                load_audio(case.path)
            continue
        pcm, damage = load_audio(case.path)
        assert pcm.ndim == 1 and np.isfinite(pcm).all() and len(pcm) > 16000 * 0.5, name
        if case.audio_lost_s:
            assert abs(damage.audio_silence_s - case.audio_lost_s) < 0.005, (name, damage)


def test_generate_with_a_damaged_voice_warns_and_keeps_its_length(corpus, tmp_path, capsys, one_thread):
    from PIL import Image

    from lpm.runtime.generate import GenerateConfig, generate
    from test_generate import online_checkpoint

    checkpoint = online_checkpoint(tmp_path / "online.safetensors")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "ref.png")
    case = corpus["bad_audio_packets"]
    result = generate(GenerateConfig(out=str(tmp_path / "o.mp4"), reference=str(tmp_path / "ref.png"),
                                     audio=str(case.path), checkpoint=str(checkpoint), progress=False))
    assert result.frames == round(SECONDS * 24)  # the damaged 3 s stay 3 s: holes are silence, not cuts
    assert result.damage.audio_bad_packets == 3
    assert "warning" in capsys.readouterr().err
    with pytest.raises(LpmError, match="no_audio.mkv: no audio stream"):
        generate(GenerateConfig(out=str(tmp_path / "p.mp4"), reference=str(tmp_path / "ref.png"),
                                audio=str(corpus["no_audio"].path), checkpoint=str(checkpoint), progress=False))
    assert not (tmp_path / "p.mp4").exists()
