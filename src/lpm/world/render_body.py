"""Background and body (neck, shoulders, upper arms, clothing): drawn per pixel once and cached.

The torso is an elliptic cylinder whose width grows from the neck to the shoulders; upper arms are capped
cylinders at its sides. A pixel is ray-cast against each part (orthographic, nearest wins), so any body yaw
gives a consistent front, side or back view; clothing is painted in the torso's own coordinates.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from lpm.world.identity import Identity
from lpm.world.render_head import _smooth_noise
from lpm.world.render_rig import BREATH_FRAC, LIGHT
from lpm.world.render_styles import GRAPHITE, INK, Look

SHOULDER_TOP = 0.725  # neck base height, fraction of the frame
SHOULDER_DROP = 0.1  # height over which the shoulders widen from the neck
NECK_RADIUS = 0.088
ARM_RADIUS = 0.075
TORSO_DEPTH = 0.2  # torso half-depth, fraction of the frame
NECK_TOP = 0.5  # the neck starts here (hidden behind the head)

FAR = -1e6  # depth of a ray that misses a part

(B_NONE, B_SKIN, B_CLOTH, B_TRIM, B_ACCENT, B_SHIRT, B_ALT, B_INK) = range(8)


def _ray_cylinder(x: np.ndarray, cx: float, cz: float, r: float) -> np.ndarray:
    """Front depth of a vertical circular cylinder at view (cx, cz) for pixel columns x; -inf outside."""
    d2 = r * r - (x - cx) ** 2
    return np.where(d2 > 0, cz + np.sqrt(np.maximum(d2, 0)), FAR)


def render_background(ident: Identity, size: int) -> Image.Image:
    """The identity's backdrop, RGB ``size`` x ``size``."""
    rng = np.random.default_rng([ident.seed & 0xFFFFFFFF, 11])
    base = np.array(ident.background_rgb, np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    pattern = ident.background_pattern
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if pattern == "gradient":
        img *= (1.12 - 0.3 * yy)[..., None]
    elif pattern == "stripes":
        img *= np.where(((xx + yy) * 9.0) % 1.0 < 0.5, 1.0, 0.9)[..., None]
    elif pattern == "dots":
        cell = 0.1
        fx, fy = (xx % cell) / cell - 0.5, ((yy + (xx // cell) % 2 * cell / 2) % cell) / cell - 0.5
        img *= np.where(fx * fx + fy * fy < 0.06, 1.12, 1.0)[..., None]
    elif pattern == "checker":
        img *= np.where(((xx * 6).astype(int) + (yy * 6).astype(int)) % 2 == 0, 1.0, 0.9)[..., None]
    elif pattern == "bokeh":
        for _ in range(10):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.7), rng.uniform(0.04, 0.1)
            k = rng.uniform(1.08, 1.25)
            img *= np.where((xx - cx) ** 2 + (yy - cy) ** 2 < r * r, k, 1.0)[..., None]
    if ident.style == "photo":
        vignette = 1.05 - 0.25 * ((xx - 0.5) ** 2 + (yy - 0.45) ** 2)
        img *= vignette[..., None]
        img += _smooth_noise(rng, (size, size), max(2, size // 64))[..., None] * 4.0
    if ident.style == "sketch":
        img *= (0.97 + 0.03 * _smooth_noise(rng, (size, size), 2))[..., None]
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if ident.style == "photo":
        out = out.filter(ImageFilter.GaussianBlur(size / 80))  # shallow depth of field
    return out


class BodyPainter:
    """Renders (and caches, per quantised yaw) the body sprite for one identity and canvas size."""

    YAW_STEP = 5.0  # degrees between cached body views

    def __init__(self, ident: Identity, look: Look, canvas: int):
        self.ident, self.look, self.canvas = ident, look, canvas
        self.top = int(NECK_TOP * canvas)
        # Rows below the frame, so the body still fills the bottom edge when breathing lifts it.
        self.below = int(np.ceil(BREATH_FRAC * canvas)) + 2
        self._cache: dict[int, tuple[Image.Image, Image.Image]] = {}
        rng = np.random.default_rng([ident.seed & 0xFFFFFFFF, 13])
        h = canvas + self.below - self.top
        self.fabric = 1.0 + 0.04 * _smooth_noise(rng, (h, canvas), max(2, canvas // 128))
        yy, xx = np.mgrid[0:h, 0:canvas].astype(np.float32)
        period = 0.022 * canvas
        self.hatch = np.abs(((xx + yy) / period) % 1.0 - 0.5) * 2.0

    def sprite(self, view_yaw: float) -> tuple[Image.Image, Image.Image, int]:
        """The body at this yaw: RGB image, L mask, and its top row on the canvas."""
        key = int(round(view_yaw / self.YAW_STEP)) % int(360 / self.YAW_STEP)
        if key not in self._cache:
            self._cache[key] = self._render(key * self.YAW_STEP)
        rgb, mask = self._cache[key]
        return rgb, mask, self.top

    def _render(self, yaw_deg: float) -> tuple[Image.Image, Image.Image]:
        ident, size = self.ident, self.canvas
        kind = ident.kind
        c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
        ys = (
            np.arange(self.top, size + self.below, dtype=np.float32) + 0.5
        ) / size  # (h,) frame fraction, down
        xs = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5  # (w,)
        x = xs[None, :]
        y = ys[:, None]
        top = SHOULDER_TOP - (0.1 if kind == "blob" else 0.0)  # a blob's body swallows its neck
        w_sh = ident.body_width * (1.1 if kind == "blob" else 1.0)
        neck_r = NECK_RADIUS * (1.25 if kind in ("animal", "robot") else 1.0)
        q = np.sqrt(np.clip((y - top) / SHOULDER_DROP, 0.0, 1.0))  # 0 at the neck base, 1 at full width
        has_arms = kind != "blob"
        width = neck_r * 1.2 + (w_sh - (0.3 * ARM_RADIUS if has_arms else 0.0) - neck_r * 1.2) * q
        depth = TORSO_DEPTH * (0.55 + 0.45 * q)
        a = (s / width) ** 2 + (c / depth) ** 2
        b = x * c * s * (1.0 / depth**2 - 1.0 / width**2)
        cc = x * x * ((c / width) ** 2 + (s / depth) ** 2) - 1.0
        disc = b * b - a * cc
        hit = (disc > 0) & (y > top)
        z_hit = np.where(hit, (-b + np.sqrt(np.maximum(disc, 0))) / a, 0.0)
        z_torso = np.where(hit, z_hit, FAR)
        lx = c * x - s * z_hit  # torso-local coordinates of the visible point
        lz = s * x + c * z_hit
        nlx, nlz = lx / width**2, lz / depth**2
        nrm = np.sqrt(nlx**2 + nlz**2) + 1e-9
        n_x, n_z = (c * nlx + s * nlz) / nrm, (-s * nlx + c * nlz) / nrm
        n_y = (1.0 - q) * 0.9
        parts = [z_torso]
        normals = [(n_x, n_y, n_z)]
        if kind != "blob":
            z_neck = _ray_cylinder(x, 0.0, -0.01 * c, neck_r) + 0 * y
            z_neck = np.where(y < top + 0.03, z_neck, FAR)
            parts.append(z_neck)
            normals.append(
                ((x / neck_r) + 0 * y, 0 * y, np.sqrt(np.clip(1 - (x / neck_r) ** 2, 0, 1)) + 0 * y)
            )
        arm_top = top + SHOULDER_DROP * 1.3  # below the shoulder curve, so the outline stays smooth
        if has_arms:
            for side in (1.0, -1.0):
                ax = side * (w_sh - ARM_RADIUS * 0.85)
                acx, acz = c * ax, -s * ax
                dy = np.minimum(y - arm_top, 0.0)
                d2 = ARM_RADIUS**2 - (x - acx) ** 2 - dy * dy
                z_arm = np.where(d2 > 0, acz + np.sqrt(np.maximum(d2, 0)), FAR)
                parts.append(z_arm)
                r = np.sqrt(np.maximum(d2, 0))
                normals.append(((x - acx) / ARM_RADIUS, -dy / ARM_RADIUS, r / ARM_RADIUS))
        zbuf = np.stack(parts)  # (P, h, w)
        part = np.argmax(zbuf, axis=0)
        visible = np.max(zbuf, axis=0) > FAR / 2
        nx = np.choose(part, [n[0] + 0 * y for n in normals])
        ny = np.choose(part, [n[1] + 0 * y for n in normals])
        nz = np.choose(part, [n[2] + 0 * y for n in normals])
        is_torso, is_neck = part == 0, (part == 1) & (kind != "blob")
        is_arm = visible & ~is_torso & ~is_neck
        mat = self._clothing(is_torso & visible, is_neck & visible, is_arm, lx, lz, y, top, neck_r, width)
        mat[~visible] = B_NONE
        diffuse = nx * LIGHT[0] + ny * LIGHT[1] + nz * LIGHT[2]
        rgb = self._shade(mat, diffuse, nz)
        alpha = np.where(mat > 0, 255, 0).astype(np.uint8)
        return Image.fromarray(rgb), Image.fromarray(alpha)

    def _clothing(self, torso, neck, arm, lx, lz, y, top, neck_r, width) -> np.ndarray:
        ident, kind = self.ident, self.ident.kind
        mat = np.full(torso.shape, B_CLOTH, np.uint8)
        front = lz > 0
        dy = y - top  # depth below the neck base
        mat[neck] = B_SKIN
        cloth = ident.clothing
        # A patch on the character's left chest (a pocket, or a spot on a creature): the left and right
        # views of a symmetric character then differ, as do front and back.
        patch = torso & front & (np.abs(lx - 0.12) < 0.045) & (np.abs(dy - 0.15) < 0.035)
        if kind != "human":
            patch = torso & front & ((lx - 0.13) ** 2 + (dy - 0.08) ** 2 < 0.035**2)
        collar = torso & ~front & (dy < 0.03)
        if kind != "human":
            mat[torso | arm] = B_SKIN
            if kind == "blob" or kind == "animal":
                belly = torso & front & ((lx / (0.6 * width)) ** 2 + ((dy - 0.2) / 0.17) ** 2 < 1)
                mat[belly] = B_ALT
            if kind == "robot":
                mat[neck & ((dy * 60) % 1.0 < 0.35)] = B_TRIM  # neck rings
                if cloth == "chest panel":
                    panel = torso & front & (np.abs(lx) < 0.11) & (dy > 0.07) & (dy < 0.2)
                    mat[panel] = B_ALT
                    mat[panel & ((lx * 40) % 1.0 < 0.45) & ((dy * 30) % 1.0 < 0.45)] = B_ACCENT
            if cloth == "scarf":
                mat[(torso | neck) & (dy > -0.03) & (dy < 0.035)] = B_ACCENT
            elif cloth == "bowtie":
                bow = torso & front & (np.abs(lx) < 0.06) & (np.abs(dy - 0.035) < 0.012 + 0.4 * np.abs(lx))
                mat[bow] = B_ACCENT
            elif cloth == "vest":
                mat[torso & ~(front & (np.abs(lx) < 0.05 + 0.4 * dy))] = B_CLOTH
            mat[patch] = B_ACCENT
            return mat
        neckline = (
            torso & front & (np.abs(lx) < neck_r * 1.5) & (dy < 0.035 * (1 - (lx / (neck_r * 1.5)) ** 2))
        )
        if cloth in ("tshirt", "striped shirt", "hoodie"):
            mat[neckline] = B_SKIN
            band = (
                torso & front & (np.abs(lx) < neck_r * 1.7) & (dy < 0.05 * (1 - (lx / (neck_r * 1.7)) ** 2))
            )
            mat[band & ~neckline] = B_TRIM
            if cloth == "striped shirt":
                mat[(torso | arm) & ((dy * 14) % 1.0 < 0.45) & ~band] = B_ACCENT
            if cloth == "hoodie":
                hood = torso & ~front & (dy < 0.09)
                mat[hood] = B_TRIM
                mat[torso & front & (np.abs(np.abs(lx) - 0.04) < 0.006) & (dy > 0.03) & (dy < 0.18)] = (
                    B_ACCENT
                )
        elif cloth == "blazer":
            v = torso & front & (np.abs(lx) < 0.09 - 0.3 * dy)
            mat[v] = B_SHIRT
            mat[torso & front & ~v & (np.abs(lx) < 0.11 - 0.3 * dy)] = B_TRIM  # lapel edge
            mat[neck & (dy > -0.035)] = B_SHIRT  # collar
            mat[v & (np.abs(lx) < 0.012 + 0.08 * dy) & (dy > 0.01)] = B_ACCENT  # tie
        elif cloth == "sweater":
            mat[neck] = B_CLOTH  # turtleneck
            mat[neck & ((lx * 120) % 1.0 < 0.3)] = B_TRIM
        elif cloth == "tank":
            mat[arm] = B_SKIN
            scoop = torso & (dy < 0.07 * (1 - (lx / (width * 0.9)) ** 2))
            mat[scoop] = B_SKIN
            mat[torso & (np.abs(np.abs(lx) - width * 0.55) < 0.025) & (dy < 0.08)] = B_CLOTH  # straps
        mat[patch] = B_TRIM
        mat[collar & (mat == B_CLOTH)] = B_TRIM  # the back of the collar
        return mat

    def _shade(self, mat: np.ndarray, diffuse: np.ndarray, nz: np.ndarray) -> np.ndarray:
        ident, look = self.ident, self.look
        cloth = np.array(ident.clothing_rgb, np.float32)
        palette = np.array(
            [
                (0, 0, 0),
                look.skin,
                cloth,
                cloth * 0.72,
                ident.accent_rgb,
                (240, 240, 236),
                look.skin_alt,
                INK,
            ],
            np.float32,
        )
        mode = look.mode
        if mode == "cel":
            shade = np.where(diffuse > 0.05, 1.0, 0.78)
        elif mode == "photo":
            shade = (0.48 + 0.55 * np.clip((diffuse + 0.35) / 1.35, 0, 1)) * self.fabric
        elif mode == "metal":
            shade = 0.45 + 0.5 * np.clip(diffuse, 0, 1) + 0.1 * np.cos(diffuse * 9.0)
        else:
            shade = 0.5 + 0.55 * np.clip(diffuse, 0, 1)
        rgb = palette[mat] * shade[..., None]
        if mode in ("toon", "metal"):
            rgb += (np.clip(nz * 0.5 + diffuse * 0.6, 0, 1) ** 16 * 60)[..., None]
        if mode in ("cel", "sketch") or look.kind != "human":
            # Line work: an ink edge wherever the material changes (silhouette, seams, neckline).
            edge = np.zeros(mat.shape, bool)
            for shift in (1, 2):
                edge[shift:] |= mat[shift:] != mat[:-shift]
                edge[:, shift:] |= mat[:, shift:] != mat[:, :-shift]
                edge[:, :-shift] |= mat[:, :-shift] != mat[:, shift:]
            edge &= (mat > 0) | np.roll(mat > 0, 1, axis=1) | np.roll(mat > 0, -1, axis=1)
            if mode == "sketch":
                paper = np.array(ident.background_rgb, np.float32)
                dark = np.clip(0.4 - diffuse, 0, 1) * 0.9
                tone = {B_CLOTH: 0.05, B_TRIM: 0.3, B_ACCENT: 0.45}
                for m, t in tone.items():
                    dark = np.where(mat == m, dark + t, dark)
                ink = (self.hatch < dark) * 0.55
                ink = np.maximum(ink, edge * 0.9)
                rgb = paper + (np.array(GRAPHITE, np.float32) - paper) * ink[..., None]
                mat_vis = (mat > 0) | edge
                rgb[~mat_vis] = 0
            else:
                rgb[edge] = INK
            mat[edge] = np.maximum(mat[edge], B_INK)
        return np.clip(rgb, 0, 255).astype(np.uint8)
