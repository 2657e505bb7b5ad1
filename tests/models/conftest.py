"""Shared fixtures of the model tests: the original release's parameter layouts."""

import json
from pathlib import Path

import pytest

LAYOUTS_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "official_layouts.json"


@pytest.fixture(scope="session")
def official_layouts():
    """The layouts JSON: {name: [[param name, shape, dtype], ...], ...}."""
    return json.loads(LAYOUTS_FILE.read_text())


def layout_of(state_dict):
    """A state dict as the layouts file writes it: [(name, shape, dtype), ...] in order."""
    return [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state_dict.items()]


@pytest.fixture(scope="session")
def as_layout():
    return layout_of
