"""Dataset lists: both layouts, and validation errors that name the file and the line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from burn.data.errors import DatasetError
from burn.data.lists import balanced_subset, resolve_split, validate_dataset
from burn.data.sharding import batch_positions, eval_shard, steps_per_epoch, stream_indices


def _copy(tiny_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(tiny_data, root)
    return root


@pytest.mark.process
def test_imagenet_layout_lists_are_relative_to_split_folders(tiny_data, make_cfg):
    lists = validate_dataset(make_cfg(tiny_data), splits=("train", "train_labeled", "val"))
    assert len(lists["train"]) == 400 and lists["train"].labels is None
    assert len(lists["train_labeled"]) == 400 and lists["train_labeled"].num_classes == 10
    assert len(lists["val"]) == 100 and sorted(set(lists["val"].labels)) == list(range(10))
    assert lists["val"].base_dir == tiny_data / "val"
    assert (tiny_data / "train" / lists["train"].paths[0]).is_file()
    assert lists["train"].lines[:2] == (1, 2)


@pytest.mark.process
def test_relative_root_is_relative_to_working_directory(tiny_data, make_cfg, monkeypatch):
    monkeypatch.chdir(tiny_data.parent)
    assert len(resolve_split(make_cfg(Path(tiny_data.name)), "val")) == 100


@pytest.mark.process
def test_bare_class_folder_tree_derives_sorted_classes(tiny_data, tmp_path, make_cfg):
    root = tmp_path / "bare"
    for name in ("zebra", "ant", "moth"):
        shutil.copytree(tiny_data / "val" / "c000", root / name)
    (root / "ant" / "notes.txt").write_text("not an image")
    samples = resolve_split(make_cfg(root), "train_labeled")
    assert len(samples) == 30
    assert samples.paths[0].startswith("ant/") and samples.paths[-1].startswith("zebra/")
    assert sorted(set(samples.labels)) == [0, 1, 2] and samples.labels[10] == 1  # moth
    with pytest.raises(DatasetError, match="no validation split"):
        resolve_split(make_cfg(root), "val")


@pytest.mark.process
def test_tree_without_meta_uses_train_and_val_folders(tiny_data, tmp_path, make_cfg):
    root = _copy(tiny_data, tmp_path)
    shutil.rmtree(root / "meta")
    lists = validate_dataset(make_cfg(root), splits=("train", "val"))
    assert len(lists["train"]) == 400 and len(lists["val"]) == 100


def test_missing_root(tmp_path, make_cfg):
    with pytest.raises(DatasetError, match="does not exist"):
        validate_dataset(make_cfg(tmp_path / "nowhere"))
    cfg = make_cfg(tmp_path / "nowhere", overrides={"synthetic.generate": True})
    assert validate_dataset(cfg) == {}  # generated on first use


@pytest.mark.process
def test_empty_list(tiny_data, tmp_path, make_cfg):
    root = _copy(tiny_data, tmp_path)
    (root / "meta" / "train.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"train\.txt: the list is empty"):
        validate_dataset(make_cfg(root))


@pytest.mark.process
def test_malformed_lines_are_reported_with_line_numbers(tiny_data, tmp_path, make_cfg):
    root = _copy(tiny_data, tmp_path)
    listing = root / "meta" / "val_labeled.txt"
    lines = listing.read_text().splitlines()
    lines[4] = lines[4].split()[0]  # label missing
    lines[6] = lines[6].split()[0] + " seven"
    lines[9] = lines[9].split()[0] + " -1"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as error:
        validate_dataset(make_cfg(root), splits=("val",))
    message = str(error.value)
    assert f"{listing} line 5:" in message and "and 2 more malformed lines, e.g. lines 7, 10" in message


@pytest.mark.process
def test_missing_files_are_counted(tiny_data, tmp_path, make_cfg):
    root = _copy(tiny_data, tmp_path)
    paths = resolve_split(make_cfg(root), "train").paths
    for relative in (paths[3], paths[100], paths[200]):
        (root / "train" / relative).unlink()
    with pytest.raises(DatasetError) as error:
        validate_dataset(make_cfg(root), splits=("train",))
    message = str(error.value)
    assert "train.txt line 4: missing file" in message and paths[3] in message
    assert "and 2 more missing files" in message


@pytest.mark.process
def test_configured_list_must_exist(tiny_data, tmp_path, make_cfg):
    root = _copy(tiny_data, tmp_path)
    (root / "meta" / "train.txt").unlink()
    with pytest.raises(DatasetError, match="train.txt does not exist"):
        validate_dataset(make_cfg(root))


@pytest.mark.process
def test_val_labels_must_be_training_classes(tiny_data, tmp_path, make_cfg):
    root = _copy(tiny_data, tmp_path)
    listing = root / "meta" / "val_labeled.txt"
    lines = listing.read_text().splitlines()
    lines[2] = lines[2].split()[0] + " 12"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"line 3: label 12 is not a class"):
        validate_dataset(make_cfg(root), splits=("train_labeled", "val"))


def test_ranks_read_a_prefix_of_one_global_stream_of_reshuffled_epochs():
    n, shards, batch = 103, 3, 8
    assert steps_per_epoch(n, shards, batch) == 4
    parts = [batch_positions(0, 0, 4, shard_id=r, num_shards=shards, batch_size=batch) for r in range(shards)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(96))  # disjoint, together a prefix
    assert parts[1][:8].tolist() == list(range(8, 16))  # micro-batch 0 of rank 1 follows rank 0's
    # Continued by 2 ranks of 5 from position 96: the next 10 positions, nothing skipped.
    more = [batch_positions(96, 0, 1, shard_id=r, num_shards=2, batch_size=5) for r in range(2)]
    assert np.concatenate(more).tolist() == list(range(96, 106))
    stream = stream_indices(n, 5, np.arange(3 * n))
    for epoch in range(3):  # every sample exactly once per epoch, a fresh order each epoch
        assert sorted(stream[epoch * n : (epoch + 1) * n].tolist()) == list(range(n))
    assert (stream[:n] != stream[n : 2 * n]).any()
    assert (stream_indices(n, 5, np.arange(3 * n)) == stream).all()  # the same on every rank
    with pytest.raises(DatasetError, match="cannot fill one batch"):
        steps_per_epoch(10, 2, 8)


def test_eval_shards_cover_every_sample_once():
    pieces = [eval_shard(11, shard_id=r, num_shards=3) for r in range(3)]
    assert sorted(i for p in pieces for i in p) == list(range(11))
    assert sorted(len(p) for p in pieces) == [3, 4, 4]


@pytest.mark.process
def test_balanced_subset_spreads_the_cap_over_classes(tiny_data, make_cfg):
    val = resolve_split(make_cfg(tiny_data), "val")  # 10 classes x 10 images, grouped by class
    subset = balanced_subset(val, 25)
    counts = {c: subset.labels.count(c) for c in range(10)}
    assert len(subset) == 25 and sorted(counts.values()) == [2] * 5 + [3] * 5
    assert list(subset.lines) == sorted(subset.lines)  # list order kept
    for path, label, line in zip(subset.paths, subset.labels, subset.lines):  # rows stay aligned
        assert (val.paths[line - 1], val.labels[line - 1]) == (path, label)
    assert balanced_subset(val, 1000) is val
    with pytest.raises(ValueError, match="labelled"):
        balanced_subset(resolve_split(make_cfg(tiny_data), "train"), 10)
