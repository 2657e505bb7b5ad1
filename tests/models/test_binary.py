"""Sign functions, straight-through gradients and the binary conv."""

import pytest
import torch

from burn.models.binary import (
    BinaryConv2d,
    LearnableBias,
    binarize_activation,
    binarize_weight,
    weight_scale,
)


def test_activation_sign_is_plus_minus_one_with_clipped_gradient():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    y = binarize_activation(x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    y.backward(torch.arange(1.0, 8.0))
    # Gradient passes where |x| <= 1 (boundaries included), zero elsewhere.
    assert x.grad.tolist() == [0, 2, 3, 4, 5, 6, 0]


def test_weight_binarisation_is_scaled_sign_with_identity_gradient_and_detached_scale():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    wb = binarize_weight(w)
    scale = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(wb.abs(), scale.expand_as(w))
    assert torch.equal(torch.sign(wb), torch.where(w >= 0, 1.0, -1.0))
    g = torch.randn_like(w)
    wb.backward(g)
    # Identity through the sign, the scale a constant: dL/dW = scale * dL/dWb exactly.
    # A scale that kept its graph would add sum(g * sign(W)) * sign(W) / n.
    torch.testing.assert_close(w.grad, g * scale)


def test_weight_scale_is_per_output_channel():
    w = torch.zeros(2, 1, 2, 2)
    w[0] = 3.0
    w[1] = -0.5
    assert weight_scale(w).flatten().tolist() == [3.0, 0.5]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_sign_functions_keep_dtype_and_gradient_dtype(dtype):
    x = (torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2).to(dtype)
    x.requires_grad_(True)
    y = binarize_activation(x)
    assert y.dtype == dtype
    assert set(y.unique().tolist()) <= {-1.0, 1.0}
    y.sum().backward()
    assert x.grad.dtype == dtype
    assert torch.equal(x.grad, (x.detach().abs() <= 1).to(dtype))
    assert binarize_weight(x.detach()).dtype == dtype


def test_channels_last_is_preserved():
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    assert binarize_activation(x).is_contiguous(memory_format=torch.channels_last)
    conv = BinaryConv2d(8, 8, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    assert conv(x).is_contiguous(memory_format=torch.channels_last)


def test_binary_conv_equals_float_conv_with_binarised_weight():
    torch.manual_seed(2)
    conv = BinaryConv2d(3, 5, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 6, 6)
    expected = torch.nn.functional.conv2d(x, binarize_weight(conv.weight.detach()), padding=1)
    torch.testing.assert_close(conv(x), expected)
    assert list(conv.state_dict()) == ["weight"]


def test_learnable_bias_shape_zero_init_and_dtype():
    mb = LearnableBias(4)
    assert mb.bias.shape == (1, 4, 1, 1) and not mb.bias.any()
    x = torch.randn(1, 4, 2, 2, dtype=torch.bfloat16)
    assert mb(x).dtype == torch.bfloat16
