"""Linear-evaluation scoring: counts stay on the logits' device (CPU here, CUDA where there is one)."""

from __future__ import annotations

import pytest
import torch

from burn.engine.linear import topk_hits


def _dali_importable() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_topk_hits_counts_on_the_device(device):
    logits = torch.zeros(4, 7, device=device)
    logits[0, 2] = 9  # sample 0: label 2 is top-1
    logits[1, :5] = torch.tensor([5.0, 4, 3, 2, 1], device=device)  # sample 1: label 4 is 5th
    logits[2, 1:7] = 1  # sample 2: label 0 is below six higher logits
    logits[3, 3] = 9
    labels = torch.tensor([2, 4, 0, 3], device=device)
    counts = topk_hits(logits, labels)
    assert counts.device.type == device and counts.dtype == torch.float64
    assert counts.tolist() == [2.0, 3.0, 4.0]


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("dali", marks=pytest.mark.skipif(not _dali_importable(), reason="DALI is not installed")),
        "torchvision",
    ],
)
def test_linear_stage_on_the_gpu_writes_its_results(cli, tmp_path, backend):
    """The whole linear stage on CUDA (fp16), including the final evaluation that used to crash, with
    each loader (an air-gapped GPU node may have no DALI)."""
    import json

    from burn.models.reactnet import ReActNetA
    from burn.weights import write_backbone_extraction

    student = ReActNetA(precision="binary", width=0.25)
    backbone = write_backbone_extraction(tmp_path / "backbone.pth", student.state_dict())
    run_dir = tmp_path / "linear"
    overrides = cli.overrides(
        run_dir, "stage=linear", f"pretrained={backbone}", "steps=3", "train.precision=fp16", f"data.backend={backend}"
    )
    assert cli.run(overrides, "linear") == [0], cli.log("linear")
    results = json.loads((run_dir / "linear_eval.json").read_text())
    assert results["num_samples"] == 100 and 0 <= results["top1"] <= results["top5"] <= 100
    assert (run_dir / "DONE").exists()
