"""Dataset trees and their sample lists: parse, derive, validate.

Two layouts are understood:

* ImageNet style (the original release): ``root/train/``, ``root/val/`` and ``root/meta/`` with
  ``meta/train.txt`` (one path per line, unlabelled), ``meta/train_labeled.txt`` and
  ``meta/val_labeled.txt`` (``<path> <label>``, integer labels 0..K-1). Paths are relative to the
  split folder: train lists to ``root/train``, the val list to ``root/val`` (as in the original lists).
* A bare class-folder tree without lists: ``root/train/<class>/<image>`` and ``root/val/<class>/<image>``
  (or ``root/<class>/<image>`` for a tree that is only a training set). Classes are the sorted folder
  names, with ids 0..K-1; images are taken in sorted order.

A split reads its list when the option is set and the root has a ``meta/`` folder; the file must then
exist. It derives the list from the class folders when the option is null or the root has no
``meta/`` folder at all.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from burn.data.errors import DatasetError, summarise_problems

log = logging.getLogger(__name__)

#: Extensions of images in derived lists: the formats DALI decodes.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pnm", ".ppm", ".pgm", ".pbm", ".jp2")
#: Split name -> (config field of its list, split folder, labelled).
SPLITS = {
    "train": ("train_list", "train", False),
    "train_labeled": ("train_labeled_list", "train", True),
    "val": ("val_list", "val", True),
}


@dataclass(frozen=True)
class SampleList:
    """The samples of one split: paths relative to ``base_dir``, labels (None when unlabelled) and the
    line of each sample in ``source`` (0 for derived lists), so problems can be reported by line."""

    source: str
    base_dir: Path
    paths: Sequence[str]
    labels: Sequence[int] | None
    lines: Sequence[int]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1 if self.labels else 0

    def absolute_paths(self) -> list[str]:
        base = str(self.base_dir)
        return [os.path.join(base, p) for p in self.paths]


def dataset_root(data_cfg) -> Path:
    """``data_cfg.root`` as an absolute path (a relative root is relative to the working directory)."""
    return Path(os.path.abspath(os.path.expanduser(str(data_cfg.root))))


def parse_list(list_path: Path, base_dir: Path, labeled: bool) -> SampleList:
    """Read a list file. Unlabelled lines are a path (a trailing integer label is accepted and ignored);
    labelled lines are ``<path> <label>``. Blank lines are skipped. Raises DatasetError naming the file
    and the first bad line when any line is malformed or the list is empty."""
    paths, labels, lines, problems = [], [], [], []
    try:
        text = list_path.read_text()
    except OSError as err:
        raise DatasetError(f"cannot read list {list_path}: {err.strerror or err}") from err
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        has_label = len(parts) == 2 and parts[1].isdigit()
        if labeled and not has_label:
            problems.append((number, f"expected '<path> <label>' with an integer label >= 0, got {line!r}"))
            continue
        paths.append(parts[0] if has_label else line)
        labels.append(int(parts[1]) if has_label else -1)
        lines.append(number)
    if problems:
        raise DatasetError(summarise_problems(str(list_path), problems, "malformed lines"))
    if not paths:
        raise DatasetError(f"{list_path}: the list is empty (no samples)")
    return SampleList(str(list_path), base_dir, tuple(paths), tuple(labels) if labeled else None, tuple(lines))


def derive_list(split_dir: Path) -> SampleList:
    """List a class-folder tree: sorted class folders get ids 0..K-1, their images come sorted."""
    if not split_dir.is_dir():
        raise DatasetError(f"no class folders: {split_dir} is not a directory")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))
    paths, labels = [], []
    for label, name in enumerate(classes):
        for root, dirs, files in os.walk(split_dir / name):
            dirs.sort()
            rel = os.path.relpath(root, split_dir)
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(rel, file))
                    labels.append(label)
    if not paths:
        raise DatasetError(f"{split_dir}: no images found in class folders (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return SampleList(f"class folders of {split_dir}", split_dir, tuple(paths), tuple(labels), tuple(0 for _ in paths))


def resolve_split(data_cfg, split: str) -> SampleList:
    """The sample list of ``split`` ("train", "train_labeled" or "val") according to the module rules."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    field, folder, labeled = SPLITS[split]
    root = dataset_root(data_cfg)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist (data.root={data_cfg.root!r})")
    list_option = getattr(data_cfg, field)
    split_dir = root / folder
    if list_option is not None and (root / "meta").is_dir():
        list_path = root / str(list_option)
        if not list_path.is_file():
            raise DatasetError(
                f"list file {list_path} does not exist (data.{field}={list_option!r}); set "
                f"data.{field}=null to derive the {split} split from class folders"
            )
        return parse_list(list_path, split_dir, labeled)
    if not split_dir.is_dir():
        if split == "val":
            raise DatasetError(f"no validation split in {root}: neither meta/ lists nor a val/ folder")
        split_dir = root  # a bare class-folder tree is a training set
    samples = derive_list(split_dir)
    return samples if labeled else SampleList(samples.source, samples.base_dir, samples.paths, None, samples.lines)


def balanced_subset(samples: SampleList, max_samples: int) -> SampleList:
    """At most ``max_samples`` labelled samples, as evenly over the classes as the list allows: the i-th
    sample of every class comes before the (i+1)-th of any. Deterministic; list order is kept."""
    if samples.labels is None:
        raise ValueError(f"{samples.source}: a class-balanced subset needs a labelled list")
    if max_samples <= 0:
        raise ValueError(f"max_samples must be > 0, got {max_samples}")
    if len(samples) <= max_samples:
        return samples
    seen: dict[int, int] = {}
    rank_in_class = []
    for label in samples.labels:
        rank_in_class.append(seen.get(label, 0))
        seen[label] = rank_in_class[-1] + 1
    chosen = sorted(sorted(range(len(samples)), key=lambda i: (rank_in_class[i], samples.labels[i]))[:max_samples])
    return SampleList(
        samples.source,
        samples.base_dir,
        tuple(samples.paths[i] for i in chosen),
        tuple(samples.labels[i] for i in chosen),
        tuple(samples.lines[i] for i in chosen),
    )


def find_missing(samples: SampleList, threads: int = 16) -> list[tuple[int, str]]:
    """(line, message) for every sample whose file is missing; stats run in threads (network storage)."""
    absolute = samples.absolute_paths()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        problems = list(pool.map(_file_problem, absolute, chunksize=1024))
    return [(samples.lines[i], f"{problem} {absolute[i]}") for i, problem in enumerate(problems) if problem]


def _file_problem(path: str) -> str:
    """ "" for a usable file, else what is wrong (one stat: a zero-byte file kills DALI's reader)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing file"
    if not stat.S_ISREG(st.st_mode):
        return "not a file"
    return "" if st.st_size > 0 else "empty (0-byte) file"


def validate_dataset(data_cfg, splits: Iterable[str] = ("train",)) -> dict[str, SampleList]:
    """Check the splits a job will read, before it is queued: the root exists, each list parses and is
    non-empty, every listed file exists, validation labels are classes of the labelled training list.
    Returns the sample lists by split name. Raises DatasetError naming the file and line of the first
    problem and how many more there are.

    A missing root is not an error when ``data_cfg.synthetic.generate`` is set (it will be generated by
    :func:`burn.demo.synthetic.ensure_synthetic`); nothing is checked then and ``{}`` is returned."""
    root = dataset_root(data_cfg)
    synthetic = getattr(data_cfg, "synthetic", None)
    if not root.exists() and synthetic is not None and synthetic.generate:
        log.info("dataset root %s is absent and will be generated", root)
        return {}
    lists = {}
    for split in splits:
        samples = resolve_split(data_cfg, split)
        missing = find_missing(samples)
        if missing:
            raise DatasetError(summarise_problems(samples.source, missing, "missing files"))
        lists[split] = samples
    if "val" in lists and "train_labeled" in lists:
        classes = lists["train_labeled"].num_classes
        bad = [
            (line, f"label {label} is not a class of the labelled training list (0..{classes - 1})")
            for line, label in zip(lists["val"].lines, lists["val"].labels)
            if label >= classes
        ]
        if bad:
            raise DatasetError(summarise_problems(lists["val"].source, bad, "unknown labels"))
    return lists
