"""The two training losses as plain functions; the model's total is their weighted sum."""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .kernels import IGNORE_INDEX, caption_cross_entropy  # IGNORE_INDEX: the label the caption loss skips


def gather_with_local_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every process in rank order; gradients flow through this rank's part.
    Without an initialised process group (one process) it returns `x` unchanged."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def match_single_process_gradient(loss: torch.Tensor) -> torch.Tensor:
    """Same value, gradient times the number of processes.

    A loss over features gathered from all processes back-propagates only into this process's
    slice, and DDP then averages gradients over processes; scaling by the world size makes the
    update equal to that of one process on the concatenated batch.
    """
    n = world_size()
    return loss if n == 1 else loss * n - loss.detach() * (n - 1)


def same_text_matrix(text_keys: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: True where two items carry identical report text.

    text_keys: (B,) integer ids (e.g. a hash of the text) or (B, T) token ids compared row-wise.
    """
    if text_keys.ndim == 1:
        return text_keys[:, None] == text_keys[None, :]
    return (text_keys[:, None, :] == text_keys[None, :, :]).all(dim=-1)


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    text_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over L2-normalised embeddings (B, E).

    Items whose report texts are identical are positives for each other: the loss of a row is
    -log of the softmax mass on all of its positives, so two studies with the same normal report
    are not pushed apart. Without `text_keys` only the diagonal is positive (plain CLIP loss).
    """
    logits = logit_scale * image_embeds @ text_embeds.t()  # (B_img, B_txt)
    if text_keys is None:
        positives = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    else:
        positives = same_text_matrix(text_keys)

    def multi_positive_nll(scores: torch.Tensor) -> torch.Tensor:
        positive_scores = scores.masked_fill(~positives, float("-inf"))
        return (scores.logsumexp(dim=-1) - positive_scores.logsumexp(dim=-1)).mean()

    return 0.5 * (multi_positive_nll(logits) + multi_positive_nll(logits.t()))


def caption_loss(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy of the LM head `hidden @ head_weight.T + head_bias`. THE one place
    where the token shift happens: position t of `hidden` (B, T, D) predicts token t+1 of `labels`
    (B, T). Labels equal to -100 (pads, prompt tokens) are ignored; the mean is over the rest.

    Equal to `F.cross_entropy` on the full logits, but computed in row chunks
    (`kernels.caption_cross_entropy`), so the (B, T, V) logits are never held."""
    shifted_hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # (B*(T-1), D)
    shifted_labels = labels[:, 1:].reshape(-1)  # (B*(T-1),)
    if softcap:  # Gemma 2's capped logits: the plain path (the chunked one knows no cap)
        logits = torch.tanh(F.linear(shifted_hidden, head_weight, head_bias) / softcap) * softcap
        return F.cross_entropy(logits.float(), shifted_labels, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)
    return caption_cross_entropy(shifted_hidden, head_weight, head_bias, shifted_labels, label_smoothing)


def weighted_total(parts: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Sum of named loss parts, each times its weight (parts without a weight count once)."""
    return sum(weights.get(name, 1.0) * value for name, value in parts.items())
