"""Character identities: every appearance parameter of one character, sampled deterministically from a seed.

An identity is pure data (no pixels); ``lpm.world.render.Renderer`` turns it plus a motion row into a frame.
Colours are stored both as an English name (for captions) and as RGB (for the renderer).
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import numpy as np

from lpm.errors import LpmError

TRAIN_STYLES: tuple[str, ...] = ("photo", "anime", "toon3d", "creature")
ZEROSHOT_STYLE = (
    "sketch"  # held-out style, never trained on: pencil sketch (graphite lines + hatching on paper)
)
ALL_STYLES: tuple[str, ...] = TRAIN_STYLES + (ZEROSHOT_STYLE,)

RGB = tuple[int, int, int]
Palette = tuple[tuple[str, RGB], ...]


class IdentityError(LpmError, ValueError):
    """An unknown style or another identity request that cannot be served."""


SKIN: dict[str, Palette] = {
    "photo": (
        ("fair", (236, 203, 180)),
        ("light", (226, 186, 154)),
        ("olive", (196, 156, 116)),
        ("tan", (176, 124, 88)),
        ("brown", (134, 90, 62)),
        ("dark", (94, 62, 44)),
    ),
    "anime": (
        ("pale", (253, 230, 214)),
        ("fair", (248, 218, 196)),
        ("warm", (241, 200, 170)),
        ("tan", (218, 170, 132)),
        ("brown", (170, 118, 86)),
    ),
    "toon3d": (
        ("peach", (246, 198, 164)),
        ("rosy", (241, 184, 162)),
        ("golden", (226, 172, 122)),
        ("brown", (164, 108, 74)),
        ("deep", (116, 74, 52)),
    ),
    "sketch": (("light", (226, 186, 154)), ("tan", (176, 124, 88)), ("dark", (94, 62, 44))),
}
CREATURE_SKIN: dict[str, Palette] = {
    "blob": (
        ("green", (104, 190, 104)),
        ("purple", (154, 104, 206)),
        ("teal", (64, 176, 172)),
        ("orange", (242, 146, 64)),
        ("pink", (242, 136, 176)),
        ("blue", (86, 136, 224)),
        ("yellow", (236, 202, 74)),
    ),
    "robot": (
        ("silver", (172, 178, 188)),
        ("gunmetal", (104, 112, 124)),
        ("gold", (212, 174, 92)),
        ("copper", (192, 114, 74)),
        ("white", (226, 229, 233)),
        ("red", (196, 72, 68)),
    ),
    "animal": (
        ("brown", (146, 100, 64)),
        ("ginger", (216, 132, 62)),
        ("grey", (146, 146, 152)),
        ("cream", (232, 214, 180)),
        ("black", (66, 62, 64)),
        ("white", (238, 236, 232)),
    ),
}
HAIR: dict[str, Palette] = {
    "photo": (
        ("black", (32, 28, 26)),
        ("dark brown", (72, 48, 34)),
        ("brown", (116, 78, 48)),
        ("auburn", (142, 66, 38)),
        ("blonde", (214, 182, 116)),
        ("grey", (164, 162, 160)),
    ),
    "anime": (
        ("blue", (70, 110, 220)),
        ("pink", (246, 140, 186)),
        ("purple", (140, 92, 210)),
        ("green", (80, 186, 130)),
        ("silver", (206, 210, 224)),
        ("orange", (246, 146, 60)),
        ("black", (44, 42, 62)),
        ("blonde", (250, 222, 124)),
        ("red", (214, 58, 70)),
    ),
    "toon3d": (
        ("brown", (120, 76, 44)),
        ("black", (40, 36, 38)),
        ("orange", (222, 112, 46)),
        ("blonde", (236, 196, 104)),
        ("teal", (46, 160, 160)),
        ("purple", (124, 80, 178)),
    ),
    "sketch": (("dark", (50, 50, 50)), ("light", (150, 150, 150))),
}
EYES: dict[str, Palette] = {
    "photo": (
        ("brown", (96, 62, 36)),
        ("blue", (74, 120, 176)),
        ("green", (84, 130, 80)),
        ("hazel", (140, 110, 60)),
        ("grey", (120, 130, 138)),
    ),
    "anime": (
        ("blue", (50, 110, 230)),
        ("green", (40, 170, 100)),
        ("red", (210, 50, 60)),
        ("violet", (140, 70, 210)),
        ("gold", (224, 170, 40)),
        ("teal", (30, 170, 180)),
        ("brown", (130, 80, 40)),
    ),
    "toon3d": (
        ("brown", (110, 70, 40)),
        ("blue", (60, 130, 220)),
        ("green", (60, 160, 90)),
        ("amber", (210, 140, 40)),
    ),
    "creature": (
        ("black", (30, 30, 36)),
        ("blue", (50, 120, 230)),
        ("red", (220, 50, 50)),
        ("yellow", (240, 200, 40)),
        ("green", (50, 190, 90)),
        ("cyan", (60, 220, 230)),
    ),
    "sketch": (("dark", (40, 40, 40)),),
}
CLOTHES: Palette = (
    ("red", (196, 52, 52)),
    ("blue", (52, 92, 190)),
    ("green", (54, 140, 80)),
    ("yellow", (232, 190, 52)),
    ("purple", (120, 70, 160)),
    ("black", (40, 40, 46)),
    ("white", (236, 236, 236)),
    ("grey", (130, 132, 138)),
    ("orange", (232, 120, 40)),
    ("teal", (36, 140, 140)),
    ("pink", (232, 120, 160)),
    ("navy", (36, 46, 96)),
)
BACKGROUNDS: dict[str, Palette] = {
    "photo": (
        ("beige", (200, 186, 162)),
        ("grey", (150, 152, 156)),
        ("slate", (96, 110, 124)),
        ("olive", (130, 132, 96)),
        ("warm brown", (140, 108, 84)),
        ("sky blue", (150, 180, 206)),
    ),
    "anime": (
        ("yellow", (250, 230, 140)),
        ("pink", (250, 200, 214)),
        ("sky blue", (170, 214, 246)),
        ("mint", (180, 236, 200)),
        ("lavender", (210, 196, 244)),
        ("orange", (250, 196, 140)),
    ),
    "toon3d": (
        ("teal", (96, 180, 190)),
        ("sunny yellow", (246, 206, 96)),
        ("coral", (240, 140, 120)),
        ("lilac", (184, 160, 220)),
        ("lime", (170, 210, 110)),
        ("blue", (110, 150, 230)),
    ),
    "creature": (
        ("night blue", (40, 52, 96)),
        ("moss green", (90, 120, 70)),
        ("magenta", (170, 70, 140)),
        ("sand", (220, 196, 150)),
        ("cyan", (110, 200, 220)),
        ("plum", (90, 50, 100)),
    ),
    "sketch": (("paper", (238, 234, 224)), ("cream paper", (240, 230, 206)), ("grey paper", (222, 222, 218))),
}
PATTERNS: dict[str, tuple[str, ...]] = {
    "photo": ("plain", "gradient", "bokeh"),
    "anime": ("plain", "stripes", "dots", "gradient"),
    "toon3d": ("plain", "gradient", "checker", "dots"),
    "creature": ("plain", "stripes", "dots", "checker", "gradient"),
    "sketch": ("plain", "gradient"),
}
HUMAN_HAIR_STYLES = ("bald", "buzz", "short", "bob", "long", "spiky", "bun", "pigtails", "afro", "mohawk")
CREATURE_HAIR_STYLES = {"blob": ("bald", "tuft"), "robot": ("bald",), "animal": ("bald", "tuft", "mohawk")}
HUMAN_EARS = ("round", "round", "round", "pointed")
CREATURE_EARS = {
    "blob": ("antennae", "horns", "none"),
    "robot": ("bolts", "antennae"),
    "animal": ("cat", "bear", "bunny", "dog"),
}
HUMAN_CLOTHES = ("tshirt", "hoodie", "blazer", "sweater", "tank", "striped shirt")
CREATURE_CLOTHES = {
    "blob": ("none", "scarf", "bowtie"),
    "robot": ("chest panel", "bowtie"),
    "animal": ("none", "scarf", "bowtie", "vest"),
}
EYE_SHAPES = ("round", "almond", "narrow")
NOSES = {
    "photo": ("straight", "wide", "button"),
    "anime": ("dot", "line"),
    "toon3d": ("ball", "button"),
    "sketch": ("straight", "button"),
}
CREATURE_NOSES = {"blob": ("none", "dot"), "robot": ("none",), "animal": ("snout",)}
GLASSES = ("none", "none", "none", "round", "square")
HATS = ("none", "none", "none", "beanie", "cap", "headband")


@dataclass(frozen=True)
class Identity:
    """Every appearance parameter of one character. Lengths are fractions of the frame or of the head."""

    style: str
    seed: int
    kind: str  # "human", or the creature kind: "blob", "robot", "animal"
    head_width: float  # head half-width as a fraction of the frame width
    head_height: float  # head half-height as a fraction of the frame height
    chin_taper: float  # how much narrower the chin is than the cheeks, 0..1
    skin: str  # skin / fur / metal colour name
    skin_rgb: RGB
    hair_style: str
    hair: str
    hair_rgb: RGB
    eye_shape: str
    eye: str
    eye_rgb: RGB
    eye_size: float  # multiplier on the style's eye size
    eye_count: int  # 2 for people; 1..3 for creatures
    eye_spacing: float  # eye centre x on the unit head
    nose: str
    mouth_width: float  # mouth half-width on the unit head
    lip_rgb: RGB
    brow_thickness: float  # multiplier on the style's brow thickness
    ears: str
    glasses: str
    hat: str
    hat_rgb: RGB
    earrings: bool
    freckles: bool
    blush: bool
    clothing: str
    clothing_color: str
    clothing_rgb: RGB
    accent_rgb: RGB
    body_width: float  # shoulder half-width as a fraction of the frame width
    background: str
    background_rgb: RGB
    background_pattern: str

    def to_dict(self) -> dict:
        """All parameters as a JSON-safe dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def describe(self) -> str:
        """One English phrase of this character's appearance, for captions."""
        extras = []
        if self.glasses != "none":
            extras.append(f"{self.glasses} glasses")
        if self.hat != "none":
            extras.append(f"a {self.hat}")
        if self.earrings:
            extras.append("earrings")
        if self.freckles:
            extras.append("freckles")
        if self.clothing not in ("none", "chest panel"):
            colour = "" if self.style == "sketch" else self.clothing_color + " "
            extras.append(f"{_article(colour or self.clothing)} {colour}{self.clothing}")
        elif self.clothing == "chest panel":
            extras.append("a glowing chest panel")
        eyes = f"{self.eye} eyes" if self.eye_count == 2 else f"{_COUNT_WORDS[self.eye_count]} {self.eye} eye"
        if self.eye_count == 3:
            eyes += "s"
        if self.style == "creature":
            head = f"{_article(self.skin)} {self.skin} {self.kind} creature with {eyes}"
            if self.ears != "none":
                head += (
                    f", {self.ears} ears"
                    if self.ears in ("cat", "bear", "bunny", "dog")
                    else f", {self.ears}"
                )
        else:
            hair = _HAIR_WORDS[self.hair_style].format(c=self.hair)
            if self.style == "sketch":
                words = _HAIR_WORDS[self.hair_style].format(c="").split()
                hair = " ".join(words if words[0] != "a" else [_article(words[1]), *words[1:]])
                head = f"a pencil sketch of a person with {hair}"
            else:
                who = {
                    "photo": "a photo of a person",
                    "anime": "an anime character",
                    "toon3d": "a 3D cartoon character",
                }[self.style]
                head = f"{who} with {self.skin} skin, {hair}, {eyes}"
        phrase = head + ("" if not extras else ", " + _join(extras))
        if self.style == "sketch":
            return f"{phrase}, on paper"
        backdrop = f"{self.background} {_PATTERN_WORDS[self.background_pattern]}"
        return f"{phrase}, on {_article(backdrop)} {backdrop}"


_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
_PATTERN_WORDS = {
    "plain": "background",
    "gradient": "gradient background",
    "bokeh": "blurred background",
    "stripes": "striped background",
    "dots": "dotted background",
    "checker": "checked background",
}


_HAIR_WORDS = {
    "bald": "a bald head",
    "buzz": "a {c} buzz cut",
    "short": "short {c} hair",
    "bob": "a {c} bob",
    "long": "long {c} hair",
    "spiky": "spiky {c} hair",
    "bun": "{c} hair in a bun",
    "pigtails": "{c} pigtails",
    "afro": "a {c} afro",
    "mohawk": "a {c} mohawk",
    "tuft": "a {c} tuft of hair",
}


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _style_seed(style: str) -> int:
    # crc32 is stable across processes (str hash is salted), so identities are reproducible.
    return zlib.crc32(style.encode())


def sample_identity(seed: int, style: str) -> Identity:
    """Draw one identity, deterministic in (seed, style).

    Raises:
        IdentityError (a ValueError) for a style outside ALL_STYLES.
    """
    if style not in ALL_STYLES:
        raise IdentityError(f"unknown style {style!r}; expected one of {', '.join(ALL_STYLES)}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _style_seed(style)])

    def pick(options):
        return options[int(rng.integers(len(options)))]

    def uni(lo: float, hi: float) -> float:
        return round(float(rng.uniform(lo, hi)), 4)

    def jitter(rgb: RGB, amount: int = 10) -> RGB:
        return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)

    palette_style = style if style in SKIN else "photo"
    if style == "creature":
        kind = pick(("blob", "robot", "animal"))
        skin, skin_rgb = pick(CREATURE_SKIN[kind])
        hair_style = pick(CREATURE_HAIR_STYLES[kind])
        hair, hair_rgb = skin, tuple(int(c * 0.7) for c in skin_rgb)
        eye, eye_rgb = pick(EYES["creature"])
        eye_count = int(rng.choice([1, 2, 3], p=[0.25, 0.5, 0.25]))
        nose = pick(CREATURE_NOSES[kind])
        ears = pick(CREATURE_EARS[kind])
        clothing = pick(CREATURE_CLOTHES[kind])
        head_w, head_h, taper = uni(0.19, 0.23), uni(0.2, 0.235), uni(0.0, 0.15)
        glasses = pick(GLASSES) if kind == "animal" else "none"
    else:
        kind = "human"
        skin, skin_rgb = pick(SKIN[palette_style])
        hair_style = pick(HUMAN_HAIR_STYLES)
        hair, hair_rgb = pick(HAIR[palette_style])
        eye, eye_rgb = pick(EYES[palette_style])
        eye_count = 2
        nose = pick(NOSES[palette_style])
        ears = pick(HUMAN_EARS) if style == "anime" else "round"
        clothing = pick(HUMAN_CLOTHES)
        head_w, head_h, taper = {
            "photo": (uni(0.168, 0.185), uni(0.225, 0.245), uni(0.15, 0.3)),
            "anime": (uni(0.172, 0.19), uni(0.225, 0.24), uni(0.3, 0.45)),
            "toon3d": (uni(0.19, 0.215), uni(0.225, 0.245), uni(0.05, 0.2)),
            "sketch": (uni(0.168, 0.185), uni(0.225, 0.245), uni(0.15, 0.3)),
        }[style]
        glasses = pick(GLASSES)
    clothing_color, clothing_rgb = pick(CLOTHES)
    _, accent_rgb = pick(CLOTHES)
    hat = pick(HATS) if kind in ("human", "animal") else "none"
    background, background_rgb = pick(BACKGROUNDS[style])
    lip_base = (196, 110, 110) if style == "photo" else (226, 120, 120)
    return Identity(
        style=style,
        seed=int(seed),
        kind=kind,
        head_width=head_w,
        head_height=head_h,
        chin_taper=taper,
        skin=skin,
        skin_rgb=jitter(skin_rgb, 6),
        hair_style=hair_style,
        hair=hair,
        hair_rgb=jitter(hair_rgb, 8),
        eye_shape=pick(EYE_SHAPES),
        eye=eye,
        eye_rgb=jitter(eye_rgb, 10),
        eye_size=uni(0.9, 1.12),
        eye_count=eye_count,
        eye_spacing=uni(0.34, 0.4),
        nose=nose,
        mouth_width=uni(0.5, 0.58),
        lip_rgb=jitter(lip_base, 16),
        brow_thickness=uni(0.8, 1.3),
        ears=ears,
        glasses=glasses,
        hat=hat,
        hat_rgb=jitter(pick(CLOTHES)[1], 8),
        earrings=bool(kind == "human" and rng.random() < 0.25),
        freckles=bool(style in ("photo", "anime", "toon3d") and rng.random() < 0.2),
        blush=bool(rng.random() < 0.5),
        clothing=clothing,
        clothing_color=clothing_color,
        clothing_rgb=jitter(clothing_rgb, 10),
        accent_rgb=accent_rgb,
        body_width=uni(0.36, 0.42),
        background=background,
        background_rgb=jitter(background_rgb, 2 if style == "sketch" else 8),
        background_pattern=pick(PATTERNS[style]),
    )
