"""The demo's tests read the generated tree with the data tests' config helper, and make small image
folders of mixed sizes (a user's own images) or of garbage files (nothing may read them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from burn.demo.synthetic import render_image
from tests.data.conftest import make_cfg  # noqa: F401  (a fixture, re-exported)

#: (width, height) of the images of a mixed folder, in turn: larger, smaller, wider, taller, the load side.
MIXED_SIZES = ((64, 64), (40, 40), (72, 50), (45, 60), (48, 48))


def write_mixed_folder(root: Path, classes: int = 2, per_class: int = 10, val_per_class: int = 3) -> Path:
    """A user's class folders without lists: ``train/<class>/`` and ``val/<class>/`` holding JPEGs and
    PNGs of the sizes in :data:`MIXED_SIZES` (one of them grey), drawn by the generator's classes so a
    teacher can learn them. Returns `root`."""
    for split, (folder, count) in enumerate((("train", per_class), ("val", val_per_class))):
        for label in range(classes):
            (root / folder / f"class{label}").mkdir(parents=True, exist_ok=True)
            for index in range(count):
                width, height = MIXED_SIZES[index % len(MIXED_SIZES)]
                image = Image.fromarray(render_image(0, label, split, index, max(width, height)))
                image = image.resize((width, height), Image.BILINEAR)
                if index % 4 == 1:
                    image = image.convert("L")
                suffix = "png" if index % 2 else "jpg"
                image.save(root / folder / f"class{label}" / f"{index:03d}.{suffix}")
    return root


def write_garbage_folder(root: Path, classes: int = 2, per_class: int = 6, val_per_class: int = 2) -> Path:
    """Class folders of files named like images that hold no image: any decoder that reads one fails."""
    for folder, count in (("train", per_class), ("val", val_per_class)):
        for label in range(classes):
            (root / folder / f"class{label}").mkdir(parents=True, exist_ok=True)
            for index in range(count):
                (root / folder / f"class{label}" / f"{index:03d}.JPEG").write_bytes(b"not an image\n" * 8)
    return root


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    return write_mixed_folder(tmp_path / "mine")


@pytest.fixture
def garbage_folder(tmp_path) -> Path:
    return write_garbage_folder(tmp_path / "garbage")
