"""An auto teacher's report in words (torch-free: the launcher prints it after the demo's numbers).

burn/demo/auto_teacher.py writes ``<teacher>.json`` beside every teacher it trains: its objective and
its quality, the k-NN top-1 of its features (both objectives) and its classifier's top-1 (supervised).
"""

from __future__ import annotations

import json
from pathlib import Path


def quality(report: dict) -> str:
    """A teacher report's quality in words: its classifier's top-1 (supervised) or, label-free, the
    k-NN top-1 of its features (val against train)."""
    if report.get("objective", "supervised") == "supervised" and "val_top1" in report:
        return f"supervised, val top-1 {report['val_top1']:.1f}%"
    return f"label-free (never saw a label), val k-NN top-1 {report['val_knn_top1']:.1f}%"


def teacher_quality(path: str | None) -> str:
    """What the student learnt from, in words: an auto teacher's kind and quality from the report
    beside its file (:func:`quality`), else the file's name (a user's own teacher) or a random trunk."""
    if not path:
        return "a random trunk (model.teacher_weights=null)"
    report = Path(path).with_suffix(".json")
    try:
        return f"{Path(path).name}: {quality(json.loads(report.read_text()))}"
    except (OSError, ValueError, KeyError):
        return Path(path).name
