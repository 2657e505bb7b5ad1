"""Frozen teacher: layout, size, eval mode, loading the known files, refusing unsafe ones."""

import pytest
import torch
import torchvision

from burn.models.teacher import Teacher
from burn.weights import WeightsError


def _random_resnet_state(arch="resnet50", seed=0):
    """A torchvision state dict with real key names and random values (BN statistics too)."""
    torch.manual_seed(seed)
    sd = getattr(torchvision.models, arch)(weights=None).state_dict()
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
        elif k.endswith(("running_mean", "bn1.bias", "bn2.bias", "bn3.bias")):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
    return sd


def _trunk_only(sd):
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def test_resnet50_trunk_matches_original_layout_and_size(official_layouts, as_layout):
    teacher = Teacher("resnet50")
    assert as_layout(teacher.trunk.state_dict()) == [tuple(e) for e in official_layouts["teacher_resnet50"]]
    assert sum(p.numel() for p in teacher.parameters()) == 23_508_032
    assert teacher.out_dim == 2048


def test_frozen_and_always_eval():
    torch.manual_seed(0)
    teacher = Teacher("resnet18")
    parent = torch.nn.Sequential(teacher)
    parent.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    stats = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    out = teacher(x)
    assert out.shape == (4, 512) and not out.requires_grad
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, stats[k]), k


def test_moco_release_and_original_teacher_files_give_identical_trunks(tmp_path):
    sd = _random_resnet_state("resnet50")
    trunk = _trunk_only(sd)
    moco = {f"module.encoder_q.{k}": v for k, v in trunk.items()}
    # MoCo v2's MLP head on encoder_q, a different key encoder, and the queue: all ignored.
    moco["module.encoder_q.fc.0.weight"] = torch.randn(2048, 2048)
    moco["module.encoder_q.fc.2.weight"] = torch.randn(128, 2048)
    moco.update({f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in trunk.items()})
    moco["module.queue"] = torch.randn(128, 65536)
    moco["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"state_dict": moco, "arch": "resnet50", "epoch": 800}, tmp_path / "moco.pth.tar")
    assert len(trunk) == 318
    torch.save({"state_dict": trunk}, tmp_path / "teacher.pth")

    from_moco, from_original, fresh = Teacher(), Teacher(), Teacher()
    from_moco.load_weights(tmp_path / "moco.pth.tar")
    from_original.load_weights(tmp_path / "teacher.pth")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a, b = from_moco(x), from_original(x)
    assert torch.isfinite(a).all() and torch.equal(a, b)
    assert not torch.allclose(a, fresh(x))
    assert torch.equal(from_moco.trunk.layer4[2].conv3.weight, sd["layer4.2.conv3.weight"])


@pytest.mark.parametrize("with_fc", [True, False])
def test_plain_torchvision_state_dict_loads(tmp_path, with_fc):
    sd = _random_resnet_state("resnet18", seed=3)
    torch.save(sd if with_fc else _trunk_only(sd), tmp_path / "r18.pth")
    teacher = Teacher("resnet18")
    teacher.load_weights(tmp_path / "r18.pth")
    assert torch.equal(teacher.trunk.conv1.weight, sd["conv1.weight"])


def test_wrong_architecture_names_keys_and_layout(tmp_path):
    torch.save({"state_dict": _trunk_only(_random_resnet_state("resnet18"))}, tmp_path / "r18.pth")
    with pytest.raises(WeightsError) as err:
        Teacher("resnet50").load_weights(tmp_path / "r18.pth")
    msg = str(err.value)
    assert "r18.pth" in msg and "original-teacher" in msg and "resnet50" in msg
    assert "missing" in msg and "layer1.0.conv3.weight" in msg


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    trunk = _trunk_only(_random_resnet_state("resnet18"))
    trunk.pop("layer2.0.bn1.weight")
    trunk["layer9.extra"] = torch.zeros(1)
    torch.save(trunk, tmp_path / "edited.pth")
    with pytest.raises(
        WeightsError,
        match=r"1 missing \['layer2.0.bn1.weight'\].*1 unexpected "
        r"\['layer9.extra'\]",
    ):
        Teacher("resnet18").load_weights(tmp_path / "edited.pth")


class _Payload:
    """Unpickling this runs exec(), which writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    sd = _trunk_only(_random_resnet_state("resnet18"))
    marker = tmp_path / "marker"
    torch.save({"state_dict": sd, "extra": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match=r"evil\.pth.*refused"):
        Teacher("resnet18").load_weights(tmp_path / "evil.pth")
    assert not marker.exists()
    # Control: an unsafe load of the same file does run the payload, so the check above means something.
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert marker.read_text() == "pwned"


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="resnet50"):
        Teacher("vgg16")
