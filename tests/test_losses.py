import math

import torch
import torch.nn.functional as F

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


def test_caption_loss_shifts_once_and_ignores_masked_labels():
    labels = torch.tensor([[1, 4, 5, 2, -100]])
    vocab = 8
    logits = torch.full((1, 5, vocab), -20.0)
    # position t predicts token t+1: a perfect prediction
    for t, nxt in enumerate([4, 5, 2]):
        logits[0, t, nxt] = 20.0
    logits[0, 3, 7] = 20.0  # predicts a pad position: must be ignored
    assert caption_loss(logits, labels) < 1e-6
    wrong = logits.clone()
    wrong[0, 0] = 0.0  # uniform over the vocabulary at the first position
    expected = math.log(vocab) / 3
    assert math.isclose(float(caption_loss(wrong, labels)), expected, rel_tol=1e-4)


def test_weighted_total():
    parts = {"caption_loss": torch.tensor(2.0), "contrastive_loss": torch.tensor(3.0)}
    assert float(weighted_total(parts, {"caption_loss": 0.5, "contrastive_loss": 2.0})) == 7.0
