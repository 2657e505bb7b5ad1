"""ReActNet-A student: original layout, sizes, precisions, autocast and channels_last."""

import math

import pytest
import torch

from burn.models.binary import BinaryConv2d, binarize_weight
from burn.models.reactnet import PRECISIONS, ReActBlock, ReActNetA, student_channels

BLOCK_CONVS = ("binary_3x3", "binary_pw", "binary_pw_down1", "binary_pw_down2")


def _block_convs(model):
    return [(name, m) for name, m in model.named_modules() if name.split(".")[-1] in BLOCK_CONVS]


def _count(params):
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_width_one_state_dict_equals_original_release(precision, official_layouts, as_layout):
    model = ReActNetA(precision=precision, width=1.0)
    assert as_layout(model.state_dict()) == [tuple(e) for e in official_layouts["stage1_backbone_binact"]]
    # Hence an original checkpoint loads strictly; shown with layout-shaped random tensors.
    original = {
        n: torch.rand(s) if t == "float32" else torch.tensor(7)
        for n, s, t in official_layouts["stage1_backbone_binact"]
    }
    model.load_state_dict(original, strict=True)
    assert torch.equal(model.feature[13].binary_pw.weight, original["feature.13.binary_pw.weight"])


def test_width_one_parameter_counts():
    model = ReActNetA(precision="binary", width=1.0)
    assert _count(model.parameters()) == 29_368_192
    assert _count(model.feature.parameters()) == 28_318_592
    assert model.out_dim == model.feat_dim == 1024


def test_entries_channels_and_feature_map_sizes():
    model = ReActNetA(precision="fp", width=0.25).eval()
    assert student_channels(1.0) == [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024]
    sizes, x = [], torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for entry in model.feature:
            x = entry(x)
            sizes.append((x.shape[1], x.shape[2]))
    # 224 px gives 112, 112, 56, 56, 28, 28, 14 x6, 7, 7; 64 px gives that divided by 3.5.
    assert [s for _, s in sizes] == [32, 32, 16, 16, 8, 8] + [4] * 6 + [2, 2]
    assert [c for c, _ in sizes] == student_channels(0.25)
    strides = [e.stride for e in model.feature[1:]]
    assert [i + 1 for i, s in enumerate(strides) if s == 2] == [2, 4, 6, 12]


@pytest.mark.parametrize("width,stem", [(0.5, 16), (0.3, 10), (0.01, 1)])
def test_width_multiplier_rounds_stem_and_keeps_doubling_exact(width, stem):
    channels = student_channels(width)
    assert channels[0] == stem and channels[-1] == 32 * stem
    model = ReActNetA(precision="binary", width=width)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 32 * stem)
    with pytest.raises(ValueError, match="width"):
        student_channels(0)


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        ReActNetA(precision="ternary")


def _record_block_conv_io(model):
    records, handles = [], []
    for name, conv in _block_convs(model):

        def hook(module, inputs, output, name=name):
            records.append((name, module, inputs[0].detach(), output.detach()))

        handles.append(conv.register_forward_hook(hook))
    return records, handles


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_precisions_binarise_what_they_promise(precision):
    torch.manual_seed(0)
    model = ReActNetA(precision=precision, width=0.125)
    records, _ = _record_block_conv_io(model)
    stem_inputs = []

    def record_stem(module, inputs, output):
        stem_inputs.append(inputs[0])

    model.feature[0].conv1.register_forward_hook(record_stem)
    model(torch.randn(2, 3, 32, 32))
    assert len(records) == 13 * 2 + 5  # 3x3 + 1x1 per block, a second 1x1 in the 5 doubling blocks
    for name, conv, inp, out in records:
        binary_inputs = set(inp.unique().tolist()) <= {-1.0, 1.0}
        assert binary_inputs == (precision != "fp"), name
        assert isinstance(conv, BinaryConv2d) == (precision == "binary"), name
        weight = binarize_weight(conv.weight) if precision == "binary" else conv.weight
        expected = torch.nn.functional.conv2d(inp, weight.detach(), None, conv.stride, conv.padding)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # Effective binary weights take two values per output channel: +-mean(|W|).
    if precision == "binary":
        w = model.feature[5].binary_3x3.weight.detach()
        wb = binarize_weight(w)
        assert torch.equal(wb.abs().amax(dim=(1, 2, 3)), wb.abs().amin(dim=(1, 2, 3)))
    # Entry 0 and the head stay real-valued.
    assert type(model.feature[0].conv1) is torch.nn.Conv2d
    assert len(stem_inputs[0].unique()) > 2


def test_activation_gradient_is_masked_outside_unit_interval():
    torch.manual_seed(1)
    block = ReActBlock(8, 8, 1, *PRECISIONS["binact"])
    seen = []  # (input of the sign, gradient reaching that input), both sign calls of the block

    def record_sign_input(module, inputs, output):
        x = inputs[0]
        x.register_hook(lambda grad: seen.append((x.detach(), grad)))

    block.act.register_forward_hook(record_sign_input)
    x = (torch.randn(2, 8, 6, 6) * 2).requires_grad_(True)
    block(x).square().sum().backward()
    assert len(seen) == 2
    for sign_input, grad in seen:
        outside = sign_input.abs() > 1
        assert outside.any() and (~outside).any()
        assert not grad[outside].any()
        assert grad[~outside].abs().sum() > 0


def test_kaiming_fan_in_init():
    torch.manual_seed(0)
    model = ReActNetA(precision="binact", width=0.5)
    w = model.feature[10].binary_3x3.weight
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / (w.shape[1] * 9)), rel=0.05)
    assert torch.all(model.feature[3].bn1.weight == 1) and not model.feature[3].bn1.bias.any()
    assert torch.all(model.feature[3].prelu1.weight == 0.25)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("precision", ["binact", "binary"])
def test_autocast_forward_backward(precision, dtype):
    torch.manual_seed(0)
    model = ReActNetA(precision=precision, width=0.125)
    with torch.autocast("cpu", dtype=dtype):
        out = model(torch.randn(4, 3, 32, 32))
    assert out.dtype == dtype
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_channels_last_matches_contiguous(precision):
    torch.manual_seed(0)
    model = ReActNetA(precision=precision, width=0.125).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
