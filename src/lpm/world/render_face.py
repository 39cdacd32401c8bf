"""Face features as decals on the head sphere: eyes, brows, nose, mouth, cheeks, glasses.

Shapes are built in unit-head coordinates (x right, y up on the face), lifted onto the sphere, projected
with ``HeadFrame.project`` and drawn with PIL on the 2x canvas. Eyes and the mouth are drawn into small
masked layers so the iris, teeth and tongue are clipped by the lids and lips.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from lpm.world.identity import Identity
from lpm.world.render_rig import FaceState, HeadFrame, on_sphere
from lpm.world.render_styles import (
    GRAPHITE,
    INK,
    MOUTH_INSIDE,
    MOUTH_Y,
    NOSE_Y,
    TEETH,
    TONGUE,
    Eye,
    Look,
    _mix,
    _scale,
)

N_CURVE = 13  # points along a lid or lip curve
_T = np.linspace(-1.0, 1.0, N_CURVE)
_BELL = 1.0 - _T * _T
_CIRCLE = np.stack(
    [
        np.cos(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
        np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
    ],
    axis=1,
)
VISIBLE_Z = 0.12  # a feature is drawn when its centre faces the viewer at least this much
PROFILE_Z = -0.08  # the nose and mouth still show at the outline in profile (their far half folds onto it)
JAW_OPEN = 0.37  # mouth opening at jaw_open = 1, unit-head heights
SMILE_LIFT = 0.1  # mouth corner lift at smile = 1
BROW_LIFT = 0.09  # brow raise at brow_raise = 1
CHEEK_RADII = (0.16, 0.085)  # the blush ellipse's half-axes
GAZE_X, GAZE_Y = 0.5, 0.38  # iris travel as a fraction of the eye half-width / half-height


def _flat(xy: np.ndarray) -> list[float]:
    return xy.ravel().tolist()


def _box(xy: np.ndarray) -> tuple[int, int, int, int]:
    lo, hi = np.floor(xy.min(axis=0)), np.ceil(xy.max(axis=0))
    return int(lo[0]), int(lo[1]), int(hi[0]) + 1, int(hi[1]) + 1


class FacePainter:
    """Draws one identity's face features at a pose."""

    def __init__(self, ident: Identity, look: Look):
        self.ident, self.look = ident, look
        self.sketch = look.mode == "sketch"
        self.line = GRAPHITE if self.sketch else INK
        rng = np.random.default_rng([ident.seed & 0xFFFFFFFF, 17])
        n = 9
        self.freckles = np.column_stack([rng.uniform(0.2, 0.62, n), rng.uniform(-0.3, -0.06, n)])

    # ---- geometry ------------------------------------------------------------------------------------
    def eye_curves(self, eye: Eye, s: FaceState, open_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Upper and lower lid curves of one eye, (N_CURVE, 2) each, in unit-head coordinates."""
        side = 1.0 if eye.x > 0 else -1.0
        x = eye.x + eye.w * _T
        slant = 0.15 * eye.h * _T * side if self.look.style == "anime" else 0.0
        up0 = eye.y + eye.h * _BELL**0.55 * (1.0 + 0.3 * s.widen) + slant
        lo0 = eye.y - 0.8 * eye.h * _BELL**0.75
        if open_only:
            return np.column_stack([x, up0]), np.column_stack([x, lo0])
        lid = {"l": s.lid_l, "r": s.lid_r}.get(eye.side, max(s.lid_l, s.lid_r))
        closed = eye.y - 0.35 * eye.h * _BELL
        up = up0 + (closed - up0) * lid
        lo = lo0 + (closed - lo0) * 0.7 * s.lower_lid
        return np.column_stack([x, up]), np.column_stack([x, np.minimum(lo, up)])

    def mouth_curves(self, s: FaceState) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Upper/lower inner lip and upper/lower outer lip curves, (N_CURVE, 2) each."""
        w = self.look.mouth_w * (1.0 + 0.3 * s.wide - 0.42 * s.round + 0.06 * max(s.smile, 0.0))
        if self.look.kind != "human":
            w *= 1.1
        opening = JAW_OPEN * s.jaw + 0.04 * s.round
        profile = _BELL ** (1.0 - 0.5 * s.round)  # rounder lips give an O rather than a slot
        corner = SMILE_LIFT * s.smile * _T * _T
        x = w * _T
        up_in = MOUTH_Y + corner + 0.12 * opening * profile
        lo_in = MOUTH_Y + corner - 0.88 * opening * profile
        lip = _BELL**0.35
        up_out = up_in + (0.05 + 0.03 * s.round) * lip
        lo_out = lo_in - (0.07 + 0.03 * s.round) * lip
        return tuple(np.column_stack([x, y]) for y in (up_in, lo_in, up_out, lo_out))

    def regions(
        self, f: HeadFrame, s: FaceState, scale: float, res: int
    ) -> dict[str, tuple[int, int, int, int]]:
        """Pixel boxes (x0, y0, x1, y1) of mouth, eyes, brows and cheeks at output resolution; empty when facing
        away."""
        out = {}
        margin = 1

        def box(pts: np.ndarray, centre: np.ndarray) -> tuple[int, int, int, int]:
            xy, z = f.project(on_sphere(centre[None]))
            if z[0] < VISIBLE_Z:
                cx, cy = int(xy[0, 0] / scale), int(xy[0, 1] / scale)
                return cx, cy, cx, cy
            xy, _ = f.project(on_sphere(pts), clamp_limb=True)
            x0, y0, x1, y1 = _box(xy / scale)
            return (max(0, x0 - margin), max(0, y0 - margin), min(res, x1 + margin), min(res, y1 + margin))

        _, _, up_out, lo_out = self.mouth_curves(s)
        out["mouth"] = box(np.concatenate([up_out, lo_out]), np.array([0.0, MOUTH_Y]))
        eyes = self.look.eyes
        by_side = {e.side: e for e in eyes}
        for name, side in (("eye_l", "l"), ("eye_r", "r")):
            e = by_side.get(side, by_side.get("c"))
            up, lo = self.eye_curves(e, s, open_only=True)
            out[name] = box(np.concatenate([up, lo]), np.array([e.x, e.y]))
        # Where the emotions show besides mouth and eyes (brow raise and knit, cheek colour): the expression
        # regions. A one-eyed face's single brow is both brows.
        brows = {eye.side: (anchor, poly) for eye, anchor, poly in self.brow_polygons(s)}
        for name, side in (("brow_l", "l"), ("brow_r", "r")):
            anchor, poly = brows.get(side, brows.get("c", next(iter(brows.values()))))
            out[name] = box(poly, anchor[0])
        for name, sign in (("cheek_l", 1.0), ("cheek_r", -1.0)):
            centre = np.array([0.5 * sign, -0.2 + 0.04 * s.cheek])
            out[name] = box(centre + _CIRCLE * CHEEK_RADII, centre)
        return out

    # ---- drawing -------------------------------------------------------------------------------------
    def draw(self, canvas: Image.Image, draw: ImageDraw.ImageDraw, f: HeadFrame, s: FaceState, tone) -> None:
        """Draw every visible feature onto the canvas; ``tone(f, point)`` gives the shaded skin colour."""
        b = _Batch()
        self._add_cheeks(b, s)
        for i, eye in enumerate(self.look.eyes):
            self._add_eye(b, s, eye, i)
        self._add_brows(b, s)
        self._add_nose(b)
        self._add_mouth(b, s)
        if self.ident.glasses != "none":
            self._add_glasses(b)
        p = b.run(f)  # one projection for every feature
        self._cheeks(draw, f, p, s)
        for i in range(len(self.look.eyes)):
            self._eye(canvas, draw, f, p, i)
        for name in p:
            if name.startswith("brow") and p.visible("a:" + name):
                draw.polygon(_flat(p[name]), fill=(110, 110, 116) if self.sketch else self.look.brow_rgb)
        self._nose(draw, f, p, tone)
        self._mouth(canvas, draw, f, p)
        if self.ident.glasses != "none":
            self._glasses(draw, f, p)

    def _add_cheeks(self, b: _Batch, s: FaceState) -> None:
        for side, name in ((1.0, "l"), (-1.0, "r")):
            b.face("a:cheek_" + name, np.array([[0.5 * side, -0.2]]))
            b.face("cheek_" + name, np.array([0.5 * side, -0.2 + 0.04 * s.cheek]) + _CIRCLE * CHEEK_RADII)
            if self.ident.freckles:
                b.face("freckles_" + name, self.freckles * [side, 1.0])

    def _cheeks(self, draw, f, p: _Projected, s: FaceState) -> None:
        look = self.look
        if self.sketch:
            return
        base = (0.12 if self.look.mode == "photo" else 0.22) if self.ident.blush else 0.0
        alpha = min(0.5, base + 0.3 * s.cheek + 0.35 * s.flush)
        colour = (235, 90, 100) if s.flush > s.cheek else (240, 120, 130)
        for name in ("l", "r"):
            if not p.visible("a:cheek_" + name):
                continue
            if alpha > 0.02 and look.kind != "robot":
                draw.polygon(_flat(p["cheek_" + name]), fill=colour + (int(255 * alpha),))
            if self.ident.freckles:
                r = max(0.8, 0.012 * f.a)
                for x, y in p["freckles_" + name]:
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=_scale(look.skin, 0.7) + (150,))

    def _add_eye(self, b: _Batch, s: FaceState, eye: Eye, i: int) -> None:
        irx, iry = self.look.iris
        up, lo = self.eye_curves(eye, s)
        gx = eye.x + s.gaze_x * GAZE_X * eye.w
        gy = eye.y + s.gaze_y * GAZE_Y * eye.h
        hl = 0.32 if self.look.style in ("anime", "toon3d") or self.look.kind != "human" else 0.2
        b.face(f"a:eye{i}", np.array([[eye.x, eye.y]]))
        b.face(f"eye{i}_up", up)
        b.face(f"eye{i}_lo", lo)
        b.face(f"eye{i}_iris", np.array([gx, gy]) + _CIRCLE * [irx, iry])
        b.face(f"eye{i}_top", np.array([gx, gy + 0.45 * iry]) + _CIRCLE * [irx * 0.9, iry * 0.5])
        b.face(f"eye{i}_pupil", np.array([gx, gy]) + _CIRCLE * [irx * 0.48, iry * 0.48])
        b.face(f"eye{i}_spot", np.array([gx - 0.35 * irx, gy + 0.38 * iry]) + _CIRCLE * irx * hl)
        b.face(f"eye{i}_spot2", np.array([gx + 0.4 * irx, gy - 0.45 * iry]) + _CIRCLE * irx * 0.13)

    def _eye(self, canvas, draw, f, p: _Projected, i: int) -> None:
        if not p.visible(f"a:eye{i}"):
            return
        look = self.look
        up_px, lo_px = p[f"eye{i}_up"], p[f"eye{i}_lo"]
        opening = np.concatenate([up_px, lo_px[::-1]])
        x0, y0, x1, y1 = _box(opening)
        if y1 - y0 >= 3 and x1 - x0 >= 3:
            mask = Image.new("L", (x1 - x0, y1 - y0), 0)
            ImageDraw.Draw(mask).polygon(_flat(opening - (x0, y0)), fill=255)
            layer = Image.new("RGB", mask.size, look.sclera if not self.sketch else self.ident.background_rgb)
            ld = ImageDraw.Draw(layer)
            off = np.array([x0, y0])
            iris = p[f"eye{i}_iris"] - off
            if self.sketch:
                ld.polygon(_flat(iris), outline=GRAPHITE, width=max(1, int(0.02 * f.a)))
            else:
                ld.polygon(
                    _flat(iris),
                    fill=look.iris_rgb,
                    outline=_scale(look.iris_rgb, 0.55),
                    width=max(1, int(0.015 * f.a)),
                )
                if look.style == "anime":
                    ld.polygon(_flat(p[f"eye{i}_top"] - off), fill=_scale(look.iris_rgb, 0.6))
            pupil_rgb = (250, 250, 250) if look.kind == "robot" else (12, 10, 14)
            ld.polygon(_flat(p[f"eye{i}_pupil"] - off), fill=GRAPHITE if self.sketch else pupil_rgb)
            if not self.sketch:
                ld.polygon(_flat(p[f"eye{i}_spot"] - off), fill=(255, 255, 255))
                if look.style == "anime":
                    ld.polygon(_flat(p[f"eye{i}_spot2"] - off), fill=(255, 255, 255))
            canvas.paste(layer, (x0, y0), mask)
            if self.sketch:
                draw.line(_flat(lo_px), fill=GRAPHITE, width=max(1, int(0.015 * f.a)))
        lash_rgb = self.line if look.style in ("anime", "sketch", "creature") else _scale(look.brow_rgb, 0.7)
        if look.kind == "robot":
            lash_rgb = _scale(look.skin, 0.6)
        width = max(1, int(round(look.lash * f.a)))
        draw.line(_flat(up_px), fill=lash_rgb, width=width, joint="curve")
        if look.style == "anime":
            draw.line(_flat(lo_px[2:-2]), fill=lash_rgb, width=max(1, width // 3))

    def _brow_eyes(self) -> list[Eye]:
        """The eyes that carry a brow, in brow order (``brow{j}``): the left and right ones, else the single one."""
        return [e for e in self.look.eyes if e.side in ("l", "r")] or list(self.look.eyes)

    def brow_polygons(self, s: FaceState) -> list[tuple[Eye, np.ndarray, np.ndarray]]:
        """Per brow: its eye, its anchor ``(1, 2)`` and its outline ``(2 N, 2)`` in face coordinates."""
        look = self.look
        thick, gap, half = look.brow
        out = []
        for eye in self._brow_eyes():
            single = eye.side == "c"
            side = 1.0 if eye.x >= 0 else -1.0
            base = eye.y + (gap if look.kind == "human" else eye.h + 0.1) + BROW_LIFT * s.brow
            if single:
                x = eye.x + half * 1.3 * _T
                y = base + 0.05 * _BELL + 0.08 * s.brow_inner * (1 - np.abs(_T))
                th = thick * (0.6 + 0.4 * _BELL)
            else:
                # _T runs from the inner end (-1) to the outer end (+1).
                x = eye.x + side * half * _T
                x = x - side * 0.04 * max(-s.brow_inner, 0.0) * (1 - _T) / 2  # frowning pulls brows inward
                y = base + 0.04 * _BELL + 0.09 * s.brow_inner * (1 - _T) / 2
                th = thick * (1.0 - 0.45 * (_T + 1) / 2)
            poly = np.concatenate([np.column_stack([x, y + th / 2]), np.column_stack([x, y - th / 2])[::-1]])
            out.append((eye, np.array([[eye.x, float(y.mean())]]), poly))
        return out

    def _add_brows(self, b: _Batch, s: FaceState) -> None:
        for j, (_, anchor, poly) in enumerate(self.brow_polygons(s)):
            b.face(f"a:brow{j}", anchor)
            b.face(f"brow{j}", poly, 0.01)

    def _add_nose(self, b: _Batch) -> None:
        wide = {"wide": 0.11, "button": 0.07}.get(self.ident.nose, 0.08)
        b.face("a:nose", np.array([[0.0, NOSE_Y]]))
        # bridge, tip (off the surface, so it shows in profile), right and left wing
        b.add(
            "nose",
            np.array(
                [
                    [0.0, 0.05, 0.999],
                    [0.0, NOSE_Y, 1.2],
                    [wide, NOSE_Y - 0.05, 0.985],
                    [-wide, NOSE_Y - 0.05, 0.985],
                ]
            ),
        )
        b.face(
            "nostrils",
            np.concatenate(
                [np.array([sx * wide * 1.2, NOSE_Y - 0.045]) + _CIRCLE * [0.03, 0.016] for sx in (-0.5, 0.5)]
            ),
        )
        b.add("ball", np.array([[0.0, NOSE_Y + 0.02, 1.02]]))
        b.face("snout", np.array([[-0.12, NOSE_Y + 0.02], [0.12, NOSE_Y + 0.02], [0.0, NOSE_Y - 0.1]]), 0.1)
        whiskers = [
            [[0.2 * sd, NOSE_Y - 0.12 + dy], [0.62 * sd, NOSE_Y - 0.08 + 2.5 * dy]]
            for sd in (1.0, -1.0)
            for dy in (-0.03, 0.03)
        ]
        b.face("whiskers", np.array(whiskers).reshape(-1, 2), 0.05)

    def _nose(self, draw, f, p: _Projected, tone) -> None:
        nose, look = self.ident.nose, self.look
        if nose == "none" or not p.visible("a:nose", PROFILE_Z):
            return
        if nose in ("straight", "wide", "line", "dot", "button"):
            pts, z = p["nose"], p.z("nose")
            if not self.sketch:
                # The nose's side, in the skin's own shade: invisible from the front, a profile from the side.
                near = 2 if z[2] > z[3] else 3
                draw.polygon(_flat(pts[[0, 1, near]]), fill=tone(f, np.array([0.0, NOSE_Y, 1.0])))
            if look.style in ("photo", "toon3d") and not self.sketch:
                # Shadow side of the nose (the light comes from the left), then nostrils.
                draw.polygon(_flat(pts[[0, 1, 2]]), fill=_scale(look.skin, 0.78) + (110,))
                n = p["nostrils"]
                for k in (0, 1):
                    draw.polygon(_flat(n[16 * k : 16 * (k + 1)]), fill=_scale(look.skin, 0.5) + (200,))
            else:
                line = self.line if look.style != "anime" else _scale(look.skin, 0.6)
                seg = pts[[1, 2]] if nose != "dot" else pts[[1, 1]] + [[0, 0], [1, 1]]
                draw.line(_flat(seg), fill=line, width=max(1, int(0.025 * f.a)))
                if self.sketch:
                    draw.line(_flat(pts[[0, 1]]), fill=line, width=max(1, int(0.015 * f.a)))
        elif nose == "ball":
            x, y = p["ball"][0]
            r = 0.1 * f.a
            draw.ellipse((x - r, y - r * 0.85, x + r, y + r * 0.85), fill=_scale(look.skin, 0.9))
            draw.ellipse(
                (x - r * 0.55, y - r * 0.6, x - r * 0.1, y - r * 0.2), fill=_mix(look.skin, (255,) * 3, 0.5)
            )
        elif nose == "snout":
            draw.polygon(_flat(p["snout"]), fill=(40, 30, 34), outline=INK)
            w = p["whiskers"]
            for k in range(0, len(w), 2):
                draw.line(
                    _flat(w[k : k + 2]), fill=_scale(look.skin_alt, 0.45), width=max(1, int(0.015 * f.a))
                )

    def _add_mouth(self, b: _Batch, s: FaceState) -> None:
        curves = self.mouth_curves(s)
        b.face("a:mouth", np.array([[0.0, MOUTH_Y]]))
        for name, c in zip(("up_in", "lo_in", "up_out", "lo_out"), curves):
            b.face(name, c)
        b.face("teeth", np.concatenate([curves[0][2:-2], (curves[0][2:-2] - [0, 0.075])[::-1]]))
        b.face(
            "tongue",
            np.array([0.0, curves[1][N_CURVE // 2, 1] + 0.05]) + _CIRCLE * [0.5 * curves[0][-1, 0], 0.1],
        )
        if self.look.kind == "robot":
            w = self.look.mouth_w * (1.0 + 0.3 * s.wide - 0.4 * s.round)
            h = 0.05 + JAW_OPEN * s.jaw
            x = w * _T
            top = MOUTH_Y + 0.03 + SMILE_LIFT * s.smile * _T * _T
            bottom = top - h * _BELL**0.3 - 0.02
            b.face("grille", np.concatenate([np.column_stack([x, top]), np.column_stack([x, bottom])[::-1]]))
            bars = np.stack([np.column_stack([x, top - 0.02]), np.column_stack([x, bottom + 0.02])], axis=1)
            b.face("bars", bars[1:-1:2].reshape(-1, 2))

    def _mouth(self, canvas, draw, f, p: _Projected) -> None:
        look = self.look
        if not p.visible("a:mouth", PROFILE_Z):
            return
        if look.kind == "robot":
            # An LED grille whose bars light up and stretch with the jaw.
            draw.polygon(_flat(p["grille"]), fill=(16, 20, 28), outline=_scale(look.skin, 0.5))
            bars = p["bars"]
            for k in range(0, len(bars), 2):
                draw.line(_flat(bars[k : k + 2]), fill=look.iris_rgb, width=max(1, int(0.05 * f.a)))
            return
        up_in, lo_in, up_out, lo_out = p["up_in"], p["lo_in"], p["up_out"], p["lo_out"]
        if look.lip_rgb is not None and not self.sketch:
            draw.polygon(_flat(np.concatenate([up_out, up_in[::-1]])), fill=_scale(look.lip_rgb, 0.92))
            draw.polygon(_flat(np.concatenate([lo_in, lo_out[::-1]])), fill=look.lip_rgb)
        inner = np.concatenate([up_in, lo_in[::-1]])
        x0, y0, x1, y1 = _box(inner)
        if y1 - y0 >= 3:
            mask = Image.new("L", (x1 - x0, y1 - y0), 0)
            ImageDraw.Draw(mask).polygon(_flat(inner - (x0, y0)), fill=255)
            layer = Image.new("RGB", mask.size, (120, 116, 120) if self.sketch else MOUTH_INSIDE)
            ld = ImageDraw.Draw(layer)
            off = np.array([x0, y0])
            ld.polygon(_flat(p["teeth"] - off), fill=self.ident.background_rgb if self.sketch else TEETH)
            ld.polygon(_flat(p["tongue"] - off), fill=(170, 166, 168) if self.sketch else TONGUE)
            canvas.paste(layer, (x0, y0), mask)
        line = self.line if look.lip_rgb is None or self.sketch else _scale(look.lip_rgb, 0.45)
        width = max(1, int(round(0.03 * f.a)))
        if y1 - y0 >= 3:
            draw.line(_flat(np.concatenate([inner, inner[:1]])), fill=line, width=width, joint="curve")
        else:
            draw.line(_flat(up_in), fill=line, width=width, joint="curve")
        if self.sketch:
            draw.line(_flat(lo_out[3:-3]), fill=GRAPHITE, width=max(1, width // 2))

    def _add_glasses(self, b: _Batch) -> None:
        rims = []
        for k, eye in enumerate(self.look.eyes[:2]):
            r = max(eye.w, eye.h) * 1.25
            shape = _CIRCLE if self.ident.glasses == "round" else np.clip(_CIRCLE * 1.3, -1, 1)
            rim = np.array([eye.x, eye.y + 0.01]) + shape * [r, r * 0.85]
            rims.append(rim)
            b.face(f"a:rim{k}", np.array([[eye.x, eye.y]]))
            b.face(f"rim{k}", rim, 0.1)
        if len(rims) == 2:  # a one-eyed creature wears a monocle
            r0, r1 = rims
            b.face("a:bridge", np.array([[0.0, self.look.eyes[0].y]]))
            b.face(
                "bridge", np.array([r0[np.argmin(np.abs(r0[:, 0]))], r1[np.argmin(np.abs(r1[:, 0]))]]), 0.1
            )

    def _glasses(self, draw, f, p: _Projected) -> None:
        frame_rgb = GRAPHITE if self.sketch else (30, 30, 34)
        width = max(1, int(round(0.035 * f.a)))
        for k in range(min(2, len(self.look.eyes))):
            if p.visible(f"a:rim{k}"):
                pts = p[f"rim{k}"]
                draw.line(_flat(np.concatenate([pts, pts[:1]])), fill=frame_rgb, width=width, joint="curve")
        if "bridge" in p and p.visible("a:bridge"):
            draw.line(_flat(p["bridge"]), fill=frame_rgb, width=width)


class _Projected(dict):
    """Projected shapes by name (pixel xy arrays), with their view depths."""

    def __init__(self, xy: dict, depth: dict):
        super().__init__(xy)
        self._depth = depth

    def z(self, name: str) -> np.ndarray:
        return self._depth[name]

    def visible(self, anchor: str, min_z: float = VISIBLE_Z) -> bool:
        return bool(self._depth[anchor][0] > min_z)


class _Batch:
    """Named shapes in head-local coordinates, projected together: numpy calls on tiny arrays cost
    microseconds each, so one projection per frame instead of dozens matters for speed."""

    def __init__(self):
        self.names: list[str] = []
        self.flat: list[np.ndarray] = []  # (N, 2) face-plane points, lifted onto the sphere
        self.lifts: list[float] = []
        self.solid: dict[str, np.ndarray] = {}  # (N, 3) local points, used as given

    def face(self, name: str, xy: np.ndarray, lift: float = 0.0) -> None:
        self.names.append(name)
        self.flat.append(xy)
        self.lifts.append(lift)

    def add(self, name: str, pts: np.ndarray) -> None:
        self.solid[name] = pts

    def run(self, f: HeadFrame) -> _Projected:
        sizes = [len(p) for p in self.flat]
        lift = np.repeat(np.array(self.lifts) + 1.0, sizes)[:, None]
        pts = np.concatenate([on_sphere(np.concatenate(self.flat)) * lift, *self.solid.values()])
        xy, z = f.project(pts, clamp_limb=True)
        xys, zs, start = {}, {}, 0
        for name, n in zip(self.names + list(self.solid), sizes + [len(p) for p in self.solid.values()]):
            xys[name], zs[name] = xy[start : start + n], z[start : start + n]
            start += n
        return _Projected(xys, zs)
