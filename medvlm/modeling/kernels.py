"""Speed-ups, each beside the plain reference it equals (tests/test_kernels.py holds them equal).

- `few_row_linear` (reference `linear_reference`): `F.linear` for decoding steps, computed as the
  weight matrix times a few columns on the CPU; `FewRowLinear` is the nn.Linear that uses it.
- `caption_cross_entropy` (reference `caption_cross_entropy_reference`): the LM head's
  cross-entropy in row chunks (`LinearCrossEntropy`), never holding the (N, V) logits.

Measured figures: docs/performance.md.
"""

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # target value the cross-entropy skips (pads, prompt tokens); PyTorch's default

# Rows (tokens in a batch) up to which `few_row_linear` takes its matrix-product form.
FEW_ROWS = 64


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The plain path `few_row_linear` equals: `F.linear`."""
    return F.linear(x, weight, bias)


def few_row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` for a decoding step. With at most FEW_ROWS rows of float32 on the CPU it computes
    (weight @ x^T)^T, one row repeated when there is only one: BLAS reads the (out, in) matrix
    several times faster as a product with a few columns than as a matrix-vector product or a
    product of a few rows with its transpose, and a decoding step is bound by that read. Same
    values up to float32 rounding; elsewhere (more rows, other dtypes, GPUs) it is `F.linear`."""
    rows = x.numel() // x.shape[-1]
    if rows > FEW_ROWS or x.device.type != "cpu" or x.dtype != torch.float32:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])  # (rows, in)
    if rows == 1:
        flat = torch.cat([flat, flat])  # two real columns: one column would be a matrix-vector product again
    out_t = weight @ flat.T if bias is None else torch.addmm(bias[:, None], weight, flat.T)  # (out, rows')
    # contiguous rows: attention kernels (SDPA's flash path on the CPU) want a unit last stride
    return out_t.T[:rows].contiguous().view(*x.shape[:-1], weight.shape[0])


class FewRowLinear(nn.Linear):
    """nn.Linear whose forward is `few_row_linear` (same parameters and state-dict keys; LoRA
    wraps it like any nn.Linear)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return few_row_linear(x, self.weight, self.bias)


def caption_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                    targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The plain path `caption_cross_entropy` equals: full (N, V) logits, then `F.cross_entropy`
    (float32, IGNORE_INDEX skipped, PyTorch's label smoothing)."""
    logits = F.linear(hidden, weight, bias)  # (N, V)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)


def caption_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T + bias` (hidden (N, D), weight (V, D)) against
    `targets` (N,), IGNORE_INDEX skipped, computed by `LinearCrossEntropy` in row chunks. The
    caller has already shifted the tokens (see `losses.caption_loss`)."""
    return LinearCrossEntropy.apply(hidden, weight, bias, targets, label_smoothing, torch.is_grad_enabled())


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
