"""What the demo set draws: the flange scene (part, surface, mat, light, camera) and its defects.

core.demo.build renders samples with these and writes the data set; every function takes its random
generator, so one seed gives the same pixels. Defect renderers edit the scene in place and
return their float coverage (0..1), from which the ground-truth mask is cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["RENDERERS", "Scene", "blur", "build_scene", "finish"]


# ---------------------------------------------------------------------------------------------
# The scene: part geometry, surface, background, lighting


@dataclass
class Scene:
    """Float layers of one image, kept apart until composition so defects can edit them."""

    size: int
    yy: np.ndarray  # pixel row coordinates, float32
    xx: np.ndarray  # pixel column coordinates, float32
    center: tuple[float, float]  # part centre (x, y), pixels
    radius: float  # outer radius of the part, pixels
    angle: float  # part rotation, radians (bolt hole positions)
    light: float  # direction the light comes from, radians
    bolt_centers: list[tuple[float, float]]
    bolt_radius: float
    bore_radius: float
    part: np.ndarray  # H x W x 3 part surface colour, 0..1
    material: np.ndarray  # H x W part coverage (1 = metal), antialiased
    background: np.ndarray  # H x W x 3 background colour, 0..1


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency random field of zero mean, unit-ish amplitude (cubic upsampled noise)."""
    coarse = rng.standard_normal((cells, cells), dtype=np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def blur(array: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return array
    return cv2.GaussianBlur(array, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)


def build_scene(rng: np.random.Generator, size: int) -> Scene:
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx = s / 2 + rng.normal(0, 0.012 * s)
    cy = s / 2 + rng.normal(0, 0.012 * s)
    radius = s * rng.uniform(0.392, 0.405)
    angle = math.radians(45.0 + rng.uniform(-10.0, 10.0))
    light = math.radians(-135.0 + rng.uniform(-20.0, 20.0))  # mostly from the top left
    dx, dy = xx - cx, yy - cy
    r = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)

    # Turned surface: concentric machining marks (a 1-D random profile of r) and the bow-tie
    # reflection that turned metal shows under directional light.
    samples = int(radius * 4) + 8
    profile = blur(rng.standard_normal((1, samples), dtype=np.float32), 0.6).ravel()
    profile += 0.6 * np.sin(np.arange(samples) * rng.uniform(0.9, 1.3) + rng.uniform(0, 6.3))
    rings = np.interp(r * 4, np.arange(samples), profile).astype(np.float32)
    bowtie = np.cos(2 * (theta - light - rng.uniform(-0.2, 0.2)))
    fine = blur(rng.standard_normal((size, size), dtype=np.float32), 0.6)
    mottle = _smooth_field(rng, size, 5)
    gray = (
        rng.uniform(0.58, 0.64)
        + 0.022 * rings
        + rng.uniform(0.05, 0.08) * bowtie
        + 0.018 * fine
        + 0.018 * mottle
    )

    # Raised hub with a bevel step, bore, chamfered rim: shading follows the light direction.
    hub = 0.36 * radius
    bore = 0.15 * radius
    facing = np.cos(theta - light)  # +1 where the surface faces the light
    gray = gray + 0.05 * (r < hub)  # hub is polished a little brighter
    gray = gray + 0.18 * facing * np.exp(-(((r - hub) / (0.02 * radius + 0.6)) ** 2))
    gray = gray + 0.22 * facing * _smoothstep(0.93 * radius, 0.985 * radius, r)  # chamfer
    gray = gray - 0.15 * facing * np.exp(-(((r - bore * 1.12) / (0.03 * radius + 0.6)) ** 2))
    hx, hy = dx + 0.35 * radius * math.cos(light), dy + 0.35 * radius * math.sin(light)
    highlight = np.exp(-(hx * hx + hy * hy) / (2 * (0.45 * radius) ** 2))
    gray = gray + rng.uniform(0.04, 0.09) * highlight

    bolt_radius = 0.055 * radius
    bolt_ring = 0.56 * radius
    bolt_centers = [
        (cx + bolt_ring * math.cos(a), cy + bolt_ring * math.sin(a))
        for a in (angle + k * math.pi / 2 for k in range(4))
    ]
    material = np.clip(radius - r + 0.5, 0.0, 1.0) * np.clip(r - bore + 0.5, 0.0, 1.0)
    for bx, by in bolt_centers:
        rb = np.sqrt((xx - bx) ** 2 + (yy - by) ** 2)
        material = material * np.clip(rb - bolt_radius + 0.5, 0.0, 1.0)
        gray = gray - 0.2 * np.cos(np.arctan2(yy - by, xx - bx) - light) * np.exp(
            -(((rb - bolt_radius * 1.25) / (0.25 * bolt_radius + 0.6)) ** 2)
        )
    tint = np.array([1.0, 1.0, 1.0], np.float32) + rng.normal(0, 0.01, 3).astype(np.float32)
    tint *= np.float32([0.99, 1.0, 1.03])  # steel is slightly cool
    part = np.clip(gray, 0.0, 1.2)[..., None] * tint

    # Dark rubber mat with a fine grain, and the part's soft shadow away from the light.
    grain = blur(rng.standard_normal((size, size), dtype=np.float32), 1.0)
    bg_gray = 0.2 + 0.035 * grain + 0.02 * _smooth_field(rng, size, 4)
    shift_x, shift_y = -0.04 * s * math.cos(light), -0.04 * s * math.sin(light)
    shadow_alpha = np.clip(radius - np.sqrt((xx - cx - shift_x) ** 2 + (yy - cy - shift_y) ** 2), 0, 1)
    shadow = blur(shadow_alpha.astype(np.float32), 0.03 * s)
    bg_gray = bg_gray * (1.0 - 0.45 * shadow)
    background = bg_gray[..., None] * np.float32([0.95, 1.0, 1.06])
    return Scene(size, yy, xx, (cx, cy), radius, angle, light, bolt_centers, bolt_radius, bore,
                  part.astype(np.float32), material.astype(np.float32), background.astype(np.float32))


def finish(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Compose part over background, apply uneven lighting and sensor noise, quantize."""
    s = float(scene.size)
    alpha = scene.material[..., None]
    image = scene.part * alpha + scene.background * (1.0 - alpha)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = ((scene.xx - s / 2) * math.cos(direction) + (scene.yy - s / 2) * math.sin(direction)) / s
    vignette = ((scene.xx - s / 2) ** 2 + (scene.yy - s / 2) ** 2) / (s * s / 2)
    lighting = rng.uniform(0.92, 1.06) + rng.uniform(0.05, 0.25) * ramp - rng.uniform(0.1, 0.3) * vignette
    image = image * lighting[..., None]
    image = image + np.float32(0.008) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Defects: each edits the scene and returns its float coverage (0..1) for the ground truth


def _surface_point(scene: Scene, rng: np.random.Generator, avoid: Sequence[tuple[float, float]],
                   r_min: float = 0.42, r_max: float = 0.86) -> tuple[float, float]:
    """A point on the flat turned annulus, away from bolt holes and from earlier defects."""
    cx, cy = scene.center
    point = (cx, cy)
    for _ in range(60):
        rr = scene.radius * math.sqrt(rng.uniform(r_min**2, r_max**2))
        th = rng.uniform(0, 2 * math.pi)
        point = (cx + rr * math.cos(th), cy + rr * math.sin(th))
        near_bolt = any(math.dist(point, b) < 2.2 * scene.bolt_radius for b in scene.bolt_centers)
        near_other = any(math.dist(point, a) < 0.45 * scene.radius for a in avoid)
        if not near_bolt and not near_other:
            break
    return point


def _polyline_layer(size: int, polylines: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> np.ndarray:
    """Antialiased float layer of polylines; each is (points N x 2, intensities N-1, thickness)."""
    layer = np.zeros((size, size), np.uint8)
    bits = 4
    for points, intensities, thickness in polylines:
        fixed = np.rint(points * (1 << bits)).astype(np.int32)
        for k in range(len(points) - 1):
            value = int(np.clip(intensities[k], 0, 1) * 255)
            if value <= 0:
                continue
            segment = np.zeros_like(layer)
            cv2.line(segment, tuple(fixed[k]), tuple(fixed[k + 1]), value, thickness, cv2.LINE_AA, bits)
            np.maximum(layer, segment, out=layer)
    return layer.astype(np.float32) / 255.0


def _line_mask(layer: np.ndarray, material: np.ndarray, grow: int = 1) -> np.ndarray:
    peak = float(layer.max())
    if peak <= 0:
        return np.zeros(layer.shape, np.float32)
    mask = ((layer > 0.2 * peak) & (material > 0.5)).astype(np.uint8)
    if grow > 0:
        mask = cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    return (mask & (material > 0.5)).astype(np.float32)


def _scratch(scene: Scene, rng: np.random.Generator, avoid: list[tuple[float, float]]) -> np.ndarray:
    """Thin, long, smooth line(s) from a tool or handling; bright or dark, tapered ends."""
    s = scene.size
    unit = s / 256.0
    x0, y0 = _surface_point(scene, rng, avoid)
    avoid.append((x0, y0))
    heading = rng.uniform(0, math.pi)
    length = scene.radius * rng.uniform(0.4, 1.1)
    bend = rng.uniform(-0.12, 0.12) * length
    n_lines = int(rng.choice([1, 1, 1, 2, 3]))
    polylines = []
    normal = np.array([-math.sin(heading), math.cos(heading)])
    along = np.array([math.cos(heading), math.sin(heading)])
    for line in range(n_lines):
        t = np.linspace(-0.5, 0.5, 24)
        own_length = length * (1.0 if line == 0 else rng.uniform(0.4, 0.9))
        offset = 0.0 if line == 0 else rng.uniform(2.0, 6.0) * unit * (1 if line == 1 else -1)
        shift = 0.0 if line == 0 else rng.uniform(-0.2, 0.2) * length
        bow = bend * (1 - (2 * t) ** 2)
        points = (np.array([x0, y0]) + np.outer(t * own_length + shift, along)
                  + np.outer(bow + offset + rng.normal(0, 0.15 * unit, t.size), normal))
        taper = np.sin(np.pi * (t[:-1] + t[1:] + 1.0) / 2) ** 0.5
        intensities = taper * rng.uniform(0.6, 1.0, t.size - 1)
        thickness = max(1, int(round(rng.choice([1, 1, 1.5, 2, 3]) * unit)))
        polylines.append((points, intensities, thickness))
    core = _polyline_layer(s, polylines)
    if rng.uniform() < 0.3:  # burr: a faint halo along the groove
        core = np.maximum(core, 0.25 * blur(core, 1.0 * unit))
    core = core * scene.material
    contrast = rng.uniform(0.18, 0.55)
    sign = 1.0 if rng.uniform() < 0.5 else -1.0
    scene.part += (sign * contrast * core)[..., None]
    return _line_mask(core, scene.material, grow=int(round(unit)))


def _hole(scene: Scene, rng: np.random.Generator, avoid: list[tuple[float, float]]) -> np.ndarray:
    """A round pit (sometimes punched through) with a shaded wall and a raised rim lit on one side."""
    x0, y0 = _surface_point(scene, rng, avoid)
    avoid.append((x0, y0))
    radius = scene.radius * rng.uniform(0.035, 0.11)
    squash = rng.uniform(0.75, 1.0)
    tilt = rng.uniform(0, math.pi)
    dx, dy = scene.xx - x0, scene.yy - y0
    u = dx * math.cos(tilt) + dy * math.sin(tilt)
    v = (-dx * math.sin(tilt) + dy * math.cos(tilt)) / squash
    rn = np.sqrt(u * u + v * v) / radius
    theta = np.arctan2(dy, dx)
    rough = 1.0 + 0.08 * blur(rng.standard_normal(rn.shape, dtype=np.float32), 1.0)
    rn = rn * rough
    edge = 1.2 / radius  # about one pixel of antialiasing
    inside = _smoothstep(1.0 + edge, 1.0 - edge, rn)
    wall = np.cos(theta - scene.light)  # inner wall facing away from the light is lit
    floor = rng.uniform(0.08, 0.5) if rng.uniform() < 0.8 else rng.uniform(0.6, 0.85)
    pit = floor + 0.12 * wall * rn + 0.03 * blur(rng.standard_normal(rn.shape, dtype=np.float32), 0.8)
    rim_width = rng.uniform(0.12, 0.3)
    rim = np.exp(-(((rn - 1.0 - rim_width / 2) / (rim_width / 2 + edge)) ** 2)) * (rn > 1.0 - edge)
    rim_strength = rng.uniform(0.1, 0.3)
    material = scene.material.copy()
    coverage = inside * material
    if rng.uniform() < 0.3:  # punched through: the mat shows inside
        scene.material = scene.material * (1.0 - inside)
    else:
        steel = scene.part.mean(axis=(0, 1)) / 0.6  # colour of steel at brightness 1
        scene.part = scene.part * (1 - coverage[..., None]) + (pit * coverage)[..., None] * steel
    scene.part += (-rim_strength * wall * rim * material)[..., None]
    mask = (rn <= 1.0 + 1.4 * rim_width + edge) & (material > 0.5)
    return mask.astype(np.float32)


def _stain(scene: Scene, rng: np.random.Generator, avoid: list[tuple[float, float]]) -> np.ndarray:
    """A diffuse, low-contrast blotch (oil, residue, oxidation) with a soft, irregular outline."""
    x0, y0 = _surface_point(scene, rng, avoid)
    avoid.append((x0, y0))
    s = scene.size
    extent = scene.radius * rng.uniform(0.1, 0.3)
    field = np.zeros((s, s), np.float32)
    for _ in range(int(rng.integers(2, 6))):
        bx, by = x0 + rng.normal(0, 0.4 * extent), y0 + rng.normal(0, 0.4 * extent)
        sx, sy = extent * rng.uniform(0.3, 0.7), extent * rng.uniform(0.3, 0.7)
        rot = rng.uniform(0, math.pi)
        ddx, ddy = scene.xx - bx, scene.yy - by
        a = ddx * math.cos(rot) + ddy * math.sin(rot)
        b = -ddx * math.sin(rot) + ddy * math.cos(rot)
        field = np.maximum(field, np.exp(-0.5 * ((a / sx) ** 2 + (b / sy) ** 2)))
    field = field * (1.0 + 0.35 * _smooth_field(rng, s, 12))
    alpha = _smoothstep(0.15, 0.75, field) * scene.material
    ring = alpha * (1 - alpha) * 4 * rng.uniform(0.0, 0.8)  # dried edge, on some stains
    strength = rng.uniform(0.1, 0.28)
    sign = 1.0 if rng.uniform() < 0.4 else -1.0
    hue = np.float32(1.0) + rng.normal(0, 0.01, 3).astype(np.float32)  # residues carry a faint colour
    smoothed = blur(scene.part, 1.5 * s / 256)  # a film hides the fine machining marks
    cover = (alpha * np.clip(rng.uniform(0.5, 0.9) + 0.25 * _smooth_field(rng, s, 24), 0.0, 1.0))[..., None]
    target = smoothed * (1.0 + sign * strength) * hue
    scene.part = scene.part * (1 - cover) + target * cover
    scene.part += (-sign * 0.5 * strength * ring * scene.material)[..., None]
    mask = (alpha > 0.3) & (scene.material > 0.5)
    return mask.astype(np.float32)


def _crack(scene: Scene, rng: np.random.Generator, avoid: list[tuple[float, float]]) -> np.ndarray:
    """A jagged, branching dark fissure (a random walk with side branches)."""
    x0, y0 = _surface_point(scene, rng, avoid)
    avoid.append((x0, y0))
    s = scene.size
    unit = s / 256.0
    step = 2.2 * unit
    length = scene.radius * rng.uniform(0.25, 0.6)

    def walk(start: np.ndarray, heading: float, n: int) -> np.ndarray:
        points = [start]
        for _ in range(n):
            heading += rng.normal(0, 0.35)
            points.append(points[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
        return np.array(points)

    heading = rng.uniform(0, 2 * math.pi)
    n = max(4, int(length / step / 2))
    start = np.array([x0, y0])
    trunk = np.concatenate([walk(start, heading + math.pi, n)[::-1], walk(start, heading, n)[1:]])
    polylines = []
    thickness = max(1, int(round(rng.choice([1, 1, 2]) * unit)))
    fade = np.minimum(1.0, np.minimum(np.arange(len(trunk) - 1), np.arange(len(trunk) - 1)[::-1]) / 4 + 0.3)
    polylines.append((trunk, fade, thickness))
    for _ in range(int(rng.integers(1, 4))):
        at = int(rng.integers(2, len(trunk) - 2))
        direction = trunk[at + 1] - trunk[at]
        base = math.atan2(direction[1], direction[0]) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        branch = walk(trunk[at], base, max(3, int(n * rng.uniform(0.3, 0.7))))
        polylines.append((branch, np.linspace(0.9, 0.4, len(branch) - 1), max(1, thickness - 1)))
    layer = _polyline_layer(s, polylines) * scene.material
    contrast = rng.uniform(0.35, 0.8)
    scene.part *= (1.0 - contrast * layer)[..., None]
    if rng.uniform() < 0.5:  # the lit lip of the fissure
        shifted = np.roll(layer, (1, 1), axis=(0, 1)) * (1 - layer)
        scene.part += (rng.uniform(0.1, 0.25) * shifted * scene.material)[..., None]
    return _line_mask(layer, scene.material, grow=int(round(unit)))


def _chipped_edge(scene: Scene, rng: np.random.Generator, avoid: list[tuple[float, float]]) -> np.ndarray:
    """Material broken off the rim: the mat or a lower rough surface shows, the fracture face is rough."""
    s = scene.size
    cx, cy = scene.center
    for _ in range(60):
        phi = rng.uniform(0, 2 * math.pi)
        rim = (cx + scene.radius * math.cos(phi), cy + scene.radius * math.sin(phi))
        if all(math.dist(rim, a) > 0.45 * scene.radius for a in avoid):
            break
    avoid.append(rim)
    size = scene.radius * rng.uniform(0.09, 0.24)
    depth = rng.uniform(-0.1, 0.45) * size  # centre outside the rim by this much
    reach = scene.radius + depth
    centre = np.array([cx + reach * math.cos(phi), cy + reach * math.sin(phi)])
    k = int(rng.integers(7, 12))
    angles = np.linspace(0, 2 * math.pi, k, endpoint=False) + rng.uniform(-0.25, 0.25, k) * 2 * math.pi / k
    radii = size * rng.uniform(0.7, 1.0, k)
    stretch = rng.uniform(1.0, 1.8)  # chips are longer along the rim than deep
    tangent = phi + math.pi / 2
    local = np.stack([radii * np.cos(angles) * stretch, radii * np.sin(angles)], axis=1)
    rot = np.array([[math.cos(tangent), -math.sin(tangent)], [math.sin(tangent), math.cos(tangent)]])
    polygon = centre + local @ rot.T
    bits = 4
    layer = np.zeros((s, s), np.uint8)
    cv2.fillPoly(layer, [np.rint(polygon * (1 << bits)).astype(np.int32)], 255, cv2.LINE_AA, bits)
    chip = layer.astype(np.float32) / 255.0
    before = scene.material.copy()
    steel = scene.part.mean(axis=(0, 1)) / 0.6  # colour of steel at brightness 1
    rough = 1.0 + 0.25 * blur(rng.standard_normal((s, s), dtype=np.float32), 0.7)
    if rng.uniform() < 0.55:  # broken through: the mat shows
        scene.material = scene.material * (1.0 - chip)
    else:  # spalled: a lower, rough fracture surface remains
        floor = rng.uniform(0.25, 0.8) * rough
        cover = (chip * before)[..., None]
        scene.part = scene.part * (1 - cover) + floor[..., None] * steel * cover
    width = max(1.0, rng.uniform(2.0, 5.0) * s / 256)
    grown = blur(chip, width)
    face = np.clip(grown * 2.0 - chip, 0.0, 1.0) * scene.material  # band inside the new edge
    brightness = rng.uniform(0.7, 1.1) if rng.uniform() < 0.7 else rng.uniform(0.2, 0.45)
    fracture = (brightness * rough)[..., None] * steel
    scene.part = scene.part * (1 - face[..., None]) + fracture * face[..., None]
    mask = ((chip * before > 0.3) | (face > 0.1))
    return mask.astype(np.float32)


RENDERERS: dict[str, Callable[[Scene, np.random.Generator, list], np.ndarray]] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "crack": _crack,
    "chipped_edge": _chipped_edge,
}
