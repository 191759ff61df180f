"""A synthetic city written in the exact Cityscapes file layout.

Every image is a street seen from a car: sky and buildings at the top, road and
sidewalks converging to a vanishing point, poles with signs and traffic lights,
walls, fences, vegetation and terrain, and the 8 Cityscapes thing classes (cars,
trucks, buses, trains, persons, riders on bicycles and motorcycles), some of them as
crowd groups (``cargroup``, ``persongroup``, ``bicyclegroup``). Void regions (ego
vehicle, out of roi) and ignored classes (caravan, trailer, parking, rail track,
guard rail, static) appear as in the real data.

The scene is built in metres with a pinhole camera and written as a
``*_gtFine_polygons.json`` file, which is the source of truth: the label, instance and
colour PNGs are rasterised from it by cityscapesscripts' own ``createLabelImage`` and
``createInstanceImage``, so they are by construction what the official tools make.
The photo (``*_leftImg8bit.png``) is then rendered from the label and instance maps.

Two visual domains share the label semantics and the paints of the things:
``"target"`` (the data the pipeline fine-tunes and evaluates on) and ``"source"``
(warmer light, other textures, a different camera and larger objects; used to
pretrain a tiny model). Standing objects are at least 20 % of the image height tall,
pedestrians and ridden two-wheelers at least 4/15 (a person at 128x256 about 34 px,
about 9 cells of the model's stride-4 masks; a near pedestrian at Cityscapes' 1024x2048
is ~150 px): a tiny model at this resolution can learn and transfer the thing classes.
With 15 % for every object the default study's models found no pedestrian at all.

Layout, per split and city::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_{polygons.json,labelIds.png,
                                                             instanceIds.png,color.png}
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image, ImageFilter
from scipy import ndimage

from vocabseg.data.labelset import LabelSet

__all__ = ["STYLES", "View", "generate_city", "compose_scene", "render_image", "city_names"]

RGB = tuple[int, int, int]
Point = tuple[float, float]

_LABELS = LabelSet.cityscapes()  # the synthetic city is labelled as Cityscapes
FRAME = 19  # Cityscapes annotates the 20th frame of every sequence
DEFAULT_SPLITS: Mapping[str, int] = {"train": 24, "val": 8}

# Invented city names; each split has its own cities.
_CITIES: Mapping[str, tuple[str, ...]] = {
    "train": ("velmora", "quenstadt"),
    "val": ("orlavik", "brenzano"),
    "test": ("tazlowe", "miraunt"),
}
_SYLLABLES = ("ka", "lo", "ven", "dra", "mi", "sor", "tel", "bru", "ne", "gor", "pa", "zil")


# --------------------------------------------------------------------------------------
# Styles
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """Camera, object scale and appearance of one visual domain.

    Geometry fields are fractions of the image size or metres; ``palette`` maps a label
    name to its base colour, ``instance_colors`` a thing class to the colours one
    instance body can take. Texture switches choose between two looks per material.
    """

    name: str
    horizon: float  # horizon row / image height
    focal: float  # focal length / image width
    camera_height: float  # metres above the road
    object_scale: float  # multiplies every object size
    min_object_height: float  # standing objects are placed near enough to be this tall / image height
    min_person_height: float  # the same for pedestrians and ridden two-wheelers (thin limbs need more pixels)
    building_height: tuple[float, float]  # metres
    ego_height: float  # hood height at the image centre / image height
    palette: Mapping[str, RGB]
    instance_colors: Mapping[str, tuple[RGB, ...]]
    glass: RGB
    skin: tuple[RGB, ...]
    windows: str  # "grid" | "bands"
    road_marks: str  # "dashes" | "zebra"
    tile_size: float  # sidewalk tile edge, metres
    leaf_cell: float  # leaf blotch size / image width
    noise_sigma: float  # per-pixel noise, grey levels
    blur: float  # Gaussian blur radius at width 512, pixels


_CLOTHES: tuple[RGB, ...] = (
    (40, 40, 50), (180, 40, 40), (40, 70, 150), (200, 200, 190), (90, 120, 60),
    (120, 80, 50), (220, 180, 60), (70, 70, 80), (150, 60, 130), (30, 110, 120),
)

_TARGET_PALETTE: Mapping[str, RGB] = {
    "sky": (150, 185, 225), "building": (125, 116, 108), "wall": (158, 148, 128),
    "fence": (112, 102, 86), "pole": (98, 98, 104), "traffic light": (38, 40, 36),
    "traffic sign": (205, 175, 45), "vegetation": (68, 112, 44),
    "terrain": (140, 142, 84), "road": (92, 90, 96), "sidewalk": (160, 150, 146),
    "parking": (118, 104, 110), "rail track": (104, 88, 76),
    "guard rail": (172, 172, 178), "static": (122, 100, 78),
    "dynamic": (142, 92, 60), "ground": (122, 112, 92),
    "ego vehicle": (28, 28, 34), "out of roi": (0, 0, 0), "unlabeled": (0, 0, 0),
    "person": (90, 70, 60), "rider": (110, 60, 60), "car": (70, 80, 120),
    "truck": (190, 190, 185), "bus": (210, 175, 50), "train": (200, 200, 212),
    "motorcycle": (60, 60, 70), "bicycle": (50, 70, 60), "caravan": (225, 222, 210),
    "trailer": (150, 150, 140),
}

# The colours one thing instance's body can take, in both styles: the zero-shot shift
# of the things is the camera, their size, the light and the textures around them.
_INSTANCE_COLORS: Mapping[str, tuple[RGB, ...]] = {
    "car": ((190, 192, 196), (30, 30, 34), (225, 225, 222), (160, 30, 30),
            (40, 60, 130), (90, 92, 96), (120, 130, 90)),
    "truck": ((230, 230, 225), (200, 110, 40), (60, 90, 150), (120, 40, 40)),
    "bus": ((220, 185, 40), (190, 40, 40), (230, 230, 230), (50, 110, 170)),
    "train": ((215, 215, 225), (180, 40, 40), (60, 90, 150)),
    "motorcycle": ((30, 30, 35), (170, 30, 30), (200, 200, 205), (40, 60, 130)),
    "bicycle": ((40, 40, 45), (180, 40, 40), (40, 90, 60), (200, 200, 200)),
    "person": _CLOTHES, "rider": _CLOTHES,
    "caravan": ((230, 228, 218), (210, 205, 190)),
    "trailer": ((150, 150, 140), (90, 100, 80)),
}


def _warm(palette: Mapping[str, RGB]) -> dict[str, RGB]:
    """``palette`` in slightly warmer light: red up, blue down (void stays black)."""
    out = {}
    for name, rgb in palette.items():
        if rgb == (0, 0, 0):
            out[name] = rgb
            continue
        r, g, b = rgb
        out[name] = (min(255, round(r * 1.06 + 4)), min(255, g + 2), round(b * 0.93))
    return out


STYLES: Mapping[str, Style] = {
    "target": Style(
        name="target",
        horizon=0.42,
        focal=0.65,
        camera_height=1.5,
        object_scale=1.0,
        min_object_height=0.2,
        min_person_height=4 / 15,
        building_height=(7.0, 24.0),
        ego_height=0.08,
        palette=_TARGET_PALETTE,
        instance_colors=_INSTANCE_COLORS,
        glass=(45, 60, 75),
        skin=((230, 190, 160), (190, 140, 100), (120, 80, 55)),
        windows="grid",
        road_marks="dashes",
        tile_size=1.0,
        leaf_cell=1 / 140,
        noise_sigma=6.0,
        blur=0.8,
    ),
    "source": Style(
        name="source",
        horizon=0.46,
        focal=0.72,
        camera_height=1.4,
        object_scale=1.1,
        min_object_height=0.2,
        min_person_height=4 / 15,
        building_height=(6.0, 18.0),
        ego_height=0.1,
        # The target palette in slightly warmer light; the shift lies in the camera,
        # object sizes, textures, glass and skin: one a model can bridge
        # (as COCO -> Cityscapes), not a different world.
        palette=_warm(_TARGET_PALETTE),
        instance_colors=_INSTANCE_COLORS,
        glass=(150, 220, 235),
        skin=((250, 220, 190), (220, 170, 120)),
        windows="bands",
        road_marks="zebra",
        tile_size=2.2,
        leaf_cell=1 / 60,
        noise_sigma=10.0,
        blur=0.35,
    ),
}


def _get_style(style: str) -> Style:
    """Return the :class:`Style` called ``style`` or raise ``ValueError``."""
    if style not in STYLES:
        allowed = ", ".join(repr(s) for s in sorted(STYLES))
        raise ValueError(f"style must be one of {allowed}; got {style!r}")
    return STYLES[style]


# --------------------------------------------------------------------------------------
# Camera and polygon primitives (world: x right, y up from the road, z forward; metres)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """Pinhole camera of one image, in pixels; lets textures follow the perspective."""

    horizon: float  # row of the horizon
    center: float  # column of the vanishing point
    focal: float  # focal length
    camera_height: float  # metres


def _default_view(style: Style, height: int, width: int) -> View:
    """The style's camera without per-image jitter."""
    return View(style.horizon * height, width / 2, style.focal * width, style.camera_height)


@dataclass(frozen=True)
class _Camera:
    """Projects world points into an ``height x width`` image."""

    view: View
    width: int
    height: int

    def project(self, x: float, y: float, z: float) -> Point:
        """Pixel (column, row) of the world point (x, y, z); z > 0."""
        v = self.view
        return (v.center + v.focal * x / z, v.horizon + v.focal * (v.camera_height - y) / z)

    def ground_depth(self, row: float) -> float:
        """Depth of the road point seen at image row ``row`` (below the horizon)."""
        v = self.view
        return v.focal * v.camera_height / max(row - v.horizon, 1e-3)

    def ground(self, x0: float, x1: float, z0: float, z1: float) -> list[Point]:
        """Quad on the road plane, x in [x0, x1], z in [z0, z1]."""
        return [self.project(x, 0.0, z) for x, z in ((x0, z0), (x1, z0), (x1, z1), (x0, z1))]

    def side(self, x: float, z0: float, z1: float, y0: float, y1: float) -> list[Point]:
        """Vertical plane along the street at lateral position x (a facade, a fence)."""
        return [self.project(x, y, z) for y, z in ((y0, z0), (y1, z0), (y1, z1), (y0, z1))]

    def upright(self, x: float, z: float, shape: Sequence[Point],
                min_px: float = 0.0) -> list[Point]:
        """A shape (metres, relative to its ground point) standing at (x, 0, z).

        ``min_px`` widens or heightens the projected shape about its centre so that
        thin objects (poles, signs) stay at least that many pixels across.
        """
        pts = [self.project(x + dx, dy, z) for dx, dy in shape]
        return _stretch(pts, min_px) if min_px > 0 else pts


def _stretch(points: list[Point], min_px: float) -> list[Point]:
    """Scale ``points`` about their box centre so each box side is >= ``min_px``."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    sx = min_px / max(max(xs) - min(xs), 1e-6) if max(xs) - min(xs) < min_px else 1.0
    sy = min_px / max(max(ys) - min(ys), 1e-6) if max(ys) - min(ys) < min_px else 1.0
    return [(cx + (x - cx) * sx, cy + (y - cy) * sy) for x, y in points]


def _rect(x0: float, x1: float, y0: float, y1: float) -> list[Point]:
    """Axis-aligned rectangle as a polygon."""
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _clip_polygon(points: list[Point], width: int, height: int) -> list[Point]:
    """Clip a polygon to the image box [0, width-1] x [0, height-1] (Sutherland-Hodgman)."""
    edges = ((0, 0.0, True), (0, width - 1.0, False), (1, 0.0, True), (1, height - 1.0, False))
    for axis, bound, keep_above in edges:
        if not points:
            break

        def inside(p: Point) -> bool:
            return p[axis] >= bound if keep_above else p[axis] <= bound

        clipped: list[Point] = []
        for i, cur in enumerate(points):
            prev = points[i - 1]
            if inside(cur) != inside(prev):
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                clipped.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
            if inside(cur):
                clipped.append(cur)
        points = clipped
    return points


def _finish_polygon(points: list[Point], width: int, height: int) -> list[list[int]] | None:
    """Clip, round to integer pixels and drop repeats; None if fewer than 3 distinct
    points or no area remain."""
    ints: list[list[int]] = []
    for x, y in _clip_polygon(points, width, height):
        p = [math.floor(x + 0.5), math.floor(y + 0.5)]
        if not ints or p != ints[-1]:
            ints.append(p)
    while len(ints) > 1 and ints[0] == ints[-1]:
        ints.pop()
    if len({tuple(p) for p in ints}) < 3:
        return None
    twice_area = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ints, ints[1:] + ints[:1]))
    return ints if twice_area != 0 else None


# --------------------------------------------------------------------------------------
# Object shapes, in metres: x relative to the object's centre, y up from the ground
# --------------------------------------------------------------------------------------


def _scaled(unit: Sequence[Point], w: float, h: float, flip: bool = False) -> list[Point]:
    """Scale a unit shape by (w, h); mirror left-right if ``flip``."""
    s = -1.0 if flip else 1.0
    return [(s * x * w, y * h) for x, y in unit]


_CAR_REAR = ((-0.5, 0.1), (-0.5, 0.55), (-0.44, 0.62), (-0.36, 0.97), (0.36, 0.97),
             (0.44, 0.62), (0.5, 0.55), (0.5, 0.1), (0.42, 0.0), (0.26, 0.0), (0.23, 0.07),
             (-0.23, 0.07), (-0.26, 0.0), (-0.42, 0.0))
_BUS_REAR = ((-0.5, 0.06), (-0.5, 0.94), (-0.45, 1.0), (0.45, 1.0), (0.5, 0.94), (0.5, 0.06),
             (0.38, 0.0), (0.2, 0.0), (0.2, 0.05), (-0.2, 0.05), (-0.2, 0.0), (-0.38, 0.0))
_TRUCK_REAR = ((-0.5, 0.28), (-0.5, 1.0), (0.5, 1.0), (0.5, 0.28), (0.46, 0.28), (0.46, 0.0),
               (0.2, 0.0), (0.2, 0.2), (-0.2, 0.2), (-0.2, 0.0), (-0.46, 0.0), (-0.46, 0.28))
_CARAVAN_REAR = ((-0.5, 0.08), (-0.5, 0.9), (-0.42, 1.0), (0.42, 1.0), (0.5, 0.9), (0.5, 0.08),
                 (0.3, 0.08), (0.3, 0.0), (0.15, 0.0), (0.15, 0.08), (-0.3, 0.08))
_TRAILER_REAR = ((-0.5, 0.3), (-0.5, 1.0), (0.5, 1.0), (0.5, 0.3), (0.35, 0.3), (0.35, 0.0),
                 (0.15, 0.0), (0.15, 0.3), (-0.15, 0.3), (-0.15, 0.0), (-0.35, 0.0),
                 (-0.35, 0.3))
# A standing person facing the camera, 1.75 m tall.
_PERSON = ((-0.2, 0.0), (-0.06, 0.0), (0.0, 0.75), (0.06, 0.0), (0.2, 0.0), (0.16, 0.85),
           (0.27, 0.9), (0.28, 1.38), (0.16, 1.45), (0.08, 1.5), (0.1, 1.6), (0.0, 1.75),
           (-0.1, 1.6), (-0.08, 1.5), (-0.16, 1.45), (-0.28, 1.38), (-0.27, 0.9),
           (-0.16, 0.85))
# Side views facing +x; wheels drawn as polygonal arcs.
_BICYCLE = ((-0.76, 0.58), (-0.86, 0.34), (-0.76, 0.1), (-0.52, 0.0), (-0.28, 0.1), (0.0, 0.28),
            (0.28, 0.1), (0.52, 0.0), (0.76, 0.1), (0.86, 0.34), (0.76, 0.58), (0.6, 0.68),
            (0.47, 1.0), (0.33, 1.0), (0.36, 0.76), (-0.25, 0.8), (-0.2, 0.93), (-0.42, 0.93),
            (-0.36, 0.78), (-0.52, 0.68))
_MOTORCYCLE = ((-0.93, 0.55), (-1.02, 0.32), (-0.93, 0.09), (-0.7, 0.0), (-0.47, 0.09),
               (0.0, 0.25), (0.49, 0.09), (0.72, 0.0), (0.95, 0.09), (1.04, 0.32),
               (0.95, 0.55), (0.8, 0.7), (0.65, 1.1), (0.5, 1.12), (0.45, 0.95), (0.2, 0.95),
               (0.0, 0.85), (-0.55, 0.85), (-0.95, 0.78), (-1.0, 0.68))
# A seated rider facing +x, hips at the origin.
_RIDER = ((-0.15, -0.05), (-0.12, 0.2), (0.15, 0.47), (0.2, 0.55), (0.16, 0.65), (0.25, 0.77),
          (0.37, 0.77), (0.42, 0.65), (0.36, 0.55), (0.4, 0.47), (0.8, 0.2), (0.78, 0.12),
          (0.4, 0.3), (0.3, 0.1), (0.5, -0.07), (0.4, -0.5), (0.28, -0.5), (0.35, -0.15),
          (0.05, -0.1))
_SEAT = {"bicycle": (-0.3, 0.93), "motorcycle": (-0.3, 0.85)}


def _skyline(members: Sequence[tuple[float, float, float, Sequence[Point]]]) -> list[Point]:
    """Outline of a row of overlapping objects, as one polygon (a crowd group).

    ``members`` holds (x_centre, width, height, profile) with ``profile`` the top edge
    as (t, fraction of height) points for t in [-0.5, 0.5].
    """
    xs = sorted({cx + t * w for cx, w, _, prof in members for t, _ in prof})

    def top(x: float) -> float:
        best = 0.0
        for cx, w, h, prof in members:
            t = (x - cx) / w
            if -0.5 <= t <= 0.5:
                ts, fractions = zip(*prof)
                best = max(best, h * float(np.interp(t, ts, fractions)))
        return best

    return [(xs[0], 0.0)] + [(x, top(x)) for x in xs] + [(xs[-1], 0.0)]


_CAR_TOP = ((-0.5, 0.5), (-0.42, 0.62), (-0.34, 0.97), (0.34, 0.97), (0.42, 0.62), (0.5, 0.5))
_PERSON_TOP = ((-0.5, 0.76), (-0.2, 0.82), (-0.13, 0.9), (-0.1, 1.0), (0.1, 1.0), (0.13, 0.9),
               (0.2, 0.82), (0.5, 0.76))
_BICYCLE_TOP = ((-0.5, 0.4), (-0.3, 0.75), (0.15, 0.72), (0.25, 1.0), (0.4, 0.62), (0.5, 0.4))


def _blob(rng: np.random.Generator, rx: float, ry: float, cy: float, n: int = 14) -> list[Point]:
    """A bumpy ellipse (a tree crown) centred at height ``cy``."""
    angles = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    radii = rng.uniform(0.8, 1.1, n)
    return [(rx * r * math.cos(a), cy + ry * r * math.sin(a)) for a, r in zip(angles, radii)]


# --------------------------------------------------------------------------------------
# Scene composition
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Street:
    """Lateral layout (metres) of one street; ``side`` is -1 (left) or +1 (right)."""

    road: Mapping[int, float]  # |x| of the road edge
    walk: Mapping[int, float]  # sidewalk width
    build: Mapping[int, float]  # |x| of the building line
    end: float  # depth where the street ends
    closed: bool  # a building row closes the street at ``end``

    def walk_outer(self, side: int) -> float:
        """|x| of the outer sidewalk edge."""
        return self.road[side] + self.walk[side]


@dataclass(frozen=True)
class _Plan:
    """Which rare features one image gets (rotated by index so every split has them)."""

    train: bool
    bus: bool
    truck: bool
    caravan: bool
    trailer: bool
    cargroup: bool
    persongroup: bool
    bicyclegroup: bool
    parking: bool
    guard_rail: bool
    rider_vehicle: str


def _plan(rng: np.random.Generator, index: int) -> _Plan:
    """Feature plan of image ``index``: guaranteed by index, plus random extras."""

    def every(period: int, phase: int, p: float) -> bool:
        return index % period == phase or bool(rng.random() < p)

    return _Plan(
        train=every(3, 0, 0.15),
        bus=every(2, 0, 0.25),
        truck=every(2, 1, 0.25),
        caravan=every(4, 2, 0.25),
        trailer=every(4, 3, 0.25),
        cargroup=every(3, 1, 0.25),
        persongroup=every(3, 2, 0.25),
        bicyclegroup=every(4, 1, 0.2),
        parking=every(2, 1, 0.3),
        guard_rail=every(3, 2, 0.3),
        rider_vehicle="bicycle" if index % 2 == 0 else "motorcycle",
    )


class _Scene:
    """Collects labelled polygons: background layers in drawing order, then standing
    objects drawn far to near, then void overlays."""

    def __init__(self, camera: _Camera, street: _Street, style: Style,
                 rng: np.random.Generator) -> None:
        self.cam = camera
        self.street = street
        self.style = style
        self.rng = rng
        self.background: list[tuple[str, list[Point]]] = []
        self.items: list[tuple[float, int, str, list[Point]]] = []
        self.overlay: list[tuple[str, list[Point]]] = []
        self.occupied: list[tuple[float, float, float, float]] = []  # x, half width, z, half length

    def add_background(self, label: str, points: list[Point]) -> None:
        self.background.append((label, points))

    def add_item(self, depth: float, label: str, points: list[Point]) -> None:
        self.items.append((depth, len(self.items), label, points))

    def claim(self, x: float, half_w: float, z: float, half_len: float) -> bool:
        """Reserve a ground footprint; False if it overlaps an earlier one."""
        for ox, ow, oz, ol in self.occupied:
            if abs(x - ox) < half_w + ow and abs(z - oz) < half_len + ol:
                return False
        self.occupied.append((x, half_w, z, half_len))
        return True

    def objects(self) -> list[dict]:
        """The polygons JSON ``objects`` list (integer pixel polygons)."""
        ordered = (
            self.background
            + [(label, pts) for _, _, label, pts in sorted(self.items, key=lambda t: (-t[0], t[1]))]
            + self.overlay
        )
        out = []
        for label, pts in ordered:
            poly = _finish_polygon(pts, self.cam.width, self.cam.height)
            if poly is not None:
                out.append({"label": label, "polygon": poly})
        return out


def _depth_range(scene: _Scene, x: float, height: float,
                 min_height: float | None = None) -> tuple[float, float] | None:
    """Depths at which an object at lateral x and ``height`` metres tall is in view,
    stands above the ego hood and is at least ``min_height`` of the image height tall
    (default: the style's ``min_object_height``); None if nowhere."""
    cam, style = scene.cam, scene.style
    hood_row = cam.height * (1 - style.ego_height)
    lo = max(cam.ground_depth(hood_row) * 1.15, abs(x) * cam.view.focal / (0.48 * cam.width), 2.0)
    min_px = max(5.0, (style.min_object_height if min_height is None else min_height) * cam.height)
    hi = min(cam.view.focal * height / min_px, scene.street.end - 2.0)
    return (lo, hi) if hi > lo * 1.05 else None


def _sample_depth(scene: _Scene, x: float, height: float, far: float = 1.0,
                  nearest: float = 0.0, min_height: float | None = None) -> float | None:
    """Log-uniform depth in the visible range, not nearer than ``nearest`` metres
    (``far`` > 1 favours far away, < 1 near)."""
    span = _depth_range(scene, x, height, min_height)
    if span is None or span[1] <= max(span[0], nearest) * 1.05:
        return None
    lo, hi = max(span[0], nearest), span[1]
    return lo * (hi / lo) ** (scene.rng.random() ** (1 / far))


def _make_street(rng: np.random.Generator, style: Style) -> _Street:
    """Random lateral layout; at least one side has a terrain verge."""
    road = {-1: rng.uniform(5.0, 9.0), 1: rng.uniform(2.0, 3.6)}
    walk = {s: rng.uniform(2.5, 4.5) for s in (-1, 1)}
    grass_side = int(rng.choice([-1, 1]))
    verge = {s: rng.uniform(1.5, 6.0) if s == grass_side or rng.random() < 0.4 else 0.3
             for s in (-1, 1)}
    build = {s: road[s] + walk[s] + verge[s] for s in (-1, 1)}
    end = rng.uniform(60.0, 160.0) * style.object_scale
    return _Street(road=road, walk=walk, build=build, end=end, closed=bool(rng.random() < 0.6))


def _add_ground(scene: _Scene, plan: _Plan) -> None:
    """Sky, terrain below the horizon, sidewalks, road, and maybe parking / guard rail."""
    cam, st, rng = scene.cam, scene.street, scene.rng
    w, h = cam.width, cam.height
    far = st.end if st.closed else 400.0
    scene.add_background("sky", _rect(0, w - 1, 0, h - 1))
    scene.add_background("terrain", _rect(0, w - 1, cam.view.horizon, h - 1))
    near = 0.5
    for s in (-1, 1):
        x0, x1 = sorted((s * st.road[s], s * st.walk_outer(s)))
        scene.add_background("sidewalk", cam.ground(x0, x1, near, far))
    scene.add_background("road", cam.ground(-st.road[-1], st.road[1], near, far))
    if plan.parking:
        s = int(rng.choice([-1, 1]))
        z0 = rng.uniform(4.0, 12.0)
        x0, x1 = sorted((s * st.road[s], s * (st.road[s] + min(2.4, st.walk[s] - 0.5))))
        scene.add_background("parking", cam.ground(x0, x1, z0, z0 + rng.uniform(10.0, 30.0)))
    if plan.guard_rail:
        s = int(rng.choice([-1, 1]))
        z0 = rng.uniform(5.0, 15.0)
        x = s * (st.road[s] + 0.15)
        scene.add_background("guard rail", cam.side(x, z0, z0 + rng.uniform(8, 25), 0.3, 0.8))


def _add_buildings(scene: _Scene) -> None:
    """Facades along both building lines, their fronts in the gaps, a closing row."""
    cam, st, rng, style = scene.cam, scene.street, scene.rng, scene.style
    if st.closed:
        top = rng.uniform(*style.building_height)
        label = "building" if rng.random() < 0.8 else "vegetation"
        corners = ((-90, 0), (-90, top), (90, top), (90, 0))
        scene.add_background(label, [cam.project(x, y, st.end) for x, y in corners])
    facades: list[tuple[float, list[Point]]] = []
    for s in (-1, 1):
        xb = s * st.build[s]
        z = rng.uniform(1.0, 8.0)
        while z < st.end:
            if rng.random() < 0.2:  # a gap between two buildings
                z += rng.uniform(3.0, 10.0)
                continue
            length = rng.uniform(8.0, 30.0)
            top = rng.uniform(*style.building_height)
            z1 = min(z + length, st.end)
            facades.append((z, cam.side(xb, z, z1, 0.0, top)))
            corners = ((xb, 0), (xb, top), (xb + 15 * s, top), (xb + 15 * s, 0))
            facades.append((z, [cam.project(x, y, z) for x, y in corners]))
            z = z1
    for _, pts in sorted(facades, key=lambda f: -f[0]):  # far to near
        scene.add_background("building", pts)


def _add_barriers(scene: _Scene) -> None:
    """At least one wall and one fence, and sometimes a hedge, along the building lines."""
    cam, st, rng = scene.cam, scene.street, scene.rng
    kinds = ["wall", "fence"] + [k for k in ("wall", "fence", "vegetation") if rng.random() < 0.4]
    for kind in kinds:
        s = int(rng.choice([-1, 1]))
        x = s * (st.build[s] - 0.3)
        lo = max(3.0, st.build[s] * cam.view.focal / (0.45 * cam.width))
        z0 = rng.uniform(lo, lo + 15.0)
        top = {"wall": rng.uniform(1.2, 3.0), "fence": rng.uniform(1.0, 2.0),
               "vegetation": rng.uniform(0.8, 1.6)}[kind]
        scene.add_background(kind, cam.side(x, z0, z0 + rng.uniform(6.0, 30.0), 0.0, top))


def _add_rail_crossing(scene: _Scene) -> None:
    """A rail track across the street with a train on it (clipped to the building lines)."""
    cam, st, rng = scene.cam, scene.street, scene.rng
    h_train = 3.9 * scene.style.object_scale
    visible = cam.view.focal * h_train / max(6.0, 0.03 * cam.height)  # >= 6 px tall
    z = max(min(rng.uniform(15.0, 45.0), st.end - 5.0, visible), 12.0)
    left, right = -st.build[-1], st.build[1]
    scene.add_background("rail track", cam.ground(left, right, z - 3.0, z + 1.0))
    length = rng.uniform(30.0, 80.0)
    start = rng.uniform(left - length + 8.0, right - 8.0)
    x0, x1 = max(start, left), min(start + length, right)
    nose = 0.8 if start > left else 0.0
    tail = 0.8 if start + length < right else 0.0
    body = [(x0, 0.4), (x0, h_train * 0.8), (x0 + nose, h_train), (x1 - tail, h_train),
            (x1, h_train * 0.8), (x1, 0.4)]
    scene.add_item(z, "train", cam.upright(0.0, z, body))


def _add_poles(scene: _Scene) -> None:
    """Poles along the curbs carrying signs and traffic lights (each at least once)."""
    cam, st, rng = scene.cam, scene.street, scene.rng
    n = int(rng.integers(3, 7))
    for i in range(n):
        s = int(rng.choice([-1, 1]))
        x = s * (st.road[s] + 0.4)
        zr = _depth_range(scene, x, 4.0)
        if zr is None:
            continue
        z = rng.uniform(zr[0], min(zr[1], zr[0] + 30.0))
        top = rng.uniform(3.0, 6.0)
        has_light = i == 0 or rng.random() < 0.4
        has_sign = i == 1 or rng.random() < 0.5
        scene.add_item(z + 0.02, "pole", cam.upright(x, z, _rect(-0.08, 0.08, 0.0, top), 1.5))
        if has_light:
            if rng.random() < 0.4:  # an arm over the road with the light at its end
                reach = -s * rng.uniform(2.0, 4.0)
                arm = _rect(min(0, reach), max(0, reach), top - 0.15, top)
                scene.add_item(z + 0.02, "pole", cam.upright(x, z, arm, 1.5))
                light_x, light_top = x + reach, top - 0.15
            else:
                light_x, light_top = x, top
            box = _rect(-0.18, 0.18, light_top - 0.9, light_top)
            scene.add_item(z, "traffic light", cam.upright(light_x, z, box, 2.5))
        if has_sign:
            y = top - (1.3 if has_light else 0.45)
            scene.add_item(z + 0.01, "traffic sign", cam.upright(x, z, _sign_shape(rng, y), 2.5))


def _sign_shape(rng: np.random.Generator, y: float) -> list[Point]:
    """A round, triangular or square traffic sign centred at height ``y``."""
    kind = rng.integers(3)
    r = 0.35
    if kind == 0:
        angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        return [(r * math.cos(a), y + r * math.sin(a)) for a in angles]
    if kind == 1:
        return [(-r, y + 0.3 * r), (r, y + 0.3 * r), (0.0, y - 1.2 * r)]
    return _rect(-r, r, y - r, y + r)


def _add_trees(scene: _Scene) -> None:
    """Trees (trunk + crown, both vegetation) on the verges or the sidewalk edges."""
    cam, st, rng = scene.cam, scene.street, scene.rng
    for _ in range(int(rng.integers(2, 6))):
        s = int(rng.choice([-1, 1]))
        verge = st.build[s] - st.walk_outer(s)
        inner = st.walk_outer(s) + verge / 2 if verge > 1.5 else st.walk_outer(s) - 0.5
        x = s * inner
        z = _sample_depth(scene, x, 6.0)
        if z is None:
            continue
        radius = rng.uniform(1.2, 2.8)
        crown_y = rng.uniform(3.0, 5.5)
        scene.add_item(z, "vegetation", cam.upright(x, z, _rect(-0.15, 0.15, 0.0, crown_y), 1.5))
        crown = _blob(rng, radius, radius * 0.9, crown_y)
        scene.add_item(z, "vegetation", cam.upright(x, z, crown))


def _add_statics(scene: _Scene) -> None:
    """Bins and benches ('static', ignored in evaluation) on the sidewalks."""
    cam, st, rng = scene.cam, scene.street, scene.rng
    for _ in range(int(rng.integers(0, 4))):
        s = int(rng.choice([-1, 1]))
        x = s * (st.walk_outer(s) - 0.4)
        z = _sample_depth(scene, x, 1.0)
        if z is None or not scene.claim(x, 0.5, z, 0.5):
            continue
        w, h = (0.6, 1.0) if rng.random() < 0.5 else (1.6, 0.8)
        scene.add_item(z, "static", cam.upright(x, z, _rect(-w / 2, w / 2, 0.0, h)))


def _place(scene: _Scene, xs: Sequence[float], width: float, height: float, length: float,
           far: float = 1.0, nearest: float = 0.0, tries: int = 6,
           min_height: float | None = None) -> tuple[float, float] | None:
    """Find a free footprint for an object at one of the lateral positions ``xs``
    (``min_height``: see :func:`_depth_range`)."""
    rng = scene.rng
    for _ in range(tries):
        x = float(rng.choice(xs)) + rng.normal(0.0, 0.15)
        z = _sample_depth(scene, x, height, far, nearest, min_height)
        if z is not None and scene.claim(x, width / 2, z, length / 2):
            return x, z
    return None


def _add_vehicles(scene: _Scene, plan: _Plan) -> None:
    """Cars of several sizes, buses, trucks, caravans and trailers on the road."""
    cam, st, rng, k = scene.cam, scene.street, scene.rng, scene.style.object_scale
    lanes = [0.0, -3.5] + ([-7.0] if st.road[-1] > 8.5 else [])
    kerb = [st.road[1] - 1.1] if st.road[1] > 3.0 else []
    kinds = ["bus"] * plan.bus + ["truck"] * plan.truck  # planned ones first: more room
    kinds += ["caravan"] * plan.caravan + ["trailer"] * plan.trailer
    kinds += ["car"] * int(rng.integers(3, 8))
    for kind in kinds:
        if kind == "car":
            w, h, shape, length = rng.uniform(1.6, 1.95), rng.uniform(1.35, 1.75), _CAR_REAR, 4.5
        elif kind == "bus":
            w, h, shape, length = 2.55, rng.uniform(2.9, 3.3), _BUS_REAR, 12.0
        elif kind == "truck":
            w, h, shape, length = 2.5, rng.uniform(3.2, 3.9), _TRUCK_REAR, 9.0
        elif kind == "caravan":
            w, h, shape, length = 2.2, 2.6, _CARAVAN_REAR, 6.0
        else:
            w, h, shape, length = 1.9, 1.1, _TRAILER_REAR, 3.5
        w, h = w * k, h * k
        rare = kind != "car"  # rare kinds come nearer, so cars rarely hide them completely
        spot = _place(scene, lanes + kerb, w, h, length, far=0.6 if rare else 1.0,
                      nearest=max(3.5 * h, 10.0 * k) if rare else 0.0, tries=12 if rare else 6)
        if spot is not None:
            x, z = spot
            scene.add_item(z, kind, cam.upright(x, z, _scaled(shape, w, h)))


def _add_people(scene: _Scene) -> None:
    """Pedestrians on the sidewalks, sometimes crossing the road."""
    cam, st, rng, k = scene.cam, scene.street, scene.rng, scene.style.object_scale
    for _ in range(int(rng.integers(2, 7))):
        s = int(rng.choice([-1, 1]))
        if rng.random() < 0.15:
            xs = [rng.uniform(-st.road[-1] + 0.5, st.road[1] - 0.5)]
        else:
            xs = [s * (st.road[s] + rng.uniform(0.4, st.walk[s] - 0.3))]
        h = rng.uniform(1.55, 1.95) * k
        spot = _place(scene, xs, 0.6 * k, h, 0.6, min_height=scene.style.min_person_height)
        if spot is not None:
            x, z = spot
            width = rng.uniform(0.9, 1.15) * h / 1.75
            scene.add_item(z, "person", cam.upright(x, z, _scaled(_PERSON, width, h / 1.75)))


def _add_two_wheelers(scene: _Scene, plan: _Plan) -> None:
    """Riders on bicycles / motorcycles near the kerb, and parked two-wheelers."""
    cam, st, rng, k = scene.cam, scene.street, scene.rng, scene.style.object_scale
    ridden = [plan.rider_vehicle]
    if rng.random() < 0.5:
        ridden.append(str(rng.choice(["bicycle", "motorcycle"])))
    parked = ["bicycle"] * int(rng.integers(0, 3)) + ["motorcycle"] * int(rng.integers(0, 2))
    kerb = [st.road[1] - 0.7, -st.road[-1] + 0.7]
    for vehicle, with_rider in [(v, True) for v in ridden] + [(v, False) for v in parked]:
        if with_rider:
            xs = kerb
        else:
            s = int(rng.choice([-1, 1]))
            xs = [s * (st.walk_outer(s) - 0.8)]
        spot = _place(scene, xs, 1.9 * k, 1.7 * k if with_rider else 1.1 * k, 1.0,
                      min_height=scene.style.min_person_height if with_rider else None)
        if spot is None:
            continue
        x, z = spot
        flip = bool(rng.random() < 0.5)
        body = _BICYCLE if vehicle == "bicycle" else _MOTORCYCLE
        scene.add_item(z + 0.01, vehicle, cam.upright(x, z, _scaled(body, k, k, flip)))
        if with_rider:
            sx, sy = _SEAT[vehicle]
            sx = -sx if flip else sx
            rider = [(sx * k + px, sy * k + py) for px, py in _scaled(_RIDER, k, k, flip)]
            scene.add_item(z, "rider", cam.upright(x, z, rider))


def _add_groups(scene: _Scene, plan: _Plan) -> None:
    """Crowd groups: far cars, a cluster of pedestrians, a row of parked bicycles."""
    cam, st, rng, k = scene.cam, scene.street, scene.rng, scene.style.object_scale
    groups = []
    if plan.cargroup:
        groups.append(("cargroup", [-3.5, -1.75, 0.0], 1.8, 1.5, _CAR_TOP, (3, 6), (1.3, 1.8), 3.0))
    if plan.persongroup:
        s = int(rng.choice([-1, 1]))
        x = s * (st.road[s] + st.walk[s] / 2)
        groups.append(("persongroup", [x], 0.55, 1.75, _PERSON_TOP, (3, 7), (0.3, 0.45), 2.5))
    if plan.bicyclegroup:
        s = int(rng.choice([-1, 1]))
        x = s * (st.walk_outer(s) - 0.9)
        groups.append(("bicyclegroup", [x], 1.7, 1.0, _BICYCLE_TOP, (3, 6), (0.45, 0.6), 2.0))
    for label, xs, w, h, profile, count, gap, far in groups:
        n = int(rng.integers(*count))
        spot = _place(scene, xs, n * gap[1] * k, h * k, 2.0, far=far, tries=12)
        if spot is None:
            continue
        x, z = spot
        members, cx = [], 0.0
        for _ in range(n):
            members.append((cx, w * k, h * k * rng.uniform(0.9, 1.1), profile))
            cx += rng.uniform(*gap) * k
        outline = [(px - cx / 2, py) for px, py in _skyline(members)]
        scene.add_item(z, label, cam.upright(x, z, outline))


def _add_void_overlays(scene: _Scene) -> None:
    """Ego-vehicle hood at the bottom and an out-of-roi border on the other sides."""
    w, h, e = scene.cam.width, scene.cam.height, scene.style.ego_height
    curve = 0.35 if scene.style.name == "target" else 0.15
    ts = np.linspace(0, 1, 9)
    hood = [(t * (w - 1), (h - 1) - e * h * (1 - curve * (2 * t - 1) ** 2)) for t in ts]
    scene.overlay.append(("ego vehicle", hood + [(w - 1, h - 1), (0, h - 1)]))
    b = max(1.0, round(0.005 * w))
    for box in (_rect(0, b, 0, h - 1), _rect(w - 1 - b, w - 1, 0, h - 1), _rect(0, w - 1, 0, b)):
        scene.overlay.append(("out of roi", box))


def compose_scene(rng: np.random.Generator, height: int, width: int, style: Style,
                  index: int) -> tuple[dict, View]:
    """Build one street scene; returns the polygons JSON dict and the camera view."""
    view = View(
        horizon=height * (style.horizon + rng.uniform(-0.03, 0.03)),
        center=width * (0.5 + rng.uniform(-0.05, 0.05)),
        focal=width * style.focal * rng.uniform(0.93, 1.07),
        camera_height=style.camera_height,
    )
    plan = _plan(rng, index)
    street = _make_street(rng, style)
    scene = _Scene(_Camera(view, width, height), street, style, rng)
    _add_ground(scene, plan)
    _add_buildings(scene)
    _add_barriers(scene)
    if plan.train:
        _add_rail_crossing(scene)
    _add_poles(scene)
    _add_trees(scene)
    _add_statics(scene)
    _add_vehicles(scene, plan)
    _add_two_wheelers(scene, plan)
    _add_people(scene)
    _add_groups(scene, plan)
    _add_void_overlays(scene)
    return {"imgHeight": height, "imgWidth": width, "objects": scene.objects()}, view


# --------------------------------------------------------------------------------------
# Photo rendering from the label and instance maps
# --------------------------------------------------------------------------------------


def _palette_lut(colors: Mapping[str, RGB]) -> np.ndarray:
    """(256, 3) float32 colour per label id; unknown ids are mid grey."""
    lut = np.full((256, 3), 110.0, dtype=np.float32)
    for name, rgb in colors.items():
        lut[_LABELS.by_name(name).id] = rgb
    return lut


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """(H, W) float32 noise, roughly N(0, 1), varying over ``cell`` pixels."""
    gh, gw = int(height / cell) + 2, int(width / cell) + 2
    coarse = Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32))
    return np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def _ground_coords(view: View, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Road-plane (x, z) in metres of every pixel, (H, W) float32 each; z is a huge
    constant at and above the horizon."""
    rows = np.arange(height, dtype=np.float32)[:, None] - view.horizon
    cols = np.arange(width, dtype=np.float32)[None, :] - view.center
    z = np.where(rows > 0.5, view.focal * view.camera_height / np.maximum(rows, 0.5), 1e6)
    x = cols * z / view.focal
    return x.astype(np.float32), z.astype(np.float32)


class _Painter:
    """Renders one photo in place: ``img`` is (H, W, 3) float32 in [0, 255]."""

    def __init__(self, labels: np.ndarray, view: View, style: Style,
                 rng: np.random.Generator) -> None:
        self.labels, self.view, self.style, self.rng = labels, view, style, rng
        self.h, self.w = labels.shape
        self.rows = np.arange(self.h, dtype=np.float32)[:, None]
        self.cols = np.arange(self.w, dtype=np.float32)[None, :]
        self.gx, self.gz = _ground_coords(view, self.h, self.w)

    def mask(self, name: str) -> np.ndarray:
        """(H, W) bool pixels of label ``name``."""
        return self.labels == _LABELS.by_name(name).id

    def shade(self, img: np.ndarray, where: np.ndarray, factor: float | np.ndarray,
              tint: RGB | None = None, mix: float = 0.0) -> None:
        """Multiply ``img`` at ``where`` by ``factor`` and blend ``mix`` of ``tint`` in."""
        if not where.any():
            return
        f = factor[where][:, None] if isinstance(factor, np.ndarray) else factor
        px = img[where] * f
        if tint is not None:
            px = (1 - mix) * px + mix * np.asarray(tint, dtype=np.float32)
        img[where] = px

    # -- stuff textures --------------------------------------------------------------

    def sky(self, img: np.ndarray) -> None:
        m = self.mask("sky")
        glow = np.clip(self.rows / max(self.view.horizon, 1.0), 0, 1) ** 2
        glow = np.broadcast_to(glow, (self.h, self.w))
        self.shade(img, m, 1.0 + 0.25 * glow)
        clouds = _smooth_noise(self.rng, self.h, self.w, self.w / 10) > 0.7
        self.shade(img, m & clouds, 1.0, (240, 240, 240), 0.5)

    def building(self, img: np.ndarray) -> None:
        m = self.mask("building")
        p = self.w * self.rng.uniform(0.018, 0.03)
        q = p * self.rng.uniform(1.0, 1.5)
        u, v = self.cols % p, self.rows % q
        if self.style.windows == "grid":
            pane = (u < 0.55 * p) & (v < 0.5 * q)
            self.shade(img, m & pane, 0.55, self.style.glass, 0.35)
        else:
            band = np.broadcast_to(v < 0.3 * q, (self.h, self.w))
            self.shade(img, m & band, 1.3)
        blocks = _smooth_noise(self.rng, self.h, self.w, self.w / 12)
        self.shade(img, m, 1.0 + 0.12 * blocks)

    def road(self, img: np.ndarray) -> None:
        m = self.mask("road")
        gx, gz = self.gx, self.gz
        width = np.maximum(0.07, 0.6 * gz / self.view.focal)
        if self.style.road_marks == "dashes":
            marks = np.zeros_like(m)
            for c in (-1.75, -5.25):
                marks |= (np.abs(gx - c) < width) & (gz % 9.0 < 3.5)
        else:
            z0 = self.rng.uniform(9.0, 20.0)
            marks = (gz > z0) & (gz < z0 + 4.0) & (gx % 1.2 < 0.6)
            marks |= np.abs(gx - 1.5) < width
        self.shade(img, m & marks, 1.0, (225, 225, 215), 0.8)
        self.shade(img, m, 1.0 + 0.08 * _smooth_noise(self.rng, self.h, self.w, 3.0))

    def sidewalk(self, img: np.ndarray) -> None:
        m = self.mask("sidewalk") & (self.gz < 30.0)
        t = self.style.tile_size
        offset = 0.5 * t * (np.floor(self.gz / t) % 2) if self.style.name == "source" else 0.0
        joint = ((self.gx + offset) % t < 0.07 * t) | (self.gz % t < 0.07 * t)
        self.shade(img, m & joint, 0.75)

    def vegetation(self, img: np.ndarray) -> None:
        m = self.mask("vegetation")
        cell = max(1.5, self.w * self.style.leaf_cell)
        leaves = _smooth_noise(self.rng, self.h, self.w, cell)
        self.shade(img, m, 1.0 + 0.3 * np.tanh(leaves))
        self.shade(img, m & (leaves > 1.0), 1.0, (150, 180, 90), 0.25)

    def terrain(self, img: np.ndarray) -> None:
        m = self.mask("terrain")
        grain = self.rng.normal(0.0, 0.08, (self.h, self.w)).astype(np.float32)
        patches = _smooth_noise(self.rng, self.h, self.w, self.w / 20)
        self.shade(img, m, 1.0 + grain + 0.1 * patches)

    def fence(self, img: np.ndarray) -> None:
        m = self.mask("fence")
        p = max(3.0, self.w / 120)
        if self.style.windows == "grid":
            bars = np.broadcast_to(self.cols % p < 0.4 * p, (self.h, self.w))
        else:
            bars = ((self.cols + self.rows) % p < 0.3 * p) | ((self.cols - self.rows) % p < 0.3 * p)
        self.shade(img, m & bars, 0.6)

    def wall(self, img: np.ndarray) -> None:
        m = self.mask("wall")
        q = max(3.0, self.h / 60)
        self.shade(img, m & np.broadcast_to(self.rows % q < 1.0, (self.h, self.w)), 0.8)

    def rail_track(self, img: np.ndarray) -> None:
        m = self.mask("rail track")
        sleepers = np.abs(self.gx % 0.7) < 0.25
        self.shade(img, m & sleepers, 0.6)

    def ego_vehicle(self, img: np.ndarray) -> None:
        m = self.mask("ego vehicle")
        gloss = 1.0 + 0.6 * np.exp(-(((self.cols - self.w / 2) / (0.2 * self.w)) ** 2))
        self.shade(img, m, np.broadcast_to(gloss, (self.h, self.w)))

    # -- things ----------------------------------------------------------------------

    def things(self, img: np.ndarray, instances: np.ndarray) -> None:
        """Per-instance body colour, then parts (windows, wheels, head, legs)."""
        ids, inverse = np.unique(instances, return_inverse=True)
        inverse = inverse.reshape(instances.shape)
        for k, box in enumerate(ndimage.find_objects(inverse + 1)):
            seg = int(ids[k])
            label = _LABELS.by_id.get(seg // 1000 if seg >= 1000 else seg)
            if box is None or label is None or not label.isthing:
                continue
            patch, m = img[box], inverse[box] == k
            self.instance(patch, m, label.name)

    def instance(self, patch: np.ndarray, m: np.ndarray, name: str) -> None:
        """Paint one instance (or crowd group) into ``patch`` (h, w, 3) at mask ``m``."""
        rng, style = self.rng, self.style
        h, w = m.shape
        ry = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
        rx = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w
        colors = style.instance_colors[name]
        body = np.asarray(colors[rng.integers(len(colors))], np.float32) + rng.normal(0, 10, 3)
        patch[m] = body
        if name in ("person", "rider"):
            pants = np.asarray(_CLOTHES[rng.integers(len(_CLOTHES))], np.float32)
            skin = np.asarray(style.skin[rng.integers(len(style.skin))], np.float32)
            patch[m & (ry > 0.55)] = pants
            patch[m & (ry < 0.14)] = skin
        elif name in ("bicycle", "motorcycle"):
            for cx in (0.18, 0.82):
                d = ((rx - cx) / 0.2) ** 2 + ((ry - 0.68) / 0.32) ** 2
                patch[m & (d < 1.0) & (d > 0.45)] = (20, 20, 22)
        else:
            band = {"car": (0.08, 0.42, 0.12), "bus": (0.1, 0.45, 0.05), "train": (0.3, 0.55, 0.03),
                    "caravan": (0.25, 0.5, 0.3)}.get(name)
            if band is not None:
                lo, hi, inset = band
                glass = m & (ry > lo) & (ry < hi) & (rx > inset) & (rx < 1 - inset)
                patch[glass] = 0.7 * np.asarray(style.glass, np.float32) + 0.3 * patch[glass]
            if name == "truck":
                stripe = m & (ry > 0.35) & (ry < 0.45)
                patch[stripe] = patch[stripe] * 0.6
            patch[m & (ry > 0.88)] *= 0.3
        patch *= np.where(m, 1.0 + 0.25 * (0.5 - ry), 1.0)[..., None]  # lit from above


def render_image(label_ids: np.ndarray, instance_ids: np.ndarray, *, style: str = "target",
                 rng: np.random.Generator | None = None, view: View | None = None) -> np.ndarray:
    """Render a street photo from Cityscapes label and instance maps.

    Args:
        label_ids: (H, W) uint8 Cityscapes label ids.
        instance_ids: (H, W) integer Cityscapes instance ids (``labelId*1000+k`` for
            thing instances, the label id for stuff and crowd groups).
        style: ``"target"`` or ``"source"``.
        rng: randomness for colours and noise (default: seeded with 0).
        view: camera of the image, so road marks and tiles follow the perspective
            (default: the style's camera without jitter).

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    cfg = _get_style(style)
    rng = np.random.default_rng(0) if rng is None else rng
    h, w = label_ids.shape
    view = _default_view(cfg, h, w) if view is None else view
    labels = label_ids.astype(np.uint8)
    img = _palette_lut(cfg.palette)[labels]
    painter = _Painter(labels, view, cfg, rng)
    for texture in (painter.sky, painter.building, painter.road, painter.sidewalk,
                    painter.vegetation, painter.terrain, painter.fence, painter.wall,
                    painter.rail_track, painter.ego_vehicle):
        texture(img)
    painter.things(img, instance_ids)
    tint = rng.normal(0.0, 0.04, 3).astype(np.float32)
    slope_x, slope_y = rng.uniform(-0.2, 0.2, 2)
    light = 1.0 + slope_x * (painter.cols / w - 0.5) + slope_y * (painter.rows / h - 0.5)
    img *= (light * rng.uniform(0.85, 1.15))[..., None] * (1.0 + tint)
    img += rng.normal(0.0, cfg.noise_sigma, img.shape).astype(np.float32)
    photo = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return np.asarray(photo.filter(ImageFilter.GaussianBlur(cfg.blur * w / 512)))


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def city_names(split: str) -> tuple[str, str]:
    """Two invented city names for ``split`` (lowercase letters only)."""
    if split in _CITIES:
        return tuple(_CITIES[split])  # type: ignore[return-value]
    rng = np.random.default_rng(zlib.crc32(split.encode()))
    names = ["".join(rng.choice(_SYLLABLES, 3)) + suffix for suffix in ("burg", "dal")]
    return names[0], names[1]


def _image_rng(seed: int, split: str, index: int, style: str) -> np.random.Generator:
    """Generator for one image, from (seed, split, index) and the style's domain."""
    entropy = [seed, zlib.crc32(split.encode()), index, zlib.crc32(style.encode())]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _write_sample(root: Path, split: str, city: str, seq: int, polygons: dict, view: View,
                  style: str, rng: np.random.Generator) -> Path:
    """Write the polygons JSON, the three gtFine PNGs and the photo of one image."""
    stem = f"{city}_{seq:06d}_{FRAME:06d}"
    gt_dir = root / "gtFine" / split / city
    img_dir = root / "leftImg8bit" / split / city
    gt_dir.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)

    json_path = gt_dir / f"{stem}_gtFine_polygons.json"
    json_path.write_text(json.dumps(polygons, indent=4) + "\n")
    annotation = Annotation()
    annotation.fromJsonFile(str(json_path))  # rasterise exactly what the file says
    label_img = createLabelImage(annotation, "ids")
    instance_img = createInstanceImage(annotation, "ids")
    label_img.save(gt_dir / f"{stem}_gtFine_labelIds.png")
    # createInstanceImage returns a 32-bit "I" image; Cityscapes stores 16 bits.
    instances = np.asarray(instance_img, dtype=np.int32)
    Image.fromarray(instances.astype(np.uint16)).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
    createLabelImage(annotation, "color").save(gt_dir / f"{stem}_gtFine_color.png")

    photo = render_image(np.asarray(label_img), instances, style=style, rng=rng, view=view)
    photo_path = img_dir / f"{stem}_leftImg8bit.png"
    Image.fromarray(photo).save(photo_path, compress_level=1)  # noisy photos barely compress
    return photo_path


def generate_city(root: Path, *, split_sizes: Mapping[str, int] = DEFAULT_SPLITS,
                  height: int = 256, width: int = 512, seed: int = 0,
                  style: str = "target") -> list[Path]:
    """Write a synthetic city under ``root`` in the exact Cityscapes layout.

    Args:
        root: dataset root; ``leftImg8bit/`` and ``gtFine/`` are created inside.
        split_sizes: number of images per split; each split's images are spread over
            two cities of its own.
        height, width: image size in pixels (at least 32 each).
        seed: base seed; every image draws from (seed, split, index, style), so files
            are byte-identical for the same arguments.
        style: ``"target"`` or ``"source"`` (another visual domain, same labels).

    Returns:
        The written ``*_leftImg8bit.png`` paths, split by split in index order.
    """
    cfg = _get_style(style)
    if height < 32 or width < 32:
        raise ValueError(f"image size must be at least 32x32; got {height}x{width}")
    if any(n < 0 for n in split_sizes.values()):
        raise ValueError(f"split sizes must be >= 0; got {dict(split_sizes)}")
    root = Path(root)
    written = []
    for split, n in split_sizes.items():
        cities = city_names(split)
        for index in range(n):
            city_idx = index * len(cities) // n
            seq = index - math.ceil(city_idx * n / len(cities))
            rng = _image_rng(seed, split, index, style)
            polygons, view = compose_scene(rng, height, width, cfg, index)
            city = cities[city_idx]
            written.append(_write_sample(root, split, city, seq, polygons, view, style, rng))
    return written
