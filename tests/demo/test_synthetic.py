"""Generated dataset: deterministic by seed, ImageNet layout, learnable classes, safe concurrent creation."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from burn.data.lists import validate_dataset
from burn.demo.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[2]


def _digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.process
def test_cli_output_is_byte_identical_for_a_seed(tiny_data, tmp_path):
    again = tmp_path / "again"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "burn.demo.synthetic",
            "--out",
            str(again),
            "--classes",
            "10",
            "--per-class",
            "40",
            "--val-per-class",
            "10",
            "--size",
            "48",
            "--seed",
            "0",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    reference = _digest(tiny_data)
    assert len(reference) == 500 + 6  # JPEGs + three lists + the 1% and 10% subsets + synthetic.json
    assert _digest(again) == reference


def test_other_seed_gives_other_images(tmp_path):
    a = generate_dataset(tmp_path / "a", classes=2, per_class=3, val_per_class=1, size=32, seed=0)
    b = generate_dataset(tmp_path / "b", classes=2, per_class=3, val_per_class=1, size=32, seed=1)
    jpegs = sorted(p.relative_to(a) for p in a.rglob("*.JPEG"))
    assert jpegs == sorted(p.relative_to(b) for p in b.rglob("*.JPEG"))
    assert all((a / p).read_bytes() != (b / p).read_bytes() for p in jpegs)


@pytest.mark.process
def test_tree_is_a_valid_imagenet_layout(tiny_data, make_cfg):
    lists = validate_dataset(make_cfg(tiny_data), splits=("train", "train_labeled", "val"))
    assert lists["train"].paths == lists["train_labeled"].paths
    with Image.open(tiny_data / "train" / lists["train"].paths[0]) as image:
        assert image.format == "JPEG" and image.size == (48, 48)


def _features(root: Path, listing: str, split: str):
    features, labels = [], []
    for line in (root / "meta" / listing).read_text().splitlines():
        path, label = line.split()
        with Image.open(root / split / path) as image:
            features.append(np.asarray(image.convert("RGB").resize((8, 8), Image.BOX), np.float32).ravel())
        labels.append(int(label))
    return np.stack(features), np.array(labels)


@pytest.mark.process
def test_classes_are_learnable_but_not_by_colour_alone(tiny_data):
    """Nearest class mean on 8x8 thumbnails is well above chance (the classes have structure), yet far
    from solved (pose, scale, background and shared colours have to be looked past)."""
    x_train, y_train = _features(tiny_data, "train_labeled.txt", "train")
    x_val, y_val = _features(tiny_data, "val_labeled.txt", "val")
    means = np.stack([x_train[y_train == c].mean(0) for c in range(10)])
    accuracy = (((x_val[:, None] - means[None]) ** 2).sum(-1).argmin(1) == y_val).mean()
    assert 0.2 < accuracy < 0.8


_RACE = """
import sys
from omegaconf import OmegaConf
from burn.config import DataConfig, SyntheticConfig
from burn.demo.synthetic import ensure_synthetic
cfg = OmegaConf.structured(DataConfig(root=sys.argv[1], synthetic=SyntheticConfig(
    generate=True, classes=3, per_class=4, val_per_class=2, size=32, seed=3)))
print(ensure_synthetic(cfg))
"""


@pytest.mark.process
def test_concurrent_ensure_synthetic_yields_one_complete_tree(tmp_path):
    root = tmp_path / "nested" / "synthetic"
    racers = [
        subprocess.Popen([sys.executable, "-c", _RACE, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [racer.communicate(timeout=120)[0].strip() for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 4
    assert set(outputs) == {str(root)}
    assert len(list(root.rglob("*.JPEG"))) == 3 * (4 + 2)
    assert [p.name for p in root.parent.iterdir()] == ["synthetic"]  # no temporary folders left behind
    reference = generate_dataset(tmp_path / "reference", classes=3, per_class=4, val_per_class=2, size=32, seed=3)
    assert _digest(root) == _digest(reference)
