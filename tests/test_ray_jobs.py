"""Data at scale on Ray (the '.[scale]' extra): world synth, ingest and the latent cache as Ray tasks write exactly
what the local runs write, atomically per clip, and a rerun skips finished items. Ray is started by the test."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from lpm.errors import LpmError
from lpm.world.synth import ClipSpec, plan, synth

ray = pytest.importorskip("ray", reason="ray is not installed (pip install '.[scale]')")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for this module; the code under test reuses the open connection ('auto')."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_on_ray_writes_what_the_local_run_writes_and_resumes(local_ray, tmp_path):
    specs = plan(clips=2, seed=5, seconds=0.5, res=64, split="mixed")
    synth(tmp_path / "local", specs, workers=1, progress=False)
    synth(tmp_path / "ray", specs, progress=False, ray="auto")
    local, remote = files(tmp_path / "local"), files(tmp_path / "ray")
    assert len(local) >= 2 * 12 and local.keys() == remote.keys()
    assert [k for k in local if local[k] != remote[k]] == []  # byte for byte, the mp4s included
    # A clip without meta.json is incomplete (killed mid-write): the rerun redoes it and only it.
    victim = tmp_path / "ray" / specs[1].clip_id
    (victim / "meta.json").unlink()
    (victim / "video.mp4").write_bytes(b"half")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*.wav")}
    synth(tmp_path / "ray", specs, progress=False, ray="auto")
    assert files(tmp_path / "ray") == remote
    changed = [p.parent.name for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert changed == [specs[1].clip_id]


def test_latent_cache_on_ray_equals_the_trainer_cache(local_ray, tmp_path):
    from lpm.audio.mel import MelConfig
    from lpm.models.vae import LpmVAE, VAEConfig
    from lpm.training.latent_cache import fill_latent_cache, load_latent_cache

    data = tmp_path / "data"
    synth(data, plan(clips=2, seed=1, seconds=1.0, res=64, split="train"), workers=1, progress=False)
    torch.manual_seed(0)
    vae = LpmVAE(VAEConfig(channels=(8, 8, 8), norm_groups=4)).eval()
    vae.save(tmp_path / "vae.safetensors")
    spec, mel = str(tmp_path / "vae.safetensors"), MelConfig(n_mels=16)
    folder = fill_latent_cache(data, "train", spec, mel, tmp_path / "ray_cache", ray="auto", show_progress=False)
    written = sorted(folder.glob("*.pt"))
    assert len(written) == 2 and not list(folder.glob("*.tmp"))
    on_ray = {p.stem: torch.load(p, weights_only=False) for p in written}
    local = load_latent_cache(data, "train", vae, spec, mel, tmp_path / "local_cache", show_progress=False)
    assert (tmp_path / "local_cache" / folder.name).is_dir()  # the same key: a trainer finds the Ray cache
    for clip in local:
        got = on_ray[clip.id]
        for name in ("latents", "mel", "states", "motion", "coverage", "mouth", "pose"):
            assert torch.equal(got[name], getattr(clip, name)), name
        assert got["references"].keys() == clip.references.keys()
        assert all(torch.equal(got["references"][k], clip.references[k]) for k in clip.references)
    stamps = [p.stat().st_mtime_ns for p in written]
    fill_latent_cache(data, "train", spec, mel, tmp_path / "ray_cache", ray="auto", show_progress=False)
    assert [p.stat().st_mtime_ns for p in written] == stamps  # a rerun encodes nothing
    # The command line: lpm data cache --ray auto, the tiny preset's mel (40 bands).
    from lpm.cli import main
    from lpm.models.dit_config import preset

    assert main(["data", "cache", "--data", str(data), "--vae", spec, "--cache", str(tmp_path / "cli"), "--quiet",
                 "--ray", "auto"]) == 0
    (made,) = (tmp_path / "cli").iterdir()
    assert sorted(p.name for p in made.glob("*.pt")) == [p.name for p in written]
    assert torch.load(next(made.glob("*.pt")), weights_only=False)["mel"].shape[-1] == preset("tiny").mel.n_mels


def test_ingest_on_ray_equals_local_and_skips_finished_sources(local_ray, tmp_path):
    pytest.importorskip("mediapipe", reason="the ingest extra (pip install -e '.[ingest]') is not installed")
    from lpm.data.clip import read_manifest
    from lpm.data.ingest import IngestOptions, ingest
    from lpm.data.video import read_mp4, read_wav, write_mp4

    world = tmp_path / "world"
    specs = plan(clips=1, seed=3, seconds=2.0, res=256, split="train", styles=["photo"], mode="conversation")
    synth(world, specs, workers=1, progress=False)
    clip = world / specs[0].clip_id
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_mp4(inputs / "talk.mp4", read_mp4(clip / "video.mp4"), audio=read_wav(clip / "audio.wav")[0])
    (inputs / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    opts = IngestOptions(res=64, clip_min_s=1.0, clip_max_s=2.0, progress=False)
    local = ingest([str(inputs)], tmp_path / "local", opts)
    remote = ingest([str(inputs)], tmp_path / "ray", opts, ray="auto")
    assert local.clips == remote.clips >= 1 and [s.status for s in remote.sources] == ["skipped", "ok"]
    drop = {"ingest_report.json", ".ingest/talk.json"}  # hold wall-clock times
    a, b = files(tmp_path / "local"), files(tmp_path / "ray")
    assert a.keys() == b.keys() and [k for k in a if k not in drop and a[k] != b[k]] == []
    marker_a, marker_b = (json.loads(x[".ingest/talk.json"]) for x in (a, b))  # the finished source's marker
    assert marker_a["rows"] == marker_b["rows"] and marker_a["result"]["clips"] == marker_b["result"]["clips"]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("video.mp4")}
    again = ingest([str(inputs)], tmp_path / "ray", opts, ray="auto")
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # the finished source is not read again
    assert again.clips == remote.clips and len(read_manifest(tmp_path / "ray")) == remote.clips
    assert [s.status for s in again.sources] == ["skipped", "ok"]  # the corrupt file is retried, and fails again


def test_a_failing_task_names_its_item(local_ray, tmp_path):
    from lpm.data.ray_jobs import ray_map
    from lpm.world.synth import write_world_clip

    bad = ClipSpec(0, 0, "train", "no-such-style", 1.0, 64)
    with pytest.raises(LpmError, match="no-such-style"):
        list(ray_map(write_world_clip, [(bad, str(tmp_path))], "auto"))


def test_without_ray_the_error_names_the_extra(monkeypatch, tmp_path):
    from lpm.data.ray_jobs import ray_map

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(LpmError, match=r"pip install '\.\[scale\]'"):
        list(ray_map(os.getcwd, [()], "auto"))
