"""Each speed-up in medvlm.modeling.kernels equals its plain reference: values and gradients."""

import pytest
import torch

from medvlm.modeling.kernels import (
    FEW_ROWS, IGNORE_INDEX, FewRowLinear, LinearCrossEntropy, caption_cross_entropy, caption_cross_entropy_reference,
    few_row_linear, linear_reference,
)


def values_and_gradients(fn, leaves: list[torch.Tensor | None], *args):
    """fn(*leaves, *args) and the gradient of each leaf, back from a fixed upstream gradient
    other than 1 (3 for a scalar, seeded random values otherwise)."""
    leaves = [leaf.clone().requires_grad_() if leaf is not None else None for leaf in leaves]
    out = fn(*leaves, *args)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) if out.ndim else 3.0
    (out * upstream).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves if leaf is not None]


@pytest.mark.parametrize("rows", [1, 2, 8, FEW_ROWS + 1])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("three_d", [False, True])
def test_few_row_linear_equals_f_linear_with_gradients(rows, with_bias, three_d):
    torch.manual_seed(0)
    shape = (1, rows, 24) if three_d else (rows, 24)
    leaves = [torch.randn(*shape), torch.randn(40, 24), torch.randn(40) if with_bias else None]
    ours, our_grads = values_and_gradients(few_row_linear, leaves)
    reference, reference_grads = values_and_gradients(linear_reference, leaves)
    assert ours.shape == reference.shape == (*shape[:-1], 40)
    assert ours.is_contiguous()
    torch.testing.assert_close(ours, reference)
    assert len(our_grads) == (3 if with_bias else 2)
    for a, b in zip(our_grads, reference_grads):
        torch.testing.assert_close(a, b)


def test_few_row_linear_is_f_linear_outside_its_case():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 3, 24, dtype=torch.float64), torch.randn(40, 24, dtype=torch.float64), None
    assert torch.equal(few_row_linear(x, weight, bias), linear_reference(x, weight, bias))  # float64: F.linear itself
    layer = FewRowLinear(24, 40)
    assert list(layer.state_dict()) == ["weight", "bias"]  # the keys of an nn.Linear
    x = torch.randn(1, 1, 24)
    torch.testing.assert_close(layer(x), linear_reference(x, layer.weight, layer.bias))


def caption_targets(N: int, V: int) -> torch.Tensor:
    targets = torch.randint(0, V, (N,))
    targets[5:9] = IGNORE_INDEX  # pads or prompt tokens
    targets[-3:] = IGNORE_INDEX
    return targets


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_chunked_cross_entropy_equals_full_logits_with_gradients(monkeypatch, label_smoothing, with_bias):
    monkeypatch.setattr(LinearCrossEntropy, "CHUNK", 7)  # several chunks, the last one short
    torch.manual_seed(0)
    N, D, V = 24, 16, 50
    targets = caption_targets(N, V)
    leaves = [torch.randn(N, D), torch.randn(V, D) * 0.5, torch.randn(V) if with_bias else None]
    ours, our_grads = values_and_gradients(caption_cross_entropy, leaves, targets, label_smoothing)
    reference, reference_grads = values_and_gradients(caption_cross_entropy_reference, leaves, targets,
                                                      label_smoothing)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    for a, b in zip(our_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_cross_entropy_with_every_target_ignored_is_zero():
    hidden, weight = torch.randn(4, 8, requires_grad=True), torch.randn(20, 8)
    targets = torch.full((4,), IGNORE_INDEX)
    loss = caption_cross_entropy(hidden, weight, None, targets)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert float(hidden.grad.abs().sum()) == 0.0


def test_chunked_cross_entropy_under_bf16_autocast_is_close_and_keeps_float32_gradients():
    torch.manual_seed(0)
    leaves = [torch.randn(12, 16), torch.randn(40, 16), torch.zeros(40)]
    targets = torch.randint(0, 40, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, grads = values_and_gradients(caption_cross_entropy, leaves, targets)
    reference, _ = values_and_gradients(caption_cross_entropy_reference, leaves, targets)
    assert ours.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    assert abs(ours.item() - reference.item()) < 0.05 * reference.item()
