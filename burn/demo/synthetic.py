"""A generated ImageNet-style dataset of real JPEGs with learnable classes (demo, tests, benchmarks).

    python -m burn.demo.synthetic --out DIR --classes K --per-class N --size S [--val-per-class M] [--seed 0]

Each class has its own shape, surface texture and colour; every image varies the nuisances (position,
scale, rotation, background colour and gradient, pixel noise, a small colour shift), so a linear
classifier on good features beats chance by far and one on raw pixels does not do it trivially.
The same arguments give byte-identical files. Layout: ``train/<class>/<file>.JPEG``,
``val/<class>/<file>.JPEG`` and ``meta/{train,train_labeled,val_labeled}.txt`` with paths relative to
the split folder, as in the original release, the class-balanced labelled subsets
``meta/train_labeled_{1,10}pct.txt`` (burn/data/prepare.py's draw, at least one image per class) for
fine-tuning, plus ``meta/synthetic.json`` (the arguments).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from burn.data.lists import dataset_root
from burn.runtime.files import umask_mode

log = logging.getLogger(__name__)

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "star", "bar")
TEXTURES = ("solid", "stripes", "checker", "dots")
_SUPERSAMPLE = 4  # shapes are drawn larger and reduced: smooth edges


def _class_style(seed: int, label: int) -> dict:
    """Shape, texture (with its frequency and angle) and hue of a class. Hues come from five bins
    shared between classes, so no single attribute (colour, shape, texture) names the class."""
    rng = np.random.default_rng([seed, 7919, label])
    return {
        "shape": SHAPES[label % len(SHAPES)],
        "texture": TEXTURES[(label // len(SHAPES)) % len(TEXTURES)],
        "frequency": rng.uniform(3.0, 6.0),
        "angle": rng.uniform(0, np.pi),
        "hue": ((label * 3) % 5 / 5 + rng.uniform(-0.04, 0.04)) % 1.0,
    }


def _polygon(shape: str, center: np.ndarray, radius: float, rotation: float) -> list:
    """Vertices of a polygonal shape (ellipse-based shapes return a bounding box)."""
    corners = {"square": 4, "triangle": 3, "diamond": 4}
    if shape in corners:
        angles = (
            rotation + (np.pi / 4 if shape == "square" else 0) + 2 * np.pi * np.arange(corners[shape]) / corners[shape]
        )
        scale = np.array([1.0, 1.6]) if shape == "diamond" else np.array([1.0, 1.0])
        points = np.stack([np.cos(angles), np.sin(angles) * scale[1] / scale[0]], axis=1)
    elif shape == "star":
        angles = rotation + np.pi * np.arange(10) / 5
        points = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.where(np.arange(10) % 2, 0.45, 1.0)[:, None]
    else:  # cross and bar: rectangles
        half = [(1.0, 0.3), (0.3, 1.0)] if shape == "cross" else [(1.0, 0.35)]
        return [_rectangle(center, radius, rotation, w, h) for w, h in half]
    return [[tuple(p) for p in center + radius * points]]


def _rectangle(center, radius, rotation, half_w, half_h) -> list:
    box = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    turn = np.array([[np.cos(rotation), -np.sin(rotation)], [np.sin(rotation), np.cos(rotation)]])
    return [tuple(p) for p in center + radius * box @ turn.T]


def _shape_mask(shape: str, size: int, center: np.ndarray, radius: float, rotation: float) -> np.ndarray:
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    c, r = center * _SUPERSAMPLE, radius * _SUPERSAMPLE
    if shape in ("disc", "ring"):
        draw.ellipse([tuple(c - r), tuple(c + r)], fill=255)
        if shape == "ring":
            draw.ellipse([tuple(c - 0.55 * r), tuple(c + 0.55 * r)], fill=0)
    else:
        for polygon in _polygon(shape, c, r, rotation):
            draw.polygon(polygon, fill=255)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32)[..., None] / 255.0


def _texture(style: dict, size: int, rotation: float) -> np.ndarray:
    """Brightness pattern in [0.45, 1] of the object's surface, turning with the object."""
    if style["texture"] == "solid":
        return np.ones((size, size, 1), np.float32)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = style["angle"] + rotation
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    f = style["frequency"] * 2
    if style["texture"] == "stripes":
        pattern = np.sin(2 * np.pi * f * u) > 0
    elif style["texture"] == "checker":
        pattern = (np.floor(f * u) + np.floor(f * v)) % 2 == 0
    else:
        pattern = (np.sin(2 * np.pi * f * u) * np.sin(2 * np.pi * f * v)) > 0.35
    return np.where(pattern, 1.0, 0.45).astype(np.float32)[..., None]


def render_image(seed: int, label: int, split: int, index: int, size: int) -> np.ndarray:
    """One HxWx3 uint8 image of class ``label``; a pure function of its arguments."""
    style = _class_style(seed, label)
    rng = np.random.default_rng([seed, split, label, index])
    radius = size * rng.uniform(0.2, 0.38)
    center = rng.uniform(radius * 0.8, size - radius * 0.8, size=2)
    rotation = rng.uniform(0, 2 * np.pi)
    hue = (style["hue"] + rng.uniform(-0.05, 0.05)) % 1.0
    color = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 0.95), rng.uniform(0.7, 1.0)), np.float32)
    background = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.35), rng.uniform(0.2, 0.8)), np.float32)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    slope = rng.normal(0, 0.25, size=2)
    gradient = (slope[0] * (x - 0.5) + slope[1] * (y - 0.5))[..., None]
    mask = _shape_mask(style["shape"], size, center, radius, rotation)
    surface = color * _texture(style, size, rotation)
    image = (background + gradient) * (1 - mask) + surface * mask
    image = image * 255 + rng.normal(0, 6, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _class_names(classes: int) -> list:
    width = max(3, len(str(classes - 1)))
    return [f"c{label:0{width}d}" for label in range(classes)]


def generate_dataset(
    out: Path, *, classes: int, per_class: int, val_per_class: int, size: int, seed: int = 0, quality: int = 90
) -> Path:
    """Write the dataset into ``out`` (created; must not hold files yet). Returns ``out``."""
    if classes < 1 or per_class < 1 or val_per_class < 0 or size < 8:
        raise ValueError("need classes >= 1, per_class >= 1, val_per_class >= 0 and size >= 8")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    names = _class_names(classes)
    lists = {"train": [], "val": []}
    for split, (folder, count) in enumerate((("train", per_class), ("val", val_per_class))):
        for label, name in enumerate(names):
            (out / folder / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                relative = f"{name}/{name}_{folder}_{index:05d}.JPEG"
                pixels = render_image(seed, label, split, index, size)
                Image.fromarray(pixels).save(out / folder / relative, "JPEG", quality=quality)
                lists[folder].append((relative, label))
    meta = out / "meta"
    meta.mkdir()
    (meta / "train.txt").write_text("".join(f"{p}\n" for p, _ in lists["train"]))
    (meta / "train_labeled.txt").write_text("".join(f"{p} {label}\n" for p, label in lists["train"]))
    (meta / "val_labeled.txt").write_text("".join(f"{p} {label}\n" for p, label in lists["val"]))
    write_labeled_subsets(out)
    params = {
        "classes": classes,
        "per_class": per_class,
        "val_per_class": val_per_class,
        "size": size,
        "seed": seed,
        "quality": quality,
    }
    (meta / "synthetic.json").write_text(json.dumps(params, sort_keys=True) + "\n")
    return out


#: The labelled fractions whose subsets a generated dataset carries (the paper's semi-supervised 1% and 10%).
LABELED_FRACTIONS = (0.01, 0.1)


def write_labeled_subsets(root: Path, fractions: Sequence[float] = LABELED_FRACTIONS, seed: int = 0) -> list[Path]:
    """``meta/train_labeled_<100F>pct.txt`` from ``meta/train_labeled.txt``: the same class-balanced draw as
    ``python -m burn.data.prepare --labeled-fraction`` (also for a dataset generated before they were
    written). Returns the files written."""
    from burn.data.prepare import labeled_subset, subset_name

    meta = Path(root) / "meta"
    lines = [line.split() for line in (meta / "train_labeled.txt").read_text().splitlines() if line.strip()]
    label_of = {path.split("/", 1)[0]: int(label) for path, label in lines}
    images: dict[str, list[str]] = {}
    for path, _ in lines:
        folder, name = path.split("/", 1)
        images.setdefault(folder, []).append(name)
    written = []
    for fraction in fractions:
        chosen, _ = labeled_subset(images, fraction, seed)
        text = "".join(f"{folder}/{name} {label_of[folder]}\n" for folder in sorted(chosen) for name in chosen[folder])
        path = meta / subset_name(fraction)
        path.write_text(text)
        written.append(path)
    return written


def generate_atomically(root: Path, **params) -> bool:
    """Generate into a temporary folder beside ``root`` and rename it into place. Several processes may
    race: the first rename wins, the others discard their copy. True when this call's copy won."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    os.chmod(scratch, umask_mode(0o777))  # mkdtemp makes it private; the dataset is not
    try:
        generate_dataset(scratch, **params)
        os.rename(scratch, root)  # atomic; fails when another process's tree is already there
        return True
    except OSError:
        if not root.is_dir():
            raise
        return False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ensure_synthetic(data_cfg) -> Path:
    """Generate ``data_cfg.root`` from ``data_cfg.synthetic`` when ``synthetic.generate`` is set and the
    root is absent (or an empty folder). Safe when several ranks call it at once. Returns the root."""
    root = dataset_root(data_cfg)
    spec = data_cfg.synthetic
    params = {
        "classes": int(spec.classes),
        "per_class": int(spec.per_class),
        "val_per_class": int(spec.val_per_class),
        "size": int(spec.size),
        "seed": int(spec.seed),
    }
    if not spec.generate:
        return root
    if root.is_dir() and any(root.iterdir()):
        _warn_if_different(root, params)
        return root
    if generate_atomically(root, **params):
        log.info("generated the synthetic dataset in %s", root)
    return root


def _warn_if_different(root: Path, params: dict) -> None:
    recorded = root / "meta" / "synthetic.json"
    if recorded.is_file():
        saved = json.loads(recorded.read_text())
        changed = {k: (saved.get(k), v) for k, v in params.items() if saved.get(k) != v}
        if changed:
            log.warning(
                "%s was generated with other settings (%s); using it as it is. Delete it to regenerate.",
                root,
                ", ".join(f"{k}: {a} there, {b} asked" for k, (a, b) in changed.items()),
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m burn.demo.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="dataset root to create")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=40, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=10, help="validation images per class")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    args = parser.parse_args(argv)
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.error(f"{args.out} exists and is not an empty folder")
    generate_atomically(
        args.out,
        classes=args.classes,
        per_class=args.per_class,
        val_per_class=args.val_per_class,
        size=args.size,
        seed=args.seed,
        quality=args.quality,
    )
    count = args.classes * (args.per_class + args.val_per_class)
    print(f"wrote {count} JPEGs ({args.classes} classes, {args.size} px) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
