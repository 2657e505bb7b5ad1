"""What a stage checkpoints: a mapping name -> object with ``state_dict()`` / ``load_state_dict()``.

A stage's parts hold such objects by name (`StageParts.states`, burn.engine.parts: torchtitan's
"Stateful" objects); the loop saves each entry under its name and restores it from there, without
knowing what the objects are (burn.engine.loop).
Optimizers, GradScalers, schedulers and loaders are such objects already; this module adapts the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from torch import nn

from burn.engine.distributed import rng_state, set_rng_state


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any) -> None: ...


class ModuleParts:
    """The state of named modules, ``{name: module.state_dict()}``: the trained parts of a model, under
    the names the weight extraction reads (burn.weights). Restored strictly, every part."""

    def __init__(self, modules: Mapping[str, nn.Module]):
        self.modules = dict(modules)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {name: module.state_dict() for name, module in self.modules.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if set(state_dict) != set(self.modules):
            raise KeyError(f"expected parts {sorted(self.modules)}, got {sorted(state_dict)}")
        for name, module in self.modules.items():
            module.load_state_dict(state_dict[name], strict=True)


class ProcessRng:
    """This process's python, numpy, torch (and CUDA) RNG streams; every rank has its own."""

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_state(state_dict)
