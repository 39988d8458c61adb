import math

import pytest
import torch
import torch.nn.functional as F

from medvlm.modeling.kernels import LinearCrossEntropy
from medvlm.modeling.losses import caption_loss, contrastive_loss, same_text_matrix, weighted_total


def test_aligned_embeddings_give_a_low_loss_and_shuffled_a_high_one():
    emb = F.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(100.0)
    aligned = contrastive_loss(emb, emb, scale)
    shuffled = contrastive_loss(emb, emb.roll(1, dims=0), scale)
    assert aligned < 0.05
    assert shuffled > 5.0


def test_plain_infonce_on_a_hand_checked_example():
    # two orthogonal unit vectors, scale 1: each row softmax([1, 0]) -> loss = log(1 + e^-1)
    emb = torch.eye(2)
    loss = contrastive_loss(emb, emb, torch.tensor(1.0))
    assert math.isclose(float(loss), math.log(1 + math.exp(-1)), rel_tol=1e-6)


def test_identical_reports_are_positives_not_negatives():
    # items 0 and 1 carry the same normal report; their text embeddings are identical
    image = F.normalize(torch.tensor([[1.0, 0.1, 0], [1.0, -0.1, 0], [0, 0, 1.0]]), dim=-1)
    text = F.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]]), dim=-1)
    keys = torch.tensor([7, 7, 3])
    scale = torch.tensor(50.0)
    with_duplicates = contrastive_loss(image, text, scale, keys)
    as_negatives = contrastive_loss(image, text, scale)
    # as plain negatives, rows 0 and 1 cannot tell their identical texts apart: loss ~ log 2 each
    assert as_negatives > 0.4
    assert with_duplicates < 0.01
    # hand value: row 0 puts (almost) all mass on columns {0, 1} -> -log(p0 + p1) ~ 0
    assert same_text_matrix(keys).tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_same_text_matrix_from_token_ids():
    ids = torch.tensor([[1, 5, 6, 2], [1, 5, 6, 2], [1, 5, 7, 2]])
    assert same_text_matrix(ids).tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def one_hot_head(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An LM head whose logits equal the hidden states: weight = identity, bias = 0."""
    return torch.eye(vocab), torch.zeros(vocab)


def test_caption_loss_shifts_once_and_ignores_masked_labels():
    labels = torch.tensor([[1, 4, 5, 2, -100]])
    vocab = 8
    hidden = torch.full((1, 5, vocab), -20.0)  # = the logits, through the identity head
    # position t predicts token t+1: a perfect prediction
    for t, nxt in enumerate([4, 5, 2]):
        hidden[0, t, nxt] = 20.0
    hidden[0, 3, 7] = 20.0  # predicts a pad position: must be ignored
    assert caption_loss(hidden, *one_hot_head(vocab), labels) < 1e-6
    wrong = hidden.clone()
    wrong[0, 0] = 0.0  # uniform over the vocabulary at the first position
    expected = math.log(vocab) / 3
    assert math.isclose(float(caption_loss(wrong, *one_hot_head(vocab), labels)), expected, rel_tol=1e-4)


def reference_caption_loss(hidden, weight, bias, labels, label_smoothing):
    logits = F.linear(hidden, weight, bias)[:, :-1].reshape(-1, weight.shape[0])
    return F.cross_entropy(logits.float(), labels[:, 1:].reshape(-1), ignore_index=-100,
                           label_smoothing=label_smoothing)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_chunked_caption_loss_equals_cross_entropy_on_full_logits(monkeypatch, label_smoothing, with_bias):
    monkeypatch.setattr(LinearCrossEntropy, "CHUNK", 7)  # several chunks, the last one short
    torch.manual_seed(0)
    B, T, D, V = 3, 9, 16, 50
    labels = torch.randint(0, V, (B, T))
    labels[0, 5:] = -100
    labels[2, :3] = -100
    values = (torch.randn(B, T, D), torch.randn(V, D) * 0.5, torch.randn(V) if with_bias else None)
    grads = []
    for loss_fn in (caption_loss, reference_caption_loss):
        leaves = [v.clone().requires_grad_() if v is not None else None for v in values]
        loss = loss_fn(*leaves, labels, label_smoothing)
        (3.0 * loss).backward()  # an upstream gradient other than 1
        grads.append((loss.detach(), *[leaf.grad for leaf in leaves if leaf is not None]))
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_chunked_caption_loss_under_bf16_autocast_keeps_float32_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 16, requires_grad=True)
    weight, bias = torch.randn(40, 16, requires_grad=True), torch.zeros(40, requires_grad=True)
    labels = torch.randint(0, 40, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = caption_loss(hidden, weight, bias, labels)
    loss.backward()
    reference = reference_caption_loss(hidden.detach(), weight.detach(), bias.detach(), labels, 0.0)
    assert loss.dtype == torch.float32 and weight.grad.dtype == hidden.grad.dtype == torch.float32
    assert abs(loss.item() - reference.item()) < 0.05 * reference.item()


def test_chunked_caption_loss_without_gradients_and_with_a_frozen_head():
    from torch.utils.flop_counter import FlopCounterMode

    hidden, weight = torch.randn(2, 5, 8, requires_grad=True), torch.randn(20, 8)
    labels = torch.randint(0, 20, (2, 5))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # evaluation: the logits matmul only
        assert torch.isfinite(caption_loss(hidden, weight, None, labels))
    assert counter.get_total_flops() == 2 * (2 * 4) * 8 * 20
    caption_loss(hidden, weight, None, labels).backward()  # only the hidden states need a gradient
    assert hidden.grad is not None and weight.grad is None


def test_weighted_total():
    parts = {"caption_loss": torch.tensor(2.0), "contrastive_loss": torch.tensor(3.0)}
    assert float(weighted_total(parts, {"caption_loss": 0.5, "contrastive_loss": 2.0})) == 7.0
