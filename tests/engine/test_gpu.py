"""The speed settings: the folded half-precision teacher, the device-side bad-step count, compile in
place. CPU checks of the logic; CUDA checks where the behaviour only exists there."""

from __future__ import annotations

import pytest
import torch

from burn.engine.gpu import compile_enabled, configure_backends, to_channels_last
from burn.engine.nonfinite import BadStepStreak
from burn.models.teacher import Teacher

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _teacher_with_real_statistics(arch="resnet18") -> Teacher:
    torch.manual_seed(0)
    teacher = Teacher(arch)
    for module in teacher.modules():  # non-trivial BN statistics, or folding is too easy to get right
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return teacher


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_folding_batchnorm_keeps_the_teacher_output_and_drops_every_buffer(arch):
    teacher = _teacher_with_real_statistics(arch)
    x = torch.randn(2, 3, 64, 64)
    expected = teacher(x)
    teacher.fold_batchnorm()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())
    assert list(teacher.buffers()) == []  # nothing for DDP's broadcast_buffers to send
    assert not any(p.requires_grad for p in teacher.parameters())
    got = teacher(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), (got - expected).abs().max()
    assert teacher.fold_batchnorm() is teacher  # folding twice changes nothing
    assert torch.equal(teacher(x), got)


def test_teacher_features_feed_a_trainable_classifier():
    """inference_mode inside, a normal tensor outside: the classifier can save it for backward."""
    teacher = Teacher("resnet18").fold_batchnorm()
    head = torch.nn.Linear(teacher.out_dim, 3)
    features = teacher(torch.randn(2, 3, 32, 32))
    assert not features.is_inference() and not features.requires_grad
    head(features).sum().backward()
    assert head.weight.grad is not None


def test_bad_step_streak_on_the_device_matches_the_host_count():
    pattern = [True, False, False, True, False, False, False, True]
    host, device = BadStepStreak(limit=2), BadStepStreak(limit=2)
    for applied in pattern:
        host.update(applied)
        device.update(torch.tensor(applied))
    assert isinstance(device.worst, torch.Tensor) and int(device.worst) == host.worst == 3
    with pytest.raises(FloatingPointError, match="3 optimizer steps in a row.*step 8.*untouched"):
        device.check(step=8, checkpoint_dir="ckpts")


def test_a_streak_between_checks_is_not_forgotten_after_recovering():
    streak = BadStepStreak(limit=1)
    for applied in [False, False, True, True]:  # too many, then good again before the check
        streak.update(torch.tensor(applied))
    with pytest.raises(FloatingPointError, match="2 optimizer steps in a row"):
        streak.check(step=4, checkpoint_dir="x")
    ok = BadStepStreak(limit=1)
    for applied in [False, True, False]:
        ok.update(torch.tensor(applied))
    ok.check(step=3, checkpoint_dir="x")
    ok.update(torch.tensor(False))  # continues the open streak: 2 in a row now
    with pytest.raises(FloatingPointError, match="2 optimizer steps"):
        ok.check(step=4, checkpoint_dir="x")


def test_channels_last_keeps_per_channel_biases_plainly_strided():
    """DDP's gradient buckets follow the parameters' strides; a [1, C, 1, 1] bias in channels_last
    strides gets a contiguous gradient from autograd, and DDP warns and copies on every step."""
    from burn.models.reactnet import ReActNetA

    student = to_channels_last(ReActNetA(precision="binact", width=0.25))
    biases = [p for p in student.parameters() if p.dim() == 4 and p.shape[0] == 1]
    convs = [p for p in student.parameters() if p.dim() == 4 and p.shape[0] > 1 and p.shape[2] > 1]
    assert biases and convs
    assert all(p.is_contiguous() for p in biases)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    images = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    student(images).float().sum().backward()
    assert all(p.grad.stride() == p.stride() for p in biases)


def test_compile_defaults_to_cuda_only():
    assert compile_enabled(None, torch.device("cpu")) is False
    assert compile_enabled(None, torch.device("cuda", 0)) is True
    assert compile_enabled(False, torch.device("cuda", 0)) is False
    configure_backends(torch.device("cpu"), deterministic=True)  # a no-op on CPU
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.slow  # inductor compiles the student (10-20 s on 2 cores) and may start compile workers
def test_student_compiles_in_place_with_its_state_dict_keys():
    """The binary student (custom sign/STE autograd) traces; aot_eager checks the traced graph and its
    backward without a C++ or Triton compiler. Inductor itself runs in the GPU check."""
    from burn.models.reactnet import ReActNetA

    torch.manual_seed(0)
    eager = ReActNetA(precision="binact", width=0.25)
    compiled = ReActNetA(precision="binact", width=0.25)
    compiled.load_state_dict(eager.state_dict())
    keys = list(compiled.state_dict())
    compiled.compile(backend="aot_eager", fullgraph=False)
    assert list(compiled.state_dict()) == keys
    x = torch.randn(4, 3, 32, 32)
    out_e, out_c = eager(x), compiled(x)
    assert torch.allclose(out_e, out_c, atol=1e-5)
    out_e.square().mean().backward()
    out_c.square().mean().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-4), name


@pytest.mark.gpu
@NEEDS_CUDA
def test_half_teacher_under_fp16_autocast_matches_fp32():
    from burn.engine.gpu import teacher_to_half

    teacher = _teacher_with_real_statistics().cuda()
    x = torch.randn(4, 3, 64, 64, device="cuda")
    reference = teacher(x)
    teacher.fold_batchnorm()
    teacher_to_half(teacher, torch.device("cuda"), torch.float16)
    assert all(p.dtype == torch.float16 for p in teacher.parameters())
    with torch.autocast("cuda", dtype=torch.float16):
        got = teacher(x.half())
    assert got.dtype == torch.float16
    assert torch.allclose(got.float(), reference, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@NEEDS_CUDA
def test_fp16_step_skips_a_nan_update_on_the_device():
    """GradScaler + fused Adam: a NaN gradient leaves the weights alone and `applied` is a device tensor."""
    model = torch.nn.Linear(8, 2).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    before = model.weight.detach().clone()
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(torch.full((4, 8), float("nan"), device="cuda")).float().sum()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    scaler.step(optimizer)
    scaler.update()
    applied = torch.isfinite(norm)
    assert applied.is_cuda and not bool(applied)
    assert torch.equal(model.weight, before)
    assert int(optimizer.state[model.weight]["step"]) == 0  # the skipped step is not counted
