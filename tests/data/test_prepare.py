"""burn.data.prepare on mini ImageNet-shaped trees generated here: the three validation layouts give the
same lists, the labelled subsets are balanced and reproducible, bad trees are refused, and the suite
trains from the lists."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from burn.data.lists import validate_dataset
from burn.data.prepare import main as prepare_main
from burn.demo.synthetic import render_image

# Real WNIDs (tench, goldfish, great white shark, tiger shark); devkit ids deliberately not in sorted
# order, as in the real meta.mat, so reading them by position would mislabel.
SYNSETS = ["n01440764", "n01443537", "n01484850", "n01491361"]
DEVKIT_ID = {"n01440764": 3, "n01443537": 1, "n01484850": 4, "n01491361": 2}
TRAIN_COUNTS = [6, 7, 8, 9]
LISTS = ("train.txt", "train_labeled.txt", "val_labeled.txt")


def _jpeg(path: Path, label: int, index: int, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_image(0, label, 0, index, size)).save(path, "JPEG", quality=85)


def write_meta_mat(path: Path, ids: dict) -> None:
    """A devkit-shaped meta.mat: a (N, 1) ``synsets`` struct array with the devkit's fields, leaves plus
    one inner node (num_children > 0, id above the leaves) that labels no image."""
    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    rows = [(synset_id, wnid, 0) for wnid, synset_id in ids.items()] + [(len(ids) + 1, "n01439121", len(ids))]
    synsets = np.zeros((len(rows), 1), dtype=[(name, "O") for name in fields])
    for i, (synset_id, wnid, children) in enumerate(rows):
        synsets[i, 0] = (
            np.array([[synset_id]], np.uint16),
            np.array([wnid]),
            np.array([f"words {wnid}"]),
            np.array(["gloss"]),
            np.array([[children]], np.uint8),
            np.arange(1, children + 1, dtype=np.uint16)[None, :],
            np.array([[0]], np.uint8),
            np.array([[1300]], np.uint16),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"synsets": synsets})


def make_imagenet(root: Path, layout: str, train_counts=TRAIN_COUNTS, val_per_class: int = 2, size: int = 16) -> dict:
    """train/<wnid>/<wnid>_<n>.JPEG and a val split in ``layout`` ("folders", "loc" or "devkit"); returns
    {val image id: wnid}, the ground truth the lists must reproduce."""
    for label, (wnid, count) in enumerate(zip(SYNSETS, train_counts)):
        for index in range(count):
            _jpeg(root / "train" / wnid / f"{wnid}_{1000 + index * 37}.JPEG", label, index, size)
    rng = np.random.default_rng(5)
    classes = rng.permutation(np.repeat(np.arange(len(SYNSETS)), val_per_class))  # interleaved, as in ILSVRC
    truth = {f"ILSVRC2012_val_{i:08d}": SYNSETS[c] for i, c in enumerate(classes, 1)}
    for index, (image_id, wnid) in enumerate(truth.items()):
        folder = root / "val" / wnid if layout == "folders" else root / "val"
        _jpeg(folder / f"{image_id}.JPEG", SYNSETS.index(wnid), 100 + index, size)
    if layout == "loc":
        (root / "LOC_val_solution.csv").write_text(
            "ImageId,PredictionString\n"
            + "".join(f"{i},{w} 10 12 40 44 {w} 3 4 20 21 \n" for i, w in reversed(list(truth.items())))
        )
    elif layout == "devkit":
        data = root / "ILSVRC2012_devkit_t12" / "data"
        write_meta_mat(data / "meta.mat", DEVKIT_ID)
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
            "".join(f"{DEVKIT_ID[w]}\n" for w in truth.values())
        )
    return truth


def run(capsys, *args) -> tuple:
    code = prepare_main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree_snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and "meta" not in p.parts
    }


@pytest.mark.parametrize("layout", ["folders", "loc", "devkit"])
def test_each_layout_gives_the_original_lists(tmp_path, capsys, make_cfg, layout):
    root = tmp_path / "imagenet"
    truth = make_imagenet(root, layout)
    before = tree_snapshot(root)
    code, out, err = run(capsys, "--root", root)
    assert code == 0, err
    assert tree_snapshot(root) == before  # nothing moved, renamed, copied or touched
    assert f"train: 4 classes, {sum(TRAIN_COUNTS)} images" in out and "val:   8 images" in out
    meta = root / "meta"
    train = (meta / "train_labeled.txt").read_text().splitlines()
    assert (meta / "train.txt").read_text().splitlines() == [line.split()[0] for line in train]
    for line in train:  # labels are positions in sorted synset order
        path, label = line.split()
        assert path.split("/")[0] == SYNSETS[int(label)] and (root / "train" / path).is_file()
    val = [line.split() for line in (meta / "val_labeled.txt").read_text().splitlines()]
    assert {Path(p).stem: SYNSETS[int(label)] for p, label in val} == truth
    lists = validate_dataset(make_cfg(root), ("train", "train_labeled", "val"))  # what training reads
    assert len(lists["val"]) == 8 and lists["train_labeled"].num_classes == 4


def test_the_three_layouts_give_identical_lists(tmp_path, capsys):
    texts = {}
    for layout in ("folders", "loc", "devkit"):
        root = tmp_path / layout
        make_imagenet(root, layout)
        assert run(capsys, "--root", root)[0] == 0
        texts[layout] = {name: (root / "meta" / name).read_text() for name in LISTS}
    assert texts["loc"] == texts["devkit"]
    folders = texts["folders"]
    assert {k: v for k, v in folders.items() if k != "val_labeled.txt"} == {
        k: v for k, v in texts["loc"].items() if k != "val_labeled.txt"
    }
    # class-folder val paths carry their folder; otherwise the same lines in the same order
    stripped = "".join(line.split("/", 1)[1] + "\n" for line in folders["val_labeled.txt"].splitlines())
    assert stripped == texts["loc"]["val_labeled.txt"]


def test_ground_truth_from_options(tmp_path, capsys):
    root = tmp_path / "imagenet"
    truth = make_imagenet(root, "devkit")
    kit = tmp_path / "elsewhere"
    shutil.move(str(root / "ILSVRC2012_devkit_t12"), kit)
    assert "no ground truth was found" in run(capsys, "--root", root)[2]
    code, _, err = run(
        capsys,
        "--root",
        root,
        "--ground-truth",
        kit / "data/ILSVRC2012_validation_ground_truth.txt",
        "--meta-mat",
        kit / "data/meta.mat",
        "--out",
        tmp_path / "lists",
    )
    assert code == 0, err
    val = [line.split() for line in (tmp_path / "lists/val_labeled.txt").read_text().splitlines()]
    assert {Path(p).stem: SYNSETS[int(label)] for p, label in val} == truth
    assert run(capsys, "--root", root, "--devkit", kit, "--out", tmp_path / "again")[0] == 0
    assert (tmp_path / "again/val_labeled.txt").read_text() == (tmp_path / "lists/val_labeled.txt").read_text()


def _subset(path: Path) -> list:
    return [line.split() for line in path.read_text().splitlines()]


def test_labeled_subsets_are_balanced_seeded_and_nested(tmp_path, capsys):
    root = tmp_path / "imagenet"
    make_imagenet(root, "folders", train_counts=[40, 44, 52, 60])
    code, out, err = run(capsys, "--root", root, "--labeled-fraction", "0.1", "0.25")
    assert code == 0, err
    meta = root / "meta"
    labeled = {p: label for p, label in _subset(meta / "train_labeled.txt")}
    subsets = {}
    for name, per_class in (("train_labeled_10pct.txt", 5), ("train_labeled_25pct.txt", 12)):  # 196 images
        rows = _subset(meta / name)
        assert all(labeled[p] == label for p, label in rows)  # real lines of the labelled list
        counts = np.bincount([int(label) for _, label in rows], minlength=4)
        assert counts.tolist() == [per_class] * 4, name
        assert len({p for p, _ in rows}) == len(rows)
        subsets[name] = {p for p, _ in rows}
    assert subsets["train_labeled_10pct.txt"] < subsets["train_labeled_25pct.txt"]
    first = {name: (meta / name).read_bytes() for name in subsets}
    assert run(capsys, "--root", root, "--labeled-fraction", "0.1", "0.25", "--out", tmp_path / "again")[0] == 0
    assert {name: (tmp_path / "again" / name).read_bytes() for name in subsets} == first
    assert run(capsys, "--root", root, "--labeled-fraction", "0.1", "--seed", "1", "--out", tmp_path / "seed1")[0] == 0
    assert (tmp_path / "seed1/train_labeled_10pct.txt").read_bytes() != first["train_labeled_10pct.txt"]


def test_paper_fractions_and_small_classes(tmp_path, capsys):
    root = tmp_path / "imagenet"
    make_imagenet(root, "loc", train_counts=[3, 300, 300, 300])  # 903 images: 1% -> 2, 10% -> 23 per class
    code, out, _ = run(capsys, "--root", root, "--labeled-fraction", "0.01", "0.1")
    assert code == 0
    assert len(_subset(root / "meta/train_labeled_1pct.txt")) == 8
    counts = np.bincount([int(label) for _, label in _subset(root / "meta/train_labeled_10pct.txt")])
    assert counts.tolist() == [3, 23, 23, 23]
    assert "fewer than the 23 images per class of train_labeled_10pct.txt" in out and "n01440764 (3)" in out


def test_reports_what_it_skips(tmp_path, capsys):
    root = tmp_path / "imagenet"
    make_imagenet(root, "loc")
    (root / "train/n01440764/notes.txt").write_text("x")
    (root / "train/n01443537/n01443537_9.png").write_bytes(b"\x89PNG")
    (root / "train/n01494475").mkdir()  # hammerhead: an empty class folder keeps its label id
    (root / "val/ILSVRC2012_val_00000001.xml").write_text("<annotation/>")
    (root / "LOC_val_solution.csv").open("a").write("ILSVRC2012_val_00000050,n01440764 1 2 3 4\n")
    code, out, err = run(capsys, "--root", root)
    assert code == 0, err
    assert "non-JPEG files in train/, not listed: 2" in out and "train/n01440764/notes.txt" in out
    assert "class folders of train/ without a JPEG: 1 (train/n01494475)" in out
    assert "non-JPEG files in val/, not listed: 1" in out
    assert "missing from val/: 1 (ILSVRC2012_val_00000050)" in out
    assert "5 classes, not ILSVRC-2012's 1000" in out
    text = (root / "meta/train_labeled.txt").read_text()
    assert ".png" not in text and "notes" not in text and " 4\n" not in text


def _add_val_image(root: Path, relative: str) -> None:
    _jpeg(root / "val" / relative, 0, 999, 16)


REFUSALS = {
    "val class not in train": (
        "folders",
        lambda r: _add_val_image(r, "n09999999/ILSVRC2012_val_00000099.JPEG"),
        "val/n09999999 is a class train/ does not have",
    ),
    "val image without truth": (
        "loc",
        lambda r: _add_val_image(r, "ILSVRC2012_val_00000099.JPEG"),
        "val/ILSVRC2012_val_00000099.JPEG has no ground truth in",
    ),
    "devkit image without truth": (
        "devkit",
        lambda r: _add_val_image(r, "ILSVRC2012_val_00000099.JPEG"),
        "val/ILSVRC2012_val_00000099.JPEG has no ground truth in",
    ),
    "not a synset folder": (
        "folders",
        lambda r: _jpeg(r / "train/cats/a.JPEG", 0, 0, 16),
        "train/cats is not a synset",
    ),
    "mixed val": ("folders", lambda r: _add_val_image(r, "ILSVRC2012_val_00000099.JPEG"), "mixes class folders"),
    "no ground truth": ("loc", lambda r: (r / "LOC_val_solution.csv").unlink(), "no ground truth was found"),
    "folder disagrees with truth": (
        "folders",
        lambda r: (r / "LOC_val_solution.csv").write_text(
            "ImageId,PredictionString\n" + "".join(f"{p.stem},n01440764 1 2 3 4\n" for p in r.glob("val/*/*"))
        ),
        "disagree with",
    ),
    "truth names unknown class": (
        "loc",
        lambda r: (r / "LOC_val_solution.csv").write_text(
            "ImageId,PredictionString\n" + "".join(f"{p.stem},n09999999 1 2 3 4\n" for p in r.glob("val/*"))
        ),
        "with a class train/ does not have",
    ),
    "bad devkit id": (
        "devkit",
        lambda r: (r / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").open("a").write("7\n"),
        "ILSVRC2012_validation_ground_truth.txt line 9: '7' is not an",
    ),
    "corrupt meta.mat": (
        "devkit",
        lambda r: (r / "ILSVRC2012_devkit_t12/data/meta.mat").write_bytes(b"MATLAB?"),
        "is not the devkit's meta.mat",
    ),
    "no train": ("loc", lambda r: shutil.rmtree(r / "train"), "no training folder"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_inconsistent_trees_are_refused(tmp_path, capsys, case):
    layout, spoil, message = REFUSALS[case]
    root = tmp_path / "imagenet"
    make_imagenet(root, layout)
    spoil(root)
    code, out, err = run(capsys, "--root", root)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
    assert message in err
    assert not (root / "meta").exists()  # nothing written


def test_atomic_write_keeps_old_lists_on_failure(tmp_path, capsys, monkeypatch):
    root = tmp_path / "imagenet"
    make_imagenet(root, "loc")
    assert run(capsys, "--root", root)[0] == 0
    before = {name: (root / "meta" / name).read_text() for name in LISTS}
    (root / "train/n01440764/n01440764_5.JPEG").write_bytes((root / "train/n01440764/n01440764_1000.JPEG").read_bytes())
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        prepare_main(["--root", str(root)])
    monkeypatch.setattr(os, "replace", real_replace)
    assert calls and {name: (root / "meta" / name).read_text() for name in LISTS} == before
    assert sorted(p.name for p in (root / "meta").iterdir()) == sorted(LISTS)  # no temporaries left


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """Overrides the suite's generated dataset for the ``cli`` fixture: a prepared devkit-layout tree."""
    root = tmp_path / "imagenet"
    make_imagenet(root, "devkit", train_counts=[16, 16, 16, 16], val_per_class=4, size=40)
    assert prepare_main(["--root", str(root), "--labeled-fraction", "0.5"]) == 0
    return root


@pytest.mark.slow
def test_the_suite_trains_from_prepared_lists(cli, tmp_path):
    s1, lin = tmp_path / "stage1", tmp_path / "linear"
    assert cli.run(cli.overrides(s1, "stage=1", "model.teacher_weights=null", "steps=2"), "s1") == [0], cli.log("s1")
    assert (s1 / "DONE").exists() and f"root: {cli.data_root}" in (s1 / "config.yaml").read_text()
    assert cli.data_root.name == "imagenet"  # the prepared tree, not the suite's generated dataset
    assert cli.run(
        cli.overrides(
            lin,
            "stage=linear",
            "pretrained=random",
            "linear.num_classes=4",
            "steps=2",
            "data.train_labeled_list=meta/train_labeled_50pct.txt",
        ),
        "lin",
    ) == [0], cli.log("lin")
    assert "top-1" in cli.log("lin")


def test_a_generic_class_folder_tree_gets_the_lists_in_sorted_class_order(tmp_path, capsys):
    """Any folder names and image formats: labels 0..K-1 over the sorted class names, a class-balanced
    subset drawn from the class's name (the same when another class is added)."""
    root = tmp_path / "mine"
    for split, count in (("train", 10), ("val", 2)):
        for label, name in enumerate(("daisy", "Rose", "tulip")):
            for index in range(count):
                suffix = ".png" if index % 2 else ".jpg"
                (root / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8, 3), 40 * label + index, np.uint8)).save(
                    root / split / name / f"img{index}{suffix}"
                )
    (root / "train" / "daisy" / "notes.txt").write_text("x")
    code, out, err = run(capsys, "--root", root, "--labeled-fraction", "0.2")
    assert code == 0, err
    assert "class-folder tree at" in out and "train: 3 classes, 30 images" in out
    assert "data.train_labeled_list=meta/train_labeled_20pct.txt linear.num_classes=3" in out
    meta = root / "meta"
    labelled = (meta / "train_labeled.txt").read_text().splitlines()
    assert labelled[0] == "Rose/img0.jpg 0" and labelled[10] == "daisy/img0.jpg 1" and len(labelled) == 30
    val = (meta / "val_labeled.txt").read_text().splitlines()
    assert sorted(line.split()[1] for line in val) == ["0", "0", "1", "1", "2", "2"]
    subset = (meta / "train_labeled_20pct.txt").read_text().splitlines()
    assert [line.split()[1] for line in subset] == ["0"] * 2 + ["1"] * 2 + ["2"] * 2
    # Another class does not change the draw of the others.
    (root / "train" / "zinnia").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train" / "zinnia" / "a.png")
    (root / "val" / "zinnia").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "val" / "zinnia" / "a.png")
    assert run(capsys, "--root", root, "--labeled-fraction", "0.2")[0] == 0
    again = (meta / "train_labeled_20pct.txt").read_text().splitlines()
    assert [line.split()[0] for line in again if not line.startswith("zinnia")] == [line.split()[0] for line in subset]


def test_a_generic_tree_without_val_class_folders_is_refused_in_one_line(tmp_path, capsys):
    root = tmp_path / "mine"
    (root / "train" / "cats").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train" / "cats" / "a.png")
    (root / "val").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "val" / "a.png")
    code, out, err = run(capsys, "--root", root)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "holds no class folders: a class-folder tree needs val/<class>/<image>" in err
    assert not (root / "meta").exists()
