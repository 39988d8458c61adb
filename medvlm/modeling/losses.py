"""The two training losses as plain functions; the model's total is their weighted sum."""

import torch
import torch.distributed as dist
import torch.nn.functional as F

IGNORE_INDEX = -100


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
) -> torch.Tensor:
    """Next-token cross-entropy of the LM head `hidden @ head_weight.T + head_bias`. THE one place
    where the token shift happens: position t of `hidden` (B, T, D) predicts token t+1 of `labels`
    (B, T). Labels equal to -100 (pads, prompt tokens) are ignored; the mean is over the rest.

    Equal to `F.cross_entropy` on the full logits, but computed by `LinearCrossEntropy` in row
    chunks, so the (B, T, V) logits are never held: each chunk's gradient is formed while its
    logits are in cache."""
    shifted_hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # (B*(T-1), D)
    shifted_labels = labels[:, 1:].reshape(-1)  # (B*(T-1),)
    return LinearCrossEntropy.apply(shifted_hidden, head_weight, head_bias, shifted_labels, label_smoothing,
                                    torch.is_grad_enabled())


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T + bias` against `targets` (-100 ignored), with
    PyTorch's label smoothing. The forward pass walks CHUNK rows at a time and also forms the
    gradients (softmax minus target, times the head), which the backward pass only rescales:
    the same three matmuls as logits + F.cross_entropy, without the (N, V) logits, their
    log-softmax and the gradient of both in memory. Under autocast the matmuls run in the
    autocast dtype; softmax and the weight/bias gradients accumulate in float32."""

    CHUNK = 256  # rows per chunk: (256, 30522) float32 logits are 31 MB

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, label_smoothing, grad_enabled):
        # hidden (N, D), weight (V, D), bias (V,) or None, targets (N,); grad_enabled: the caller's
        # grad mode (`needs_input_grad` ignores it, and evaluation must not pay for gradients)
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        need_hidden, need_weight, need_bias = (grad_enabled and need for need in ctx.needs_input_grad[:3])
        needs_grad = need_hidden or need_weight or need_bias
        kept = targets != IGNORE_INDEX
        count = kept.sum().clamp(min=1)
        eps = label_smoothing
        with torch.autocast(device, enabled=False):
            x, w = hidden.to(dtype), weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            total = hidden.new_zeros((), dtype=torch.float32)
            grad_hidden = torch.empty_like(hidden) if need_hidden else None
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
            grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_bias else None
            for start in range(0, len(x), LinearCrossEntropy.CHUNK):
                rows = slice(start, start + LinearCrossEntropy.CHUNK)
                x_c, t_c, keep_c = x[rows], targets[rows].clamp(min=0), kept[rows]
                logits = (x_c @ w.t() if b is None else torch.addmm(b, x_c, w.t())).float()  # (c, V)
                picked = logits.gather(1, t_c[:, None]).squeeze(1)  # (c,)
                peak = logits.amax(dim=1, keepdim=True)  # (c, 1)
                mean_logit = logits.mean(dim=1) if eps else None
                probs = logits.sub_(peak).exp_()  # unnormalised, in place of the logits
                sums = probs.sum(dim=1, keepdim=True)
                lse = (peak + sums.log()).squeeze(1)  # (c,)
                nll = lse - picked
                if eps:
                    nll = (1 - eps) * nll + eps * (lse - mean_logit)
                total += nll.masked_fill(~keep_c, 0).sum()
                if needs_grad:
                    # d(loss)/d(logits) = (softmax - (1-eps) onehot - eps/V) / count on kept rows
                    probs.div_(sums)
                    probs.scatter_add_(1, t_c[:, None], probs.new_full((len(t_c), 1), -(1 - eps)))
                    if eps:
                        probs.sub_(eps / probs.shape[1])
                    probs.mul_((keep_c / count)[:, None])
                    g = probs.to(dtype)
                    if need_hidden:
                        grad_hidden[rows] = g @ w
                    if need_weight and dtype == torch.float32:
                        torch.addmm(grad_weight, g.t(), x_c, out=grad_weight)  # (V, D), accumulated
                    elif need_weight:
                        grad_weight += (g.t() @ x_c).float()
                    if need_bias:
                        grad_bias += probs.sum(dim=0)
        ctx.save_for_backward(grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                              None if grad_bias is None else grad_bias.to(bias.dtype))
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grads = tuple(None if g is None else g * grad_loss for g in ctx.saved_tensors)
        return *grads, None, None, None


def weighted_total(parts: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Sum of named loss parts, each times its weight (parts without a weight count once)."""
    return sum(weights.get(name, 1.0) * value for name, value in parts.items())
