"""Each speed-up in medvlm.modeling.kernels equals its plain reference: values and gradients."""

import pytest
import torch

from medvlm.modeling.kernels import (
    FEW_ROW_FORMS, FEW_ROWS, FORM_ENV, IGNORE_INDEX, MIN_CHOSEN_WEIGHT, TRIALS_PER_FORM, FewRowLinear,
    LinearCrossEntropy, caption_cross_entropy, caption_cross_entropy_reference, choose_forms_now, few_row_linear,
    form_choices,
    linear_reference, reset_form_choices,
)


def values_and_gradients(fn, leaves: list[torch.Tensor | None], *args):
    """fn(*leaves, *args) and the gradient of each leaf, back from a fixed upstream gradient
    other than 1 (3 for a scalar, seeded random values otherwise)."""
    leaves = [leaf.clone().requires_grad_() if leaf is not None else None for leaf in leaves]
    out = fn(*leaves, *args)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) if out.ndim else 3.0
    (out * upstream).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves if leaf is not None]


@pytest.mark.parametrize("form", sorted(FEW_ROW_FORMS))
@pytest.mark.parametrize("rows", [1, 2, 8, FEW_ROWS + 1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_every_few_row_form_equals_f_linear_with_gradients(form, rows, with_bias):
    torch.manual_seed(0)
    leaves = [torch.randn(rows, 24), torch.randn(40, 24), torch.randn(40) if with_bias else None]
    ours, our_grads = values_and_gradients(FEW_ROW_FORMS[form], leaves)
    reference, reference_grads = values_and_gradients(linear_reference, leaves)
    assert ours.shape == reference.shape == (rows, 40)
    assert ours.is_contiguous()
    torch.testing.assert_close(ours, reference)
    assert len(our_grads) == (3 if with_bias else 2)
    for a, b in zip(our_grads, reference_grads):
        torch.testing.assert_close(a, b)


@pytest.fixture
def fresh_choices(monkeypatch):
    monkeypatch.delenv(FORM_ENV, raising=False)
    reset_form_choices()
    yield
    reset_form_choices()


@pytest.mark.parametrize("rows", [1, 2, 8, FEW_ROWS + 1])
@pytest.mark.parametrize("three_d", [False, True])
def test_few_row_linear_times_the_forms_then_keeps_the_fastest(fresh_choices, rows, three_d):
    torch.manual_seed(0)
    shape = (1, rows, 512) if three_d else (rows, 512)
    x, weight, bias = torch.randn(*shape), torch.randn(MIN_CHOSEN_WEIGHT // 512, 512), torch.randn(256)
    reference = linear_reference(x, weight, bias)
    trial_calls = len(FEW_ROW_FORMS) * (TRIALS_PER_FORM + 1)
    with torch.inference_mode():
        outputs = [few_row_linear(x, weight, bias) for _ in range(trial_calls + 2)]
    for out in outputs:
        assert out.shape == reference.shape and out.is_contiguous()
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-4)  # sums of 512 products, any order
    choices = form_choices()
    if rows > FEW_ROWS:
        assert choices == {}  # F.linear, nothing timed
        return
    (key, choice), = choices.items()
    assert key == f"256x512 rows={rows} float32 bias=True threads={torch.get_num_threads()}"
    assert choice["form"] in FEW_ROW_FORMS
    times = choice["median_us"]
    assert set(times) == set(FEW_ROW_FORMS) and choice["form"] == min(times, key=times.get)


def test_few_row_linear_takes_f_linear_with_gradients_small_weights_or_the_form_named(fresh_choices, monkeypatch):
    torch.manual_seed(0)
    x, weight = torch.randn(1, 512), torch.randn(MIN_CHOSEN_WEIGHT // 512, 512)
    assert torch.equal(few_row_linear(x, weight), linear_reference(x, weight))  # gradients on: F.linear
    with torch.inference_mode():
        small = torch.randn(40, 24)
        assert torch.equal(few_row_linear(x[:, :24], small), linear_reference(x[:, :24], small))
        x64, w64 = x.double(), weight.double()
        monkeypatch.setenv(FORM_ENV, "columns")
        assert torch.equal(few_row_linear(x64, w64), FEW_ROW_FORMS["columns"](x64, w64))
        monkeypatch.setenv(FORM_ENV, "fastest")
        with pytest.raises(ValueError, match=FORM_ENV):
            few_row_linear(x, weight)
    assert form_choices() == {}
    layer = FewRowLinear(24, 40)
    assert list(layer.state_dict()) == ["weight", "bias"]  # the keys of an nn.Linear


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


def test_forms_can_be_chosen_before_a_compiled_graph_needs_them(fresh_choices):
    torch.manual_seed(0)
    layers = [(torch.randn(MIN_CHOSEN_WEIGHT // 256, 256), torch.randn(MIN_CHOSEN_WEIGHT // 256)),
              (torch.randn(MIN_CHOSEN_WEIGHT // 128, 128), None), (torch.randn(8, 8), None)]  # the last: too small
    choose_forms_now(layers, rows=3)
    choices = form_choices()
    assert len(choices) == 2 and all(c["form"] in FEW_ROW_FORMS for c in choices.values())
    with torch.inference_mode():  # taken from now on, nothing more timed
        x = torch.randn(3, 256)
        torch.testing.assert_close(few_row_linear(x, *layers[0]), linear_reference(x, *layers[0]),
                                   rtol=1e-5, atol=1e-4)
    assert form_choices() == choices
