"""Weight files: read every known layout safely, hand out the parts, write the original layouts.

Layouts understood (``detect_layout`` returns the key):

=============================  ================================================================
``moco-v2-release``            ``{'state_dict': {'module.encoder_q.*', 'module.encoder_k.*',
                               'module.queue', 'module.queue_ptr'}}``: teacher trunk =
                               ``encoder_q`` minus its ``fc``
``original-teacher``           ``{'state_dict': <torchvision ResNet keys, no fc>}`` (BURN release)
``original-stage1-extraction`` ``{'backbone', 'classifier', 'teacher_classifier': {'state_dict'},
                               'author'}``
``original-backbone-extraction`` ``{'state_dict': feature.* and fc.0.*, 'author'}``
``original-pretraining-checkpoint`` mmcv checkpoint, ``state_dict`` keys prefixed
                               ``online_net.0./online_net.1./diff_branch_net.0./diff_branch_net.1./
                               backbone.`` (the last an alias of ``online_net.0.``)
``torchvision-resnet``         a plain torchvision ResNet state dict (``fc`` is dropped)
``burn-suite-checkpoint``      ``{'format': 'burn-suite/checkpoint', 'model': {...}, ...}``
=============================  ================================================================

Parts handed out: ``student`` (ReActNet-A backbone: ``feature.*``, ``fc.0.*``),
``student_classifier``, ``teacher_trunk``, ``teacher_classifier`` (and ``linear_classifier`` for
linear-evaluation checkpoints). Every file is read with ``torch.load(weights_only=True)``: a file
that would unpickle anything other than tensors and plain containers is refused, and nothing in it
runs.

CLI::

    python -m burn.weights inspect FILE
    python -m burn.weights extract CHECKPOINT OUT --format stage1|backbone [--author NAME]
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from burn.runtime.files import state_nbytes
from burn.runtime.rundir import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, atomic_write

StateDict = dict[str, torch.Tensor]

MOCO = "moco-v2-release"
TEACHER = "original-teacher"
STAGE1 = "original-stage1-extraction"
BACKBONE = "original-backbone-extraction"
PRETRAINING = "original-pretraining-checkpoint"
TORCHVISION = "torchvision-resnet"
SUITE = "burn-suite-checkpoint"

#: Parts of an original pretraining checkpoint, by key prefix (``backbone.`` is an alias, skipped).
PRETRAINING_PREFIXES = {
    "online_net.0.": "student",
    "online_net.1.": "student_classifier",
    "diff_branch_net.0.": "teacher_trunk",
    "diff_branch_net.1.": "teacher_classifier",
}
LAYOUT_DESCRIPTIONS = {
    MOCO: "MoCo v2 release (encoder_q trunk kept, its fc, encoder_k and queue ignored)",
    TEACHER: "original BURN teacher file",
    STAGE1: "original stage-1 extraction",
    BACKBONE: "original backbone extraction",
    PRETRAINING: "original BURN pretraining checkpoint (mmcv)",
    TORCHVISION: "torchvision ResNet state dict (fc ignored)",
    SUITE: "burn-suite checkpoint",
}
STAGE1_PARTS = ("student", "student_classifier", "teacher_classifier")
DEFAULT_AUTHOR = "burn-suite"
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


class WeightsError(RuntimeError):
    """A weights file cannot be read or does not hold what was asked for."""


def load_weights_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is long; keep its line that names the refused global.
        lines = [ln.strip() for ln in str(err).splitlines() if "Unsupported" in ln]
        reason = lines[0].split(". Please")[0] if lines else type(err).__name__
        if "Unsupported operand" in reason:  # bytes that are no pickle opcode: not a torch file
            raise WeightsError(f"{path}: not a readable torch weights file ({reason})") from None
        raise WeightsError(
            f"{path}: refused to load: the file holds pickled Python objects, not only tensors and "
            f"plain containers (torch.load weights_only=True); nothing in it was executed. "
            f"Reason: {reason}"
        ) from None
    except Exception as err:  # zip/format errors surface as RuntimeError and friends
        raise WeightsError(f"{path}: not a readable torch weights file: {err}") from err


def _is_resnet(keys: Iterable[str]) -> bool:
    keys = set(keys)
    return "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys)


def _moco_prefix(keys: Iterable[str]) -> str | None:
    for prefix in ("module.encoder_q.", "encoder_q."):
        if any(k.startswith(prefix) for k in keys):
            return prefix
    return None


def _describe(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    top = sorted(map(str, obj))[:8]
    inner = obj.get("state_dict")
    inner_keys = f"; state_dict keys start {sorted(inner)[:4]}" if isinstance(inner, Mapping) else ""
    return f"top-level keys {top}{inner_keys}"


def detect_layout(obj: Any) -> str:
    """Name the layout of a loaded weights object (one of the module constants); raise
    :class:`WeightsError` describing its keys when it is none of them."""
    if isinstance(obj, Mapping):
        if obj.get("format") == CHECKPOINT_FORMAT:
            if obj.get("version") != CHECKPOINT_VERSION:
                raise WeightsError(
                    f"a burn-suite checkpoint of version {obj.get('version')!r}; this burn-suite reads "
                    f"version {CHECKPOINT_VERSION} only"
                )
            return SUITE
        if all(k in obj for k in ("backbone", "classifier", "teacher_classifier")):
            return STAGE1
        inner = obj.get("state_dict")
        if isinstance(inner, Mapping):
            if _moco_prefix(inner):
                return MOCO
            if any(k.startswith(p) for k in inner for p in PRETRAINING_PREFIXES):
                return PRETRAINING
            if any(k.startswith("feature.") for k in inner):
                return BACKBONE
            if _is_resnet(inner):
                return TEACHER
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()) and _is_resnet(obj):
            return TORCHVISION
    raise WeightsError(f"unknown weights layout: {_describe(obj)}")


def _tensors(d: Mapping) -> StateDict:
    return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}


def _with_prefix(sd: Mapping, prefix: str, drop_fc: bool = False) -> StateDict:
    out = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return _tensors({k: v for k, v in out.items() if not (drop_fc and k.startswith("fc."))})


def _nested_state_dict(obj: Mapping, key: str) -> StateDict:
    entry = obj[key]
    if not (isinstance(entry, Mapping) and isinstance(entry.get("state_dict"), Mapping)):
        raise WeightsError(f"entry {key!r} is not {{'state_dict': ...}}")
    return _tensors(entry["state_dict"])


def split_parts(obj: Any, layout: str) -> dict[str, StateDict]:
    """The parts a loaded object of ``layout`` holds, as plain state dicts with model-local names."""
    if layout == MOCO:
        sd = obj["state_dict"]
        return {"teacher_trunk": _with_prefix(sd, _moco_prefix(sd), drop_fc=True)}
    if layout == TEACHER:
        return {"teacher_trunk": _with_prefix(obj["state_dict"], "", drop_fc=True)}
    if layout == TORCHVISION:
        return {"teacher_trunk": _with_prefix(obj, "", drop_fc=True)}
    if layout == STAGE1:
        keys = {"student": "backbone", "student_classifier": "classifier", "teacher_classifier": "teacher_classifier"}
        return {part: _nested_state_dict(obj, key) for part, key in keys.items()}
    if layout == BACKBONE:
        return {"student": _tensors(obj["state_dict"])}
    if layout == PRETRAINING:
        parts = {part: _with_prefix(obj["state_dict"], prefix) for prefix, part in PRETRAINING_PREFIXES.items()}
        return {part: sd for part, sd in parts.items() if sd}
    if layout == SUITE:
        model = obj.get("model")
        if not isinstance(model, Mapping):
            raise WeightsError("burn-suite checkpoint without a 'model' entry")
        renames = {"fc_cls": "linear_classifier"}
        return {renames.get(k, k): _tensors(v) for k, v in model.items() if isinstance(v, Mapping)}
    raise WeightsError(f"no parts known for layout {layout!r}")


def read_parts(path: str | os.PathLike) -> tuple[str, dict[str, StateDict]]:
    """Load ``path`` safely, detect its layout and return ``(layout, parts)``."""
    obj = load_weights_file(path)
    try:
        layout = detect_layout(obj)
        return layout, split_parts(obj, layout)
    except (WeightsError, KeyError, TypeError) as err:
        raise WeightsError(f"{path}: {err}") from None


def _require(path, layout: str, parts: Mapping, needed: Iterable[str]) -> None:
    missing = [p for p in needed if not parts.get(p)]
    if missing:
        raise WeightsError(
            f"{path} (layout {layout}) holds no {', '.join(missing)}; it holds "
            f"{', '.join(sorted(parts)) or 'nothing usable'}"
        )


def read_teacher_trunk(path: str | os.PathLike) -> tuple[str, StateDict]:
    """``(layout, teacher ResNet trunk state dict)`` (torchvision names, no ``fc``) from a MoCo v2
    release, an original teacher file, an original pretraining checkpoint or a torchvision state dict."""
    layout, parts = read_parts(path)
    if layout == SUITE:
        raise WeightsError(
            f"{path} (layout {layout}) does not store the teacher trunk; use the "
            f"teacher file it records under 'teacher'"
        )
    _require(path, layout, parts, ["teacher_trunk"])
    return layout, parts["teacher_trunk"]


def load_stage1_init(path: str | os.PathLike) -> dict[str, StateDict]:
    """``{"student", "student_classifier", "teacher_classifier"}`` to initialise stage 2, from a
    stage-1 extraction, an original pretraining checkpoint or a burn-suite stage checkpoint."""
    layout, parts = read_parts(path)
    _require(path, layout, parts, STAGE1_PARTS)
    return {p: parts[p] for p in STAGE1_PARTS}


def _check_backbone_keys(sd: Mapping, where: str) -> None:
    stray = [k for k in sd if not (k.startswith("feature.") or k.startswith("fc.0."))]
    if stray or not sd:
        raise WeightsError(
            f"{where}: a student backbone has only feature.* and fc.0.* keys; found {stray[:5] or 'no keys'}"
        )


def load_backbone(path: str | os.PathLike) -> StateDict:
    """Student backbone (``feature.*``, ``fc.0.*``) from any layout that holds one."""
    layout, parts = read_parts(path)
    _require(path, layout, parts, ["student"])
    _check_backbone_keys(parts["student"], f"{path} (layout {layout})")
    return parts["student"]


def _cpu_copy(sd: Mapping) -> StateDict:
    # A copy, so a tensor that views a larger storage does not drag that storage into the file.
    return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``.

    A crash or an error leaves either the old file or the new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda stream: torch.save(obj, stream), size=state_nbytes(obj), intact="", sync_dir=True)
    return path


def write_stage1_extraction(path, parts: Mapping[str, Mapping], author: str = DEFAULT_AUTHOR) -> Path:
    """Write the original stage-1 extraction layout from ``{"student", "student_classifier",
    "teacher_classifier"}`` state dicts (atomically)."""
    missing = [p for p in STAGE1_PARTS if p not in parts]
    if missing:
        raise WeightsError(f"{path}: stage-1 extraction needs parts {missing}")
    _check_backbone_keys(parts["student"], f"{path}: student")
    return atomic_torch_save(
        {
            "backbone": {"state_dict": _cpu_copy(parts["student"])},
            "classifier": {"state_dict": _cpu_copy(parts["student_classifier"])},
            "teacher_classifier": {"state_dict": _cpu_copy(parts["teacher_classifier"])},
            "author": str(author),
        },
        path,
    )


def write_backbone_extraction(path, student_sd: Mapping, author: str = DEFAULT_AUTHOR) -> Path:
    """Write the original backbone layout ``{'state_dict': feature.*, fc.0.*, 'author'}``."""
    _check_backbone_keys(student_sd, f"{path}: student")
    return atomic_torch_save({"state_dict": _cpu_copy(student_sd), "author": str(author)}, path)


def count_parameters(sd: Mapping[str, torch.Tensor]) -> int:
    """Elements of the learnable tensors of a state dict (BN running statistics excluded)."""
    return sum(v.numel() for k, v in sd.items() if not k.endswith(_BUFFER_SUFFIXES))


def _inspect(path: str) -> None:
    layout, parts = read_parts(path)
    print(f"{path}: layout {layout} - {LAYOUT_DESCRIPTIONS[layout]}")
    for part, sd in parts.items():
        print(f"  {part:<20} {count_parameters(sd):>14,} parameters  ({len(sd)} tensors)")


def _extract(checkpoint: str, out: str, fmt: str, author: str) -> None:
    if fmt == "stage1":
        written = write_stage1_extraction(out, load_stage1_init(checkpoint), author=author)
    else:
        written = write_backbone_extraction(out, load_backbone(checkpoint), author=author)
    print(f"wrote {written} ({fmt} layout) from {checkpoint}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m burn.weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="name the layout of FILE and count its parameters")
    inspect.add_argument("file")
    extract = sub.add_parser("extract", help="write an original-layout extraction")
    extract.add_argument("checkpoint")
    extract.add_argument("out")
    extract.add_argument("--format", choices=("stage1", "backbone"), required=True)
    extract.add_argument("--author", default=DEFAULT_AUTHOR)
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            _inspect(args.file)
        else:
            _extract(args.checkpoint, args.out, args.format, args.author)
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
