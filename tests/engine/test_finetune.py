"""stage=finetune: its config, checks and model (in-process), and its exact resume through a real preemption
(2 ranks of one gloo group, a real SIGUSR2, real TensorBoard files)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from burn.config import IDENTITY, keys_with_role, register_configs
from burn.demo.synthetic import generate_dataset
from burn.engine.distributed import DistInfo
from burn.engine.finetune import FinetuneModel, build_optimizer
from burn.models.reactnet import ReActNetA
from burn.resume.signals import REQUEUE_EXIT_CODE
from burn.runtime.errors import UsageError
from burn.validation import check_batch, check_data, check_pretrained, check_values, pretrained_backbone, stage_splits
from burn.weights import load_backbone, write_backbone_extraction
from tests.configs import compose_paper, compose_tiny

register_configs()


@pytest.fixture
def small_data(tmp_path) -> Path:
    """3 classes of 8-px JPEGs, made in this process (the generator's lists, 10% subset included)."""
    return generate_dataset(tmp_path / "data", classes=3, per_class=10, val_per_class=2, size=8)


# ---- config and checks (in-process) ------------------------------------------------------------------
def test_the_finetune_recipe_is_identity_for_finetune_only_and_shares_the_class_count():
    finetune, linear = keys_with_role(IDENTITY, "finetune"), keys_with_role(IDENTITY, "linear")
    for key in ("finetune.lr", "finetune.head_lr_scale", "finetune.weight_decay", "finetune.milestones"):
        assert key in finetune and key not in linear, key
    assert "linear.num_classes" in finetune and "linear.num_classes" in linear  # one key, both heads
    assert "linear.lr" not in finetune and "optim" not in finetune
    cfg = compose_tiny("stage=finetune", "linear.num_classes=7")  # the command-line key still works
    assert cfg.linear.num_classes == 7 and stage_splits(cfg) == ["train_labeled", "val"]


def test_paper_preset_is_the_semi_supervised_protocol():
    ft = compose_paper("data.root=/x").finetune
    assert (ft.epochs, list(ft.milestones), ft.gamma, ft.momentum) == (20, [12, 16], 0.2, 0.9)
    assert (ft.global_batch, ft.lr, ft.head_lr_scale, ft.weight_decay) == (256, 0.01, 1, 5e-4)


def test_finetune_needs_a_start_and_reads_a_stage2_run_dir(tmp_path):
    with pytest.raises(UsageError, match="stage=finetune needs pretrained=: a backbone .* pretrained=random"):
        check_pretrained(compose_tiny("stage=finetune"))
    check_pretrained(compose_tiny("stage=finetune", "pretrained=random"))
    empty = tmp_path / "stage2"
    empty.mkdir()
    with pytest.raises(UsageError, match=f"pretrained={empty}: a directory without backbone.pth"):
        check_pretrained(compose_tiny("stage=finetune", f"pretrained={empty}"))
    backbone = write_backbone_extraction(empty / "backbone.pth", ReActNetA("binary", width=0.25).state_dict())
    check_pretrained(compose_tiny("stage=finetune", f"pretrained={empty}"))
    assert pretrained_backbone(str(empty)) == str(backbone)  # a stage-2 run dir: its backbone.pth
    assert pretrained_backbone(str(tmp_path)) == str(backbone)  # a stage=all run dir: stage2/backbone.pth
    with pytest.raises(UsageError, match="finetune.global_batch=63 cannot be split over 2 ranks"):
        check_batch(compose_tiny("stage=finetune", "finetune.global_batch=63"), 2)
    with pytest.raises(UsageError, match="finetune.head_lr_scale=0.0: must be positive"):
        check_values(compose_tiny("stage=finetune", "finetune.head_lr_scale=0", "data.root=/x"))


def test_a_label_outside_linear_num_classes_is_one_line_naming_the_key_and_the_line(small_data):
    cfg = compose_tiny("stage=finetune", f"data.root={small_data}", "linear.num_classes=2")
    with pytest.raises(UsageError) as refused:
        check_data(cfg)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("linear.num_classes=2: ")
    assert "train_labeled.txt line 21 has label 2 (and 9 more), outside 0..1" in message
    assert "set linear.num_classes=3" in message
    check_data(compose_tiny("stage=finetune", f"data.root={small_data}", "linear.num_classes=3"))
    check_data(compose_tiny("stage=1", f"data.root={small_data}", "linear.num_classes=2"))  # not read there


def test_every_layer_trains_but_the_unused_mlp_head_and_the_head_lr_is_scaled():
    torch.manual_seed(0)
    model = FinetuneModel(ReActNetA("binary", width=0.125), num_classes=5)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all(name.startswith("backbone.fc.") for name, p in model.named_parameters() if not p.requires_grad)
    assert {"head.weight", "head.bias", "backbone.feature.0.bn1.weight"} <= trainable
    assert any("binary_3x3" in name for name in trainable)  # the latent real weights of the binary convs
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert model.backbone.feature[1].binary_3x3.weight.grad.abs().sum() > 0  # straight-through sign
    cfg = compose_tiny("stage=finetune", "finetune.lr=0.02", "finetune.head_lr_scale=10")
    optimizer = build_optimizer(cfg, DistInfo(0, 1, 0, torch.device("cpu"), None), model)
    backbone, head = optimizer.param_groups
    assert backbone["lr"] == 0.02 and head["lr"] == pytest.approx(0.2)
    assert {id(p) for p in head["params"]} == {id(model.head.weight), id(model.head.bias)}
    assert all(g["weight_decay"] == cfg.finetune.weight_decay and g["momentum"] == 0.9 for g in (backbone, head))


# ---- exact resume through a real preemption ----------------------------------------------------------
STEPS = 12
# 2 ranks x 2 images x 4 micro-batches = 16 per step on the 10% list (40 images): 2 steps per epoch, a
# validation every 4 steps (finetune/val), the lr x0.2 at steps 7 and 10.
RUN = [
    "stage=finetune",
    f"steps={STEPS}",
    "data.train_labeled_list=meta/train_labeled_10pct.txt",
    "finetune.global_batch=16",
    "finetune.per_gpu_batch=2",
    "finetune.eval_every_epochs=2",
    # Small steps: on 2 images per rank a random backbone's gradients are large (norm ~3e3 at step 1), and the
    # tiny preset's lr 1e-3 (head x10) diverged to a NaN loss by step 11 (NaN != NaN: the curves could not match).
    "finetune.lr=1e-4",
    "finetune.head_lr_scale=1",
    "checkpoint.every_steps=5",
    "log.every_steps=1",
]


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _progress_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "progress.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


@pytest.mark.slow
def test_a_preempted_finetune_stage_resumes_to_the_same_bits(cli, tmp_path):
    """Fine-tuning a pretrained backbone (given as its stage-2 run dir), preempted mid-run on one rank and
    resumed, ends with the uninterrupted run's weights (backbone, BN statistics, head), its loss, lr and
    validation curves, and its finetune_eval.json scores."""
    torch.manual_seed(1)
    stage2 = tmp_path / "stage2"
    stage2.mkdir()
    write_backbone_extraction(stage2 / "backbone.pth", ReActNetA("binary", width=0.25).state_dict())
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run = [*RUN, f"pretrained={stage2}"]
    assert cli.run(cli.overrides(straight, *run), "straight", world_size=2) == [0, 0], cli.log("straight")

    procs = cli.start(cli.overrides(interrupted, *run), "first", world_size=2)
    deadline = time.time() + 300
    while _progress_step(interrupted) < 5:
        assert time.time() < deadline, cli.log("first")
        assert all(p.poll() is None for p in procs), f"run ended before the signal:\n{cli.log('first')}"
        time.sleep(0.01)
    procs[0].send_signal(__import__("signal").SIGUSR2)  # rank 0 only: the all-reduced flag stops rank 1 too
    assert cli.wait(procs) == [REQUEUE_EXIT_CODE] * 2, (cli.log("first"), cli.log("first", 1))
    stopped = json.loads((interrupted / "progress.json").read_text())
    assert stopped["state"] == "preempted" and 5 <= stopped["step"] < STEPS
    assert cli.run(cli.overrides(interrupted, *run), "final", world_size=2) == [0, 0], cli.log("final")
    assert "resuming from" in cli.log("final")

    last = f"checkpoints/ckpt-{STEPS:08d}.pt"
    a = torch.load(straight / last, weights_only=True)["model"]
    b = torch.load(interrupted / last, weights_only=True)["model"]
    assert a.keys() == b.keys() == {"student", "head"}
    for part in a:
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    assert not torch.equal(
        a["student"]["feature.1.binary_3x3.weight"],
        load_backbone(stage2 / "backbone.pth")["feature.1.binary_3x3.weight"],
    ), "the backbone did not train"
    for tag in ("finetune/loss", "finetune/optim/lr"):
        curve = _scalars(interrupted, tag)
        assert [s for s, _ in curve] == list(range(1, STEPS + 1)) and curve == _scalars(straight, tag), tag
        assert all(math.isfinite(v) for _, v in curve), (tag, curve)
    val = _scalars(interrupted, "finetune/val/top1")
    assert [s for s, _ in val] == [4, 8, 12] and val == _scalars(straight, "finetune/val/top1")
    results = [json.loads((d / "finetune_eval.json").read_text()) for d in (straight, interrupted)]
    assert results[0]["top1"] == results[1]["top1"] and results[0]["top5"] == results[1]["top5"]
    assert results[1]["labeled_images"] == 40 and results[1]["labeled_list"].endswith("train_labeled_10pct.txt")
    assert results[1]["pretrained"] == str(stage2 / "backbone.pth")  # the entry wrote the file the dir names
    assert results[1]["recipe"]["global_batch"] == 16 and results[1]["recipe"]["steps"] == STEPS


def _dali_importable() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize(
    "device, backend, precision",
    [
        ("cpu", "torchvision", "fp32"),
        pytest.param(
            "cuda",
            "dali",
            "fp16",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
                pytest.mark.skipif(not _dali_importable(), reason="DALI is not installed"),
            ],
        ),
        pytest.param(
            "cuda",
            "torchvision",
            "fp16",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
        ),
    ],
)
def test_the_finetune_stage_writes_its_results_with_each_loader(cli, tmp_path, device, backend, precision):
    """The whole stage with the torchvision fallback on CPU (the resume test above reads with DALI), and on
    CUDA with fp16 and each loader: finetune_eval.json holds the scores, the list, its size and the recipe."""
    run_dir = tmp_path / "finetune"
    overrides = cli.overrides(
        run_dir,
        "stage=finetune",
        "pretrained=random",
        "steps=3",
        "finetune.eval_every_epochs=0",
        f"data.backend={backend}",
        f"train.precision={precision}",
    )
    assert cli.run(overrides, "finetune") == [0], cli.log("finetune")
    results = json.loads((run_dir / "finetune_eval.json").read_text())
    assert results["num_samples"] == 100 and 0 <= results["top1"] <= results["top5"] <= 100
    assert results["labeled_images"] == 400 and results["labeled_list"].endswith("meta/train_labeled.txt")
    assert results["recipe"]["precision"] == precision and results["recipe"]["steps"] == 3
    assert (run_dir / "DONE").exists()
