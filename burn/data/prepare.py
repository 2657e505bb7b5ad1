"""The original release's lists straight from a standard ImageNet tree, or from any class-folder tree; no
image is moved, renamed or copied.

    python -m burn.data.prepare --root /datasets/imagenet [--out ROOT/meta] [--labeled-fraction 0.01 0.1]
        [--seed 0] [--loc-csv FILE] [--devkit DIR | --ground-truth FILE --meta-mat FILE]
    python -m burn.data.prepare --root /data/my-dataset --labeled-fraction 0.1   # train/<class>/, val/<class>/

A generic class-folder tree (folder names of which none is an ImageNet synset: ``train/<class>/<image>``
and ``val/<class>/<image>``, images of the formats the loaders decode) gets the same lists, labels
0..K-1 over the sorted class names of train/; its val/ must hold class folders.

Layouts: ``train/<wnid>/*.JPEG`` and either ``val/<wnid>/*.JPEG`` or a flat ``val/ILSVRC2012_val_*.JPEG``
labelled by ``LOC_val_solution.csv`` (found at the root) or by the devkit's
``ILSVRC2012_validation_ground_truth.txt`` + ``meta.mat`` (found in ``root/ILSVRC2012_devkit_t12/data``).
When val/ has class folders and a ground truth is found too, every image's folder is checked against it.

Writes ``train.txt``, ``train_labeled.txt`` and ``val_labeled.txt`` (paths relative to ``root/train`` and
``root/val``; labels 0..K-1 over the sorted synsets of train/, i.e. 0..999 as in the original lists),
and per ``--labeled-fraction F`` ``train_labeled_<100F>pct.txt``: the same number of images from every
class, round(F * train images / classes), drawn by a permutation seeded by ``--seed`` and the synset, so
a subset is identical across runs and the 1% subset lies inside the 10% one. Each file is written
atomically. Exit status 2, with a one-line message naming the culprit, when the tree is inconsistent.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from burn.data.errors import DatasetError
from burn.data.lists import IMAGE_EXTENSIONS
from burn.runtime.rundir import atomic_write_all

WNID = re.compile(r"^n\d{8}$")
JPEG_EXTENSIONS = (".jpeg", ".jpg")
#: A generic tree's images: the formats the loaders decode (burn/data/lists.py).
GENERIC_EXTENSIONS = IMAGE_EXTENSIONS
DEVKIT = "ILSVRC2012_devkit_t12"
ILSVRC_CLASSES = 1000


@dataclass
class Report:
    """What the scan found: counts for the summary and notes on anything odd that did not stop it."""

    generic: bool = False
    """A class-folder tree whose folders are not ImageNet synsets (any names, labels in sorted order)."""
    classes: int = 0
    train_images: int = 0
    val_images: int = 0
    val_layout: str = ""
    notes: list[str] = field(default_factory=list)
    written: list[tuple[Path, int]] = field(default_factory=list)

    def note(self, what: str, examples: Sequence[str]) -> None:
        shown = ", ".join(list(examples)[:3]) + (", ..." if len(examples) > 3 else "")
        self.notes.append(f"{what}: {len(examples)} ({shown})")


def _examples(items: Sequence[str], what: str) -> str:
    """'<first>' plus ' (and N more <what>)' for one-line error messages."""
    return items[0] + (f" (and {len(items) - 1} more {what})" if len(items) > 1 else "")


def _is_jpeg(name: str) -> bool:
    return name.lower().endswith(JPEG_EXTENSIONS)


def _list_folder(folder: Path, extensions: tuple[str, ...] = JPEG_EXTENSIONS) -> tuple[list[str], list[str], list[str]]:
    """(image files, other files, subfolders) of a folder, sorted; hidden entries are ignored. Images are
    JPEGs (ImageNet), or any of `extensions`."""
    jpegs, others, folders = [], [], []
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            folders.append(entry.name)
        else:
            (jpegs if entry.name.lower().endswith(extensions) else others).append(entry.name)
    return sorted(jpegs), sorted(others), sorted(folders)


def is_generic_tree(train_dir: Path) -> bool:
    """train/ holds class folders none of which is named as an ImageNet synset: any names, labels in sorted
    order. (Synset folders beside others stay an ImageNet tree with a stray folder: refused, naming it.)"""
    _, _, folders = _list_folder(train_dir)
    return bool(folders) and not any(WNID.match(name) for name in folders)


def _scan_class_folders(split_dir: Path, report: Report) -> dict[str, list[str]]:
    """{class: sorted image names} of a split's class folders (listed in threads: network storage).
    ImageNet: synset folders of JPEGs; a generic tree (report.generic): any names, any decodable image."""
    split = split_dir.name
    extensions = GENERIC_EXTENSIONS if report.generic else JPEG_EXTENSIONS
    _, loose, folders = _list_folder(split_dir, extensions)
    bad = [f"{split}/{name}" for name in folders if not WNID.match(name)]
    if bad and not report.generic:
        raise DatasetError(f"{_examples(bad, 'such folders')} is not a synset folder (n + 8 digits) in {split_dir}")
    if loose:
        report.note(f"files outside the class folders of {split}/, ignored", [f"{split}/{n}" for n in loose])
    with ThreadPoolExecutor(max_workers=16) as pool:
        listed = list(pool.map(partial(_list_folder, extensions=extensions), [split_dir / name for name in folders]))
    images, others, nested, empty = {}, [], [], []
    for wnid, (jpegs, other, sub) in zip(folders, listed):
        images[wnid] = jpegs
        others += [f"{split}/{wnid}/{n}" for n in other]
        nested += [f"{split}/{wnid}/{n}/" for n in sub]
        if not jpegs:
            empty.append(f"{split}/{wnid}")
    image = "an image" if report.generic else "a JPEG"
    if others:
        report.note(f"non-{'image' if report.generic else 'JPEG'} files in {split}/, not listed", others)
    if nested:
        report.note(f"folders inside class folders of {split}/, not listed", nested)
    if empty:
        report.note(f"class folders of {split}/ without {image}", empty)
    return images


def read_loc_csv(path: Path) -> dict[str, str]:
    """{image id: wnid} from Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` where the
    prediction string is ``<wnid> x0 y0 x1 y1`` per box; all boxes of an image name one class)."""
    truth = {}
    try:
        with open(path, newline="") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"cannot read {path}: {err}") from err
    if not rows or [c.strip() for c in rows[0][:2]] != ["ImageId", "PredictionString"]:
        raise DatasetError(f"{path} line 1: expected the header 'ImageId,PredictionString'")
    for number, row in enumerate(rows[1:], 2):
        if not row:
            continue
        tokens = row[1].split() if len(row) == 2 else []
        wnids = set(tokens[::5])
        if len(wnids) != 1 or not WNID.match(tokens[0]):
            raise DatasetError(
                f"{path} line {number}: expected '<image id>,<wnid> <box> ...' naming one synset, "
                f"got {','.join(row)[:80]!r}"
            )
        if row[0] in truth:
            raise DatasetError(f"{path} line {number}: image {row[0]} appears twice")
        truth[row[0]] = tokens[0]
    return truth


def read_meta_mat(path: Path) -> dict[int, str]:
    """{ILSVRC2012_ID: wnid} of the 1000 leaf synsets in the devkit's ``meta.mat`` (its ``synsets``
    struct array; ids are not in sorted-wnid order, so the file is needed to read the ground truth)."""
    import scipy.io  # only the devkit layout needs it

    try:
        synsets = scipy.io.loadmat(str(path), squeeze_me=True)["synsets"]
        ids, wnids = synsets["ILSVRC2012_ID"], synsets["WNID"]
        children = synsets["num_children"] if "num_children" in synsets.dtype.names else [0] * len(ids)
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        IndexError,
        NotImplementedError,
        scipy.io.matlab.MatReadError,
    ) as err:
        raise DatasetError(
            f"{path} is not the devkit's meta.mat (a 'synsets' struct array with fields "
            f"ILSVRC2012_ID, WNID, num_children): {err}"
        ) from err
    mapping = {}
    for synset_id, wnid, count in zip(np.atleast_1d(ids), np.atleast_1d(wnids), np.atleast_1d(children)):
        if int(count) != 0:
            continue  # inner nodes of the hierarchy (ids 1001..1860) label no image
        if not WNID.match(str(wnid)) or int(synset_id) in mapping:
            raise DatasetError(f"{path}: synset {synset_id} has the WNID {wnid!r} or appears twice")
        mapping[int(synset_id)] = str(wnid)
    if not mapping:
        raise DatasetError(f"{path}: no leaf synsets (num_children 0) in 'synsets'")
    return mapping


def read_devkit_ground_truth(ground_truth: Path, meta_mat: Path) -> dict[str, str]:
    """{image id: wnid}: line i of the ground truth is the ILSVRC2012_ID of ``ILSVRC2012_val_<i:08d>``."""
    mapping = read_meta_mat(meta_mat)
    try:
        lines = ground_truth.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read {ground_truth}: {err}") from err
    truth = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text.isdigit() or int(text) not in mapping:
            raise DatasetError(f"{ground_truth} line {number}: {text!r} is not an ILSVRC2012_ID of {meta_mat}")
        truth[f"ILSVRC2012_val_{number:08d}"] = mapping[int(text)]
    return truth


def _find_devkit_file(devkit: Path, name: str) -> Path | None:
    for candidate in (devkit / "data" / name, devkit / name):
        if candidate.is_file():
            return candidate
    return None


def load_ground_truth(
    root: Path, loc_csv: Path | None, devkit: Path | None, ground_truth: Path | None, meta_mat: Path | None
) -> tuple[dict[str, str] | None, str]:
    """The validation ground truth from the options or where it unpacks by default: (truth, source)."""
    for option, given in (
        ("--loc-csv", loc_csv),
        ("--ground-truth", ground_truth),
        ("--meta-mat", meta_mat),
        ("--devkit", devkit),
    ):
        if given is not None and not given.exists():
            raise DatasetError(f"{option} {given} does not exist")
    explicit = devkit is not None or ground_truth is not None or meta_mat is not None
    default_csv = root / "LOC_val_solution.csv"
    if loc_csv is not None or (not explicit and default_csv.is_file()):
        path = loc_csv or default_csv
        return read_loc_csv(path), str(path)
    kit = devkit or root / DEVKIT
    ground_truth = ground_truth or _find_devkit_file(kit, "ILSVRC2012_validation_ground_truth.txt")
    meta_mat = meta_mat or _find_devkit_file(kit, "meta.mat")
    if ground_truth is not None and meta_mat is not None:
        return read_devkit_ground_truth(ground_truth, meta_mat), f"{ground_truth} + {meta_mat}"
    if explicit:
        missing = "meta.mat" if meta_mat is None else "ILSVRC2012_validation_ground_truth.txt"
        raise DatasetError(
            f"the devkit ground truth needs {missing} too: not in {kit} or {kit / 'data'} "
            f"(give --meta-mat / --ground-truth)"
        )
    return None, ""  # fine for class-folder val; a flat val/ is refused with the places looked in


def _check_against_truth(pairs: list[tuple[str, str]], truth: dict[str, str], source: str) -> None:
    wrong = []
    for path, wnid in pairs:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in truth and truth[stem] != wnid:
            wrong.append(f"val/{path} (folder {wnid}, {truth[stem]} in the ground truth)")
    if wrong:
        raise DatasetError(f"val/ class folders disagree with {source}: {_examples(wrong, 'images')}")


def scan_val(
    val_dir: Path, synsets: Sequence[str], truth: dict[str, str] | None, source: str, report: Report
) -> list[tuple[str, str]]:
    """[(path relative to val/, wnid)] ordered by file name (the same order in every layout)."""
    if not val_dir.is_dir():
        raise DatasetError(f"no validation folder: {val_dir} does not exist")
    jpegs, others, folders = _list_folder(val_dir, GENERIC_EXTENSIONS if report.generic else JPEG_EXTENSIONS)
    known = set(synsets)
    if report.generic and not folders:
        raise DatasetError(
            f"{val_dir} holds no class folders: a class-folder tree needs val/<class>/<image> with the class "
            "names of train/"
        )
    if folders and jpegs:
        raise DatasetError(
            f"{val_dir} mixes class folders (val/{folders[0]}) and loose images (val/{jpegs[0]}); keep one layout"
        )
    if folders:
        images = _scan_class_folders(val_dir, report)
        unknown = [f"val/{wnid}" for wnid, names in images.items() if wnid not in known]
        if unknown:
            raise DatasetError(f"{_examples(unknown, 'such classes')} is a class train/ does not have")
        pairs = [(f"{wnid}/{name}", wnid) for wnid, names in images.items() for name in names]
        report.val_layout = "class folders"
        if truth is not None and not report.generic:
            _check_against_truth(pairs, truth, source)
            report.val_layout += f", checked against {source}"
    elif jpegs:
        if others:
            report.note("non-JPEG files in val/, not listed", [f"val/{n}" for n in others])
        if truth is None:
            raise DatasetError(
                f"{val_dir} holds loose images (val/{jpegs[0]}) but no ground truth was found: "
                f"put LOC_val_solution.csv at the root or the devkit in {val_dir.parent / DEVKIT}, "
                f"or give --loc-csv / --devkit"
            )
        stems = [os.path.splitext(name)[0] for name in jpegs]
        unlabelled = [f"val/{name}" for name, stem in zip(jpegs, stems) if stem not in truth]
        if unlabelled:
            raise DatasetError(f"{_examples(unlabelled, 'images')} has no ground truth in {source}")
        unknown = [f"val/{name} ({truth[stem]})" for name, stem in zip(jpegs, stems) if truth[stem] not in known]
        if unknown:
            raise DatasetError(f"{source} labels {_examples(unknown, 'images')} with a class train/ does not have")
        absent = sorted(set(truth) - set(stems))
        if absent:
            report.note(f"images of {source} missing from val/", absent)
        pairs = [(name, truth[stem]) for name, stem in zip(jpegs, stems)]
        report.val_layout = f"flat, labels from {source}"
    else:
        raise DatasetError(f"{val_dir} holds neither class folders nor JPEG images")
    return sorted(pairs, key=lambda pair: (os.path.basename(pair[0]), pair[0]))


def class_seed(name: str) -> int:
    """A class's own seed: its synset number (n01440764 -> 1440764, as before generic trees were read), or
    a checksum of any other folder name: the same name draws the same subset whatever the other classes."""
    return int(name[1:]) if WNID.match(name) else zlib.crc32(name.encode())


def labeled_subset(images: dict[str, list[str]], fraction: float, seed: int) -> tuple[dict[str, list[str]], int]:
    """The same number of images from every class, ``round(fraction * images / classes)`` (at least 1;
    all of a smaller class). Each class draws from its own permutation, seeded by ``seed`` and
    :func:`class_seed`, so a larger fraction's subset contains a smaller one's. Returns ({class: names}, k)."""
    total = sum(len(names) for names in images.values())
    per_class = max(1, round(fraction * total / len(images)))
    chosen = {}
    for name, files in images.items():
        order = np.random.default_rng([seed, class_seed(name)]).permutation(len(files))
        chosen[name] = sorted(files[i] for i in order[:per_class])
    return chosen, per_class


def subset_name(fraction: float) -> str:
    return f"train_labeled_{fraction * 100:g}pct.txt"


def prepare(
    root: Path,
    out: Path,
    fractions: Sequence[float] = (),
    seed: int = 0,
    loc_csv: Path | None = None,
    devkit: Path | None = None,
    ground_truth: Path | None = None,
    meta_mat: Path | None = None,
) -> Report:
    """Scan ``root``, write the lists into ``out``; raises DatasetError for an inconsistent tree."""
    report = Report()
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"no training folder: {train_dir} does not exist")
    report.generic = is_generic_tree(train_dir)
    images = _scan_class_folders(train_dir, report)
    if not images:
        raise DatasetError(
            f"{train_dir} holds no class folders (train/n01440764/*.JPEG, ..., or train/<class>/<image>)"
        )
    synsets = sorted(images)
    report.classes, report.train_images = len(synsets), sum(len(names) for names in images.values())
    if report.train_images == 0:
        raise DatasetError(f"{train_dir}: the class folders hold no {'images' if report.generic else 'JPEG images'}")
    if report.generic:
        report.notes.append(f"a class-folder tree: labels 0..{report.classes - 1} over its sorted class names")
    elif report.classes != ILSVRC_CLASSES:
        report.notes.append(
            f"{report.classes} classes, not ILSVRC-2012's {ILSVRC_CLASSES}: labels are "
            f"0..{report.classes - 1} over these synsets and differ from the original lists'"
        )
    truth, source = (None, "") if report.generic else load_ground_truth(root, loc_csv, devkit, ground_truth, meta_mat)
    val = scan_val(root / "val", synsets, truth, source, report)
    report.val_images = len(val)
    label = {wnid: index for index, wnid in enumerate(synsets)}
    train = [(f"{wnid}/{name}", label[wnid]) for wnid in synsets for name in images[wnid]]
    files = {
        "train.txt": [path for path, _ in train],
        "train_labeled.txt": [f"{path} {index}" for path, index in train],
        "val_labeled.txt": [f"{path} {label[wnid]}" for path, wnid in val],
    }
    for fraction in fractions:
        chosen, per_class = labeled_subset(images, fraction, seed)
        short = [f"{wnid} ({len(images[wnid])})" for wnid in synsets if len(images[wnid]) < per_class]
        if short:
            report.note(
                f"classes with fewer than the {per_class} images per class of {subset_name(fraction)}, taken whole",
                short,
            )
        files[subset_name(fraction)] = [f"{wnid}/{name} {label[wnid]}" for wnid in synsets for name in chosen[wnid]]
    out.mkdir(parents=True, exist_ok=True)
    # All lists or none: a failure while writing leaves the previous lists untouched.
    atomic_write_all({out / name: "".join(line + "\n" for line in lines) for name, lines in files.items()})
    report.written = [(out / name, len(lines)) for name, lines in files.items()]
    return report


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1 (0.01 is 1%)")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m burn.data.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", required=True, type=Path, help="ImageNet root, or any class-folder tree, holding train/ and val/"
    )
    parser.add_argument("--out", type=Path, help="folder for the lists (default: ROOT/meta, where training looks)")
    parser.add_argument(
        "--labeled-fraction",
        type=_fraction,
        nargs="+",
        default=[],
        metavar="F",
        help="also write class-balanced labelled subsets, e.g. 0.01 0.1",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the labelled subsets (default 0)")
    parser.add_argument("--loc-csv", type=Path, help="LOC_val_solution.csv (default: ROOT/LOC_val_solution.csv)")
    parser.add_argument("--devkit", type=Path, help=f"unpacked devkit (default: ROOT/{DEVKIT})")
    parser.add_argument("--ground-truth", type=Path, help="the devkit's ILSVRC2012_validation_ground_truth.txt")
    parser.add_argument("--meta-mat", type=Path, help="the devkit's meta.mat")
    args = parser.parse_args(argv)
    if len({subset_name(f) for f in args.labeled_fraction}) != len(args.labeled_fraction):
        parser.error("--labeled-fraction: two fractions give the same file name")
    root = Path(os.path.abspath(args.root))
    out = Path(os.path.abspath(args.out)) if args.out else root / "meta"
    try:
        report = prepare(
            root, out, args.labeled_fraction, args.seed, args.loc_csv, args.devkit, args.ground_truth, args.meta_mat
        )
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'class-folder tree' if report.generic else 'ImageNet'} at {root}")
    print(f"  train: {report.classes} classes, {report.train_images} images")
    print(f"  val:   {report.val_images} images ({report.val_layout})")
    for note in report.notes:
        print(f"  note: {note}")
    for path, count in report.written:
        print(f"wrote {path} ({count} lines)")
    subsets = [path for path, _ in report.written[3:]]
    if subsets and out == root / "meta":
        print(
            f"labelled subset for linear eval or fine-tuning: data.train_labeled_list=meta/{subsets[0].name}"
            + (f" linear.num_classes={report.classes}" if report.classes != ILSVRC_CLASSES else "")
        )
    if out != root / "meta":
        print(
            f"train with data.train_list={out / 'train.txt'} data.train_labeled_list={out / 'train_labeled.txt'} "
            f"data.val_list={out / 'val_labeled.txt'} (and a {root / 'meta'} folder)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
