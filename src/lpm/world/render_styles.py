"""The look of each style: shading mode, colours and feature sizes, resolved once per identity.

Feature sizes are on the unit head sphere (1.0 = head half-width / half-height), so they scale with the
head and with the resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from lpm.world.identity import RGB, Identity

INK = (34, 28, 36)  # outline colour of anime / cartoon line work
GRAPHITE = (58, 58, 64)  # pencil colour of the sketch style
PAPER = (238, 234, 224)
SCLERA = (246, 244, 240)
MOUTH_INSIDE = (92, 28, 40)
TEETH = (246, 242, 234)
TONGUE = (214, 96, 110)
GOLD = (230, 186, 70)
MOUTH_Y = -0.42  # mouth centre on the unit head
NOSE_Y = -0.17  # nose tip height


@dataclass(frozen=True)
class HairShape:
    """Where the hair is on its shell: local y above a hairline that runs from the forehead to the nape."""

    shell: float  # hair shell radius relative to the skull
    front: float  # hairline height over the forehead
    back: float  # hairline height at the nape
    sides: float  # hairline height beside the cheeks (lower = hair frames the face)
    zig: float  # fringe zigzag amplitude
    zig_n: float  # fringe teeth across the forehead
    strip: float = 0.0  # > 0: hair only within |x| < strip (a mohawk)
    part: float = 0.0  # fringe slope across the forehead: a side part, so left and right views differ


HAIR_SHAPES: dict[str, HairShape] = {
    "buzz": HairShape(1.03, 0.58, -0.4, 0.2, 0.0, 1.0),
    "short": HairShape(1.09, 0.42, -0.55, 0.05, 0.06, 5.0, part=0.12),
    "bob": HairShape(1.16, 0.2, -0.85, -0.6, 0.05, 7.0),
    "long": HairShape(1.11, 0.32, -1.0, -1.0, 0.05, 4.0, part=0.18),
    "spiky": HairShape(1.13, 0.32, -0.45, 0.0, 0.18, 4.0, part=-0.1),
    "bun": HairShape(1.05, 0.5, -0.5, 0.15, 0.0, 1.0, part=0.1),
    "pigtails": HairShape(1.07, 0.24, -0.55, -0.15, 0.08, 6.0),
    "afro": HairShape(1.38, 0.44, -0.6, -0.05, 0.03, 9.0, part=0.05),
    "mohawk": HairShape(1.22, 0.5, -0.3, -0.3, 0.0, 1.0, strip=0.2),
    "tuft": HairShape(1.12, 0.78, 0.78, 0.78, 0.12, 3.0),
}

# Per style: shading mode, eye (half-width, half-height, iris x/y radius, y), brow (thickness, gap above
# the eye, half-length), lash line width and outline width (fraction of the head half-width).
_STYLE = {
    "photo": dict(
        mode="photo", eye=(0.17, 0.1, 0.08, 0.08, 0.02), brow=(0.045, 0.19, 0.19), lash=0.02, outline=0.0
    ),
    "anime": dict(
        mode="cel", eye=(0.23, 0.26, 0.155, 0.21, -0.1), brow=(0.028, 0.33, 0.17), lash=0.045, outline=0.035
    ),
    "toon3d": dict(
        mode="toon", eye=(0.17, 0.17, 0.11, 0.11, 0.0), brow=(0.055, 0.27, 0.17), lash=0.025, outline=0.0
    ),
    "creature": dict(
        mode="toon", eye=(0.2, 0.2, 0.11, 0.11, 0.08), brow=(0.06, 0.28, 0.17), lash=0.03, outline=0.02
    ),
    "sketch": dict(
        mode="sketch", eye=(0.16, 0.095, 0.072, 0.072, 0.02), brow=(0.04, 0.2, 0.19), lash=0.022, outline=0.03
    ),
}
EYE_SHAPE_SCALE = {"round": (0.95, 1.18), "almond": (1.0, 1.0), "narrow": (1.05, 0.72)}


@dataclass(frozen=True)
class Eye:
    """One eye on the unit head; ``side`` is which blink channel drives it: 'l', 'r' or 'c' (either)."""

    x: float
    y: float
    w: float
    h: float
    side: str


@dataclass(frozen=True)
class Look:
    """Everything style- and identity-dependent the renderer needs, resolved once."""

    style: str
    kind: str
    mode: str  # photo | cel | toon | metal | sketch
    skin: RGB
    skin_alt: RGB  # muzzle, belly, robot face plate
    hair: RGB
    hair_hi: RGB
    hat: RGB
    hat_band: RGB
    ink: RGB
    hair_shape: HairShape | None
    eyes: tuple[Eye, ...]
    iris: tuple[float, float]  # iris x/y radius
    iris_rgb: RGB
    sclera: RGB
    lash: float
    brow: tuple[float, float, float]  # thickness, gap above eye, half-length
    brow_rgb: RGB
    outline: float
    mouth_w: float
    lip_rgb: RGB | None


def _scale(rgb: RGB, k: float) -> RGB:
    return tuple(min(255, max(0, int(c * k))) for c in rgb)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _creature_eyes(count: int, size: float) -> tuple[Eye, ...]:
    if count == 1:
        return (Eye(0.0, 0.14, 0.3 * size, 0.3 * size, "c"),)
    if count == 2:
        return (Eye(0.38, 0.08, 0.2 * size, 0.2 * size, "l"), Eye(-0.38, 0.08, 0.2 * size, 0.2 * size, "r"))
    return (
        Eye(0.42, -0.02, 0.17 * size, 0.17 * size, "l"),
        Eye(-0.42, -0.02, 0.17 * size, 0.17 * size, "r"),
        Eye(0.0, 0.42, 0.15 * size, 0.15 * size, "c"),
    )


def make_look(ident: Identity) -> Look:
    """Resolve the look of one identity."""
    cfg = _STYLE[ident.style]
    mode = cfg["mode"]
    if ident.kind == "robot":
        mode = "metal"
    ew, eh, irx, iry, ey = cfg["eye"]
    sw, sh = EYE_SHAPE_SCALE[ident.eye_shape] if ident.kind == "human" else (1.0, 1.0)
    size = ident.eye_size
    if ident.kind == "human":
        x = ident.eye_spacing + (0.03 if ident.style == "anime" else 0.0)
        w, h = ew * sw * size, eh * sh * size
        eyes = (Eye(x, ey, w, h, "l"), Eye(-x, ey, w, h, "r"))
        iris = (irx * size, iry * size * (0.9 if ident.eye_shape == "narrow" else 1.0))
    else:
        eyes = _creature_eyes(ident.eye_count, size)
        iris = (eyes[0].w * 0.55, eyes[0].h * 0.55)
    skin = ident.skin_rgb
    sclera = SCLERA
    iris_rgb = ident.eye_rgb
    if ident.kind == "robot":
        sclera, iris_rgb = (24, 30, 40), ident.eye_rgb
    hair_shape = None if ident.hair_style == "bald" else HAIR_SHAPES[ident.hair_style]
    ink = GRAPHITE if mode == "sketch" else INK
    brow_rgb = _scale(ident.hair_rgb, 0.75) if ident.kind == "human" else _scale(skin, 0.45)
    if ident.kind == "human" and ident.hair_style == "bald":
        brow_rgb = _scale(skin, 0.5)
    lip = None
    if ident.style == "photo":
        lip = _mix(_scale(skin, 0.85), ident.lip_rgb, 0.55)
    elif ident.style == "toon3d":
        lip = _mix(_scale(skin, 0.9), ident.lip_rgb, 0.4)
    skin_alt = {
        "animal": _mix(skin, (250, 244, 232), 0.6),
        "robot": (30, 36, 48),
        "blob": _mix(skin, (255, 255, 255), 0.35),
    }.get(ident.kind, skin)
    return Look(
        style=ident.style,
        kind=ident.kind,
        mode=mode,
        skin=skin,
        skin_alt=skin_alt,
        hair=ident.hair_rgb,
        hair_hi=_mix(ident.hair_rgb, (255, 255, 255), 0.45),
        hat=ident.hat_rgb,
        hat_band=_scale(ident.hat_rgb, 0.7),
        ink=ink,
        hair_shape=hair_shape,
        eyes=eyes,
        iris=iris,
        iris_rgb=iris_rgb,
        sclera=sclera,
        lash=cfg["lash"],
        brow=(cfg["brow"][0] * ident.brow_thickness, cfg["brow"][1], cfg["brow"][2]),
        brow_rgb=brow_rgb,
        outline=cfg["outline"],
        mouth_w=ident.mouth_width,
        lip_rgb=lip,
    )
