"""Pictures (EXIF orientation, size limits, animation, 16-bit) and framing a reference like the world: the face of a
world character pasted small and off-centre into a wide picture is cropped back to the world's framing."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from lpm.errors import MediaError
from lpm.media.framing import FACE_BOX_FRACTION, FACE_CENTRE_Y, frame_picture
from lpm.media.image import read_picture

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


def _upright() -> Image.Image:
    """40 high, 24 wide: red top half, blue bottom half."""
    a = np.zeros((40, 24, 3), np.uint8)
    a[:20], a[20:] = RED, BLUE
    return Image.fromarray(a)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the camera stored the picture turned left
    _upright().transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    picture = read_picture(tmp_path / "phone.jpg")
    assert picture.orientation == 6 and picture.stored_size == (40, 24)
    assert picture.image.shape == (40, 24, 3)  # upright again
    assert picture.image[5, 12, 0] > 150 and picture.image[35, 12, 2] > 150  # red on top, blue below


def test_size_limits_refuse_or_downscale(tmp_path):
    Image.new("1", (9000, 8000)).save(tmp_path / "huge.png")  # a small file declaring 72 M pixels
    with pytest.raises(MediaError, match=r"huge.png: picture of 9000x8000 pixels exceeds"):
        read_picture(tmp_path / "huge.png")
    Image.new("RGB", (300, 200), GREEN).save(tmp_path / "big.jpg")
    picture = read_picture(tmp_path / "big.jpg", work_pixels=60 * 40)
    assert picture.image.shape[0] * picture.image.shape[1] <= 60 * 40 and picture.scale < 0.25
    assert abs(picture.image.shape[1] / picture.image.shape[0] - 1.5) < 0.1  # aspect kept
    assert np.abs(picture.image.astype(int).mean(axis=(0, 1)) - GREEN).max() < 8


def test_animated_pictures_give_their_first_frame_and_16_bit_is_scaled(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN, BLUE)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    picture = read_picture(tmp_path / "anim.gif")
    assert picture.frames == 3 and np.abs(picture.image[8, 8].astype(int) - RED).max() < 16
    ramp = (np.linspace(0, 65535, 64)[None].repeat(8, 0)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # 16-bit greyscale
    grey = read_picture(tmp_path / "deep.png").image[..., 0]
    assert grey[0, 0] == 0 and grey[0, -1] == 255 and abs(int(grey[0, 32]) - 130) < 6  # scaled, not clipped
    data = (tmp_path / "big.jpg")
    Image.new("RGB", (64, 64), GREEN).save(data)
    data.write_bytes(data.read_bytes()[:200])
    with pytest.raises(MediaError, match="big.jpg: not a readable image"):
        read_picture(data)


def world_picture(style: str, res: int = 256) -> np.ndarray:
    from lpm.world.identity import sample_identity
    from lpm.world.motion import neutral_pose
    from lpm.world.render import Renderer

    return Renderer(sample_identity(5, style), res).render_sequence(neutral_pose(1))[0]


def wide_shot(frame: np.ndarray, side: int = 200, at: tuple[int, int] = (650, 420)) -> np.ndarray:
    """The world frame shrunk to ``side`` and pasted at ``at`` (x, y) into a 1000 x 700 grey picture."""
    canvas = np.full((700, 1000, 3), 90, np.uint8)
    canvas[at[1]:at[1] + side, at[0]:at[0] + side] = np.asarray(Image.fromarray(frame).resize((side, side)))
    return canvas


def test_framing_finds_the_face_and_crops_like_the_world():
    pytest.importorskip("mediapipe", reason="the ingest extra (pip install -e '.[ingest]') is not installed")
    for style in ("photo", "anime"):
        frame = world_picture(style)
        # A world frame is already framed: the crop is (nearly) the whole picture.
        _, own = frame_picture(frame)
        assert own.method == "face"
        assert abs(own.crop[0] - 128) < 12 and abs(own.crop[1] - 128) < 12 and abs(own.crop[2] - 256) < 30, own
        assert abs(own.face[2] / own.crop[2] - FACE_BOX_FRACTION) < 1e-6
        # Small and off-centre in a wide shot: cropped back to where the frame was pasted.
        wide = wide_shot(frame)
        framed, how = frame_picture(wide)
        cx, cy, side = how.crop
        assert how.method == "face" and how.size == (1000, 700), how
        assert abs(cx - 750) < 16 and abs(cy - 520) < 16 and abs(side - 200) < 24, how
        assert abs((how.face[1] - (cy - side / 2)) / side - FACE_CENTRE_Y) < 1e-6
        small = np.asarray(Image.fromarray(frame).resize((200, 200)), np.float32)
        err = np.abs(np.asarray(Image.fromarray(framed).resize((200, 200)), np.float32) - small).mean()
        _, centre = frame_picture(wide, frame=False)
        centre_crop = wide[:, 150:850]  # what the engine's centre crop would have shown
        centre_err = np.abs(np.asarray(Image.fromarray(centre_crop).resize((200, 200)), np.float32) - small).mean()
        assert err < centre_err / 2, (style, err, centre_err)
        assert centre.method == "none"


def test_no_face_keeps_the_centre_and_no_frame_keeps_the_picture():
    rng = np.random.default_rng(0)
    picture = np.repeat(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], 3, axis=2).repeat(120, axis=0)
    picture = (picture.astype(np.int16) + rng.integers(-5, 5, picture.shape)).clip(0, 255).astype(np.uint8)
    framed, how = frame_picture(picture)
    assert how.method == "centre" and how.face is None and how.crop == (150.0, 60.0, 120.0)
    assert framed.shape == (120, 120, 3) and np.abs(framed.astype(int) - picture[:, 90:210]).mean() < 2
    same, how = frame_picture(picture, frame=False)
    assert same is picture and how.method == "none"


def test_generate_frames_the_reference_and_records_the_crop(tmp_path, one_thread):
    pytest.importorskip("mediapipe", reason="the ingest extra (pip install -e '.[ingest]') is not installed")
    import av

    from lpm.data.video import write_wav
    from lpm.runtime.generate import FRAMING_TAG, GenerateConfig, generate
    from test_generate import online_checkpoint

    Image.fromarray(wide_shot(world_picture("photo"))).save(tmp_path / "wide.jpg")
    write_wav(tmp_path / "self.wav", np.zeros(8000, np.float32), 16000)
    checkpoint = str(online_checkpoint(tmp_path / "online.safetensors"))
    result = generate(GenerateConfig(out=str(tmp_path / "o.mp4"), reference=str(tmp_path / "wide.jpg"),
                                     audio=str(tmp_path / "self.wav"), progress=False,
                                     frame_debug=str(tmp_path / "d.png"), checkpoint=checkpoint))
    assert result.framing["global"].method == "face" and "framed by face" in result.summary()
    with av.open(str(tmp_path / "o.mp4")) as container:
        comment = container.metadata["comment"]
    assert comment.startswith(FRAMING_TAG)
    recorded = json.loads(comment[len(FRAMING_TAG):])["global"]
    assert recorded["method"] == "face" and abs(recorded["crop"][0] - 750) < 16 and abs(recorded["crop"][2] - 200) < 24
    debug = np.asarray(Image.open(tmp_path / "d.png").convert("RGB")).astype(int)
    assert debug.shape == (700, 1000, 3)
    left = round(recorded["crop"][0] - recorded["crop"][2] / 2)  # the crop square's left edge is drawn green
    column = debug[int(recorded["crop"][1]), left - 1: left + 3]
    assert ((column[:, 1] > 180) & (column[:, 0] < 60)).any(), column


def test_server_start_reads_the_frame_flag_and_orientation():
    from lpm.serve.protocol import Limits, ProtocolError, parse_start

    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    _upright().transpose(Image.Transpose.ROTATE_90).save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    ref = base64.b64encode(buf.getvalue()).decode()
    request = parse_start({"type": "start", "reference": ref}, Limits())
    assert request.frame and request.character.images["global"].shape == (40, 24, 3)
    assert not parse_start({"type": "start", "reference": ref, "frame": False}, Limits()).frame
    with pytest.raises(ProtocolError, match="'frame' must be true or false"):
        parse_start({"type": "start", "reference": ref, "frame": "no"}, Limits())
