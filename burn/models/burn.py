"""BurnModel: the student and its classifier learn to match a frozen teacher trunk followed by a
trainable teacher classifier (the paper's jointly trained "moving target")."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from burn.config import TEACHER_CLASSIFIER_MODES
from burn.models.heads import Classifier
from burn.models.reactnet import ReActNetA
from burn.models.teacher import Teacher
from burn.objective import burn_loss

TRAINABLE_PARTS = ("student", "student_classifier", "teacher_classifier")


class BurnModel(nn.Module):
    """Student backbone + classifier, frozen teacher trunk + trainable teacher classifier.

    ``forward(view1, view2, lam, temperature)`` returns ``{"loss", "kl", "fs"}`` (0-dim float32
    tensors, see :func:`burn.objective.burn_loss`) and ``"student_out"`` / ``"teacher_out"``, the two
    classifiers' detached outputs of both views stacked, ``(2N, K)`` (for the collapse monitor). The
    loss reaches the student, the student classifier and the teacher classifier; the teacher trunk
    runs in eval mode under ``no_grad`` and neither trains nor updates its BatchNorm statistics.

    With ``target_momentum`` (model.teacher_classifier=ema) the student's target is not the teacher
    classifier but ``target_classifier``, an exponential moving average of it (:meth:`update_target`
    after every optimizer step), which no gradient reaches; the teacher classifier itself still trains on
    the same objective, against the student's outputs detached. ``kl`` and ``fs`` are then the student's
    terms (against the average) and ``loss`` the sum of both sides' losses.

    Batching of the two views: the student and both classifiers see each view as its own batch, so
    every BatchNorm normalises one view with that view's statistics over N images, as the original
    implementation did (it runs the views separately) and as the paper's per-GPU N assumes.
    Concatenating the views would mix both views' statistics in each BN and change the method. The
    teacher trunk, in eval mode, uses its running statistics only, so it takes both views as one
    concatenated batch: identical result, one larger (faster) forward.
    """

    def __init__(
        self,
        student: nn.Module,
        student_classifier: nn.Module,
        teacher: Teacher,
        teacher_classifier: nn.Module,
        center_target: bool = False,
        target_momentum: float | None = None,
    ):
        super().__init__()
        self.center_target = center_target
        self.student = student
        self.student_classifier = student_classifier
        self.teacher = teacher
        self.teacher_classifier = teacher_classifier
        self.target_momentum = target_momentum
        self.target_classifier: nn.Module | None = None
        if target_momentum is not None:
            self.target_classifier = copy.deepcopy(teacher_classifier).requires_grad_(False)

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor, lam: float | torch.Tensor, temperature: float = 0.2
    ) -> dict[str, torch.Tensor]:
        if view1.shape != view2.shape:
            raise ValueError(f"views differ in shape: {tuple(view1.shape)} vs {tuple(view2.shape)}")
        teacher_features = self.teacher(torch.cat([view1, view2])).chunk(2)
        t1, t2 = online = self._targets(self.teacher_classifier, teacher_features)
        p1, p2 = (self.student_classifier(self.student(v)) for v in (view1, view2))
        if self.target_classifier is None:
            loss, kl, fs = burn_loss(p1, p2, t1, t2, lam, temperature)
        else:  # the student learns the average; the teacher classifier the student as it is
            with torch.no_grad():
                t1, t2 = self._targets(self.target_classifier, teacher_features)
            loss, kl, fs = burn_loss(p1, p2, t1, t2, lam, temperature)
            loss = loss + burn_loss(p1.detach(), p2.detach(), *online, lam, temperature)[0]
        # Detached classifier outputs (both views) for the collapse monitor: no graph is kept alive.
        return {
            "loss": loss,
            "kl": kl,
            "fs": fs,
            "student_out": torch.cat([p1, p2]).detach(),
            "teacher_out": torch.cat([t1, t2]).detach(),
        }

    def _targets(self, classifier: nn.Module, features: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        outs = tuple(classifier(f) for f in features)
        if self.center_target:  # per view, like the classifiers' BatchNorm
            outs = tuple(t - t.mean(dim=0, keepdim=True) for t in outs)
        return outs

    @torch.no_grad()
    def update_target(self, applied: bool | torch.Tensor = True) -> None:
        """After an optimizer step (ema): the target moves ``1 - target_momentum`` of the way to the teacher
        classifier, not at all when the step was skipped (``applied``: a bool, or a device tensor under a
        GradScaler, read without a host sync). BatchNorm's running statistics are copied: in training the
        target normalises with batch statistics, as the classifier does."""
        if self.target_classifier is None:
            return
        rate = 1.0 - self.target_momentum
        weight = applied.to(torch.float32) * rate if torch.is_tensor(applied) else rate * bool(applied)
        for target, current in zip(self.target_classifier.parameters(), self.teacher_classifier.parameters()):
            target.lerp_(current, weight)
        for target, current in zip(self.target_classifier.buffers(), self.teacher_classifier.buffers()):
            target.copy_(current)

    @torch.no_grad()
    def reset_target(self) -> None:
        """The target becomes the teacher classifier as it is (a stage's start, from its initial weights)."""
        if self.target_classifier is not None:
            self.target_classifier.load_state_dict(self.teacher_classifier.state_dict())

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in TRAINABLE_PARTS}

    def param_groups(self, lr: float, teacher_classifier_lr_scale: float) -> list[dict[str, Any]]:
        """Optimizer groups: the student side at ``lr``, the teacher classifier (when it trains) at
        ``lr * teacher_classifier_lr_scale``, a slowly moving target (docs/moving-target.md).
        Schedules multiply both alike."""
        groups = [
            {
                "name": "student",
                "lr": lr,
                "params": [
                    p for m in (self.student, self.student_classifier) for p in m.parameters() if p.requires_grad
                ],
            }
        ]
        teacher_head = [p for p in self.teacher_classifier.parameters() if p.requires_grad]
        if teacher_head:
            groups.append(
                {"name": "teacher_classifier", "lr": lr * teacher_classifier_lr_scale, "params": teacher_head}
            )
        return groups

    def trainable_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"student", "student_classifier", "teacher_classifier"}`` state dicts (original names)."""
        return {name: module.state_dict() for name, module in self.trainable_modules().items()}

    def load_trainable_state_dicts(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Strict inverse of :meth:`trainable_state_dicts`."""
        if set(state) != set(TRAINABLE_PARTS):
            raise KeyError(f"expected parts {sorted(TRAINABLE_PARTS)}, got {sorted(state)}")
        for name, module in self.trainable_modules().items():
            module.load_state_dict(state[name], strict=True)


def build_burn_model(model_cfg, precision: str) -> BurnModel:
    """Build a BurnModel from a ModelConfig (dataclass or DictConfig with its fields).

    Both classifiers are freshly Kaiming-initialised; the teacher trunk loads
    ``model_cfg.teacher_weights`` when given (random otherwise: tiny presets and tests only).
    """
    student = ReActNetA(precision=precision, width=model_cfg.width)
    teacher = Teacher(model_cfg.teacher_arch)
    if model_cfg.teacher_weights:
        teacher.load_weights(model_cfg.teacher_weights)
    hidden, out = model_cfg.classifier_hidden, model_cfg.classifier_out
    mode = model_cfg.teacher_classifier
    if mode not in TEACHER_CLASSIFIER_MODES:
        raise ValueError(f"model.teacher_classifier={mode!r}: choose one of {', '.join(TEACHER_CLASSIFIER_MODES)}")
    teacher_classifier = Classifier(teacher.out_dim, hidden, out)
    if mode == "frozen":  # a fixed random target; its BN still normalises with batch statistics
        teacher_classifier.requires_grad_(False)
    return BurnModel(
        student=student,
        student_classifier=Classifier(student.out_dim, hidden, out),
        teacher=teacher,
        teacher_classifier=teacher_classifier,
        center_target=bool(model_cfg.center_target),
        target_momentum=float(model_cfg.target_momentum) if mode == "ema" else None,
    )
