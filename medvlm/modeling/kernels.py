"""Speed-ups, each beside the plain reference it equals (tests/test_kernels.py holds them equal).

- `few_row_linear` (reference `linear_reference`): `F.linear` for decoding steps, in whichever of
  its equal forms (`FEW_ROW_FORMS`) the first calls measured fastest on this machine;
  `FewRowLinear` is the nn.Linear that uses it.
- `caption_cross_entropy` (reference `caption_cross_entropy_reference`): the LM head's
  cross-entropy in row chunks (`LinearCrossEntropy`), never holding the (N, V) logits.

Measured figures: docs/performance.md.
"""

import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # target value the cross-entropy skips (pads, prompt tokens); PyTorch's default

# Rows (tokens in a batch) up to which `few_row_linear` chooses a form by measurement.
FEW_ROWS = 64
# Smaller weights (elements) take F.linear: their products cost the call, not the read of the weight.
MIN_CHOSEN_WEIGHT = 1 << 17
# Timed calls per form before choosing (after one untimed call each), and the environment
# variable that fixes the form instead (e.g. to compare forms in a benchmark).
TRIALS_PER_FORM = 5
FORM_ENV = "MEDVLM_FEW_ROW_FORM"


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The plain path `few_row_linear` equals: `F.linear`."""
    return F.linear(x, weight, bias)


def columns_form(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` of rows x (R, in) as the (out, in) weight times R columns, (W @ x^T)^T, with a
    lone row repeated: one column would be a matrix-vector product again. Some CPU and BLAS
    pairs read the weight several times faster this way, others several times slower (figures:
    docs/performance.md)."""
    rows = x.shape[0]
    columns = torch.cat([x, x]) if rows == 1 else x  # (R', in)
    out_t = weight @ columns.T if bias is None else torch.addmm(bias[:, None], weight, columns.T)  # (out, R')
    # contiguous rows: attention kernels (SDPA's flash path on the CPU) want a unit last stride
    return out_t.T[:rows].contiguous()


# The forms `few_row_linear` chooses between: name -> fn(x (R, in), weight (out, in), bias) -> (R, out)
FEW_ROW_FORMS = {"linear": linear_reference, "columns": columns_form}


class FormChoice:
    """The measured choice of form for one kind of call: (weight shape, rows, dtype, bias or not,
    thread count). The first calls take each form in turn and are timed; once every form has
    TRIALS_PER_FORM timed calls, the one with the lowest median is used from then on. The trials
    run inside real decoding, so they see the weights as decoding does: streamed from memory,
    not warm in the cache as a loop over one matrix would have them."""

    def __init__(self, on_choice=None):
        self.seconds = {name: [] for name in FEW_ROW_FORMS}
        self.untimed = set(FEW_ROW_FORMS)
        self.chosen: str | None = None
        self.on_choice = on_choice  # called with the form's name once chosen

    def next_trial(self) -> str:
        return min(self.seconds, key=lambda name: (name not in self.untimed, len(self.seconds[name])))

    def record(self, name: str, seconds: float) -> None:
        if name in self.untimed:
            self.untimed.discard(name)  # the first call of a form may pay one-time set-up
            return
        self.seconds[name].append(seconds)
        if all(len(s) >= TRIALS_PER_FORM for s in self.seconds.values()):
            self.chosen = min(self.seconds, key=lambda name: statistics.median(self.seconds[name]))
            if self.on_choice:
                self.on_choice(self.chosen)

    def summary(self) -> dict:
        return {"form": self.chosen,
                "median_us": {name: round(statistics.median(s) * 1e6, 1) if s else None
                              for name, s in self.seconds.items()}}


_CHOICES: dict[tuple, FormChoice] = {}
# The chosen forms by (out, in, rows, dtype, bias), for compiled graphs: torch.get_num_threads,
# part of _CHOICES' keys, cannot be called in a traced graph
_FOR_GRAPHS: dict[tuple, str] = {}


def form_choices() -> dict[str, dict]:
    """What this process measured and chose so far, by "out x in, rows, dtype, bias, threads"."""
    return {f"{out}x{inp} rows={rows} {str(dtype).removeprefix('torch.')} bias={bias} threads={threads}":
            choice.summary() for (out, inp, rows, dtype, bias, threads), choice in _CHOICES.items()}


def reset_form_choices() -> None:
    _CHOICES.clear()
    _FOR_GRAPHS.clear()


def few_row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, for decoding steps in its fastest form on this machine.

    Inference on the CPU with at most FEW_ROWS rows and a weight of at least MIN_CHOSEN_WEIGHT
    elements is bound by reading the weight, and which form of the product BLAS reads fastest
    depends on the CPU and the BLAS build; so each kind of call is timed in every form of
    FEW_ROW_FORMS at first (see FormChoice) and then takes the fastest, or the form named by the
    MEDVLM_FEW_ROW_FORM environment variable. The forms agree up to float rounding. Calls with
    gradients always take F.linear, so that training does not depend on timings (a resumed run
    repeats the uninterrupted one exactly); so do compiled graphs until a choice is made."""
    rows = x.numel() // x.shape[-1]
    if (rows > FEW_ROWS or x.device.type != "cpu" or weight.numel() < MIN_CHOSEN_WEIGHT
            or torch.is_grad_enabled()):
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])  # (rows, in)
    if torch.compiler.is_compiling():  # a traced graph cannot time itself: the choice made before, if any
        name = _FOR_GRAPHS.get((*weight.shape, rows, x.dtype, bias is not None), "linear")
        return FEW_ROW_FORMS[name](flat, weight, bias).view(*x.shape[:-1], weight.shape[0])
    fixed = _fixed_form()
    if fixed:
        out = FEW_ROW_FORMS[fixed](flat, weight, bias)
    else:
        out = _chosen_form(flat, weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def _fixed_form() -> str | None:
    fixed = os.environ.get(FORM_ENV)
    if fixed and fixed not in FEW_ROW_FORMS:
        raise ValueError(f"{FORM_ENV}={fixed!r}: expected one of {', '.join(FEW_ROW_FORMS)}")
    return fixed or None


def _choice_for(weight: torch.Tensor, rows: int, dtype: torch.dtype, has_bias: bool) -> FormChoice:
    key = (*weight.shape, rows, dtype, has_bias, torch.get_num_threads())
    choice = _CHOICES.get(key)
    if choice is None:
        choice = _CHOICES[key] = FormChoice(on_choice=lambda name: _FOR_GRAPHS.__setitem__(key[:-1], name))
    return choice


@torch.inference_mode()
def choose_forms_now(layers: list[tuple[torch.Tensor, torch.Tensor | None]], rows: int) -> None:
    """Make the choice for each (weight, bias) at `rows` rows before a compiled graph needs it
    (a graph being traced cannot time itself, and would take F.linear): random rows through all
    the layers in turn, each form in turn, as in decoding, so the weights stream from memory.
    With MEDVLM_FEW_ROW_FORM set, that form is recorded instead."""
    fixed = _fixed_form()
    if fixed:
        for weight, bias in layers:
            _FOR_GRAPHS[(*weight.shape, rows, weight.dtype, bias is not None)] = fixed
        return
    pending = [(w, b, _choice_for(w, rows, w.dtype, b is not None)) for w, b in layers
               if w.device.type == "cpu" and w.numel() >= MIN_CHOSEN_WEIGHT]
    pending = [(w, b, choice) for w, b, choice in pending if choice.chosen is None]  # later calls: none
    inputs = [torch.randn(rows, w.shape[1], dtype=w.dtype) for w, _, _ in pending]
    while any(choice.chosen is None for _, _, choice in pending):
        for (weight, bias, choice), x in zip(pending, inputs):
            if choice.chosen is None:
                _timed_trial(choice, x, weight, bias)


def _chosen_form(flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    choice = _choice_for(weight, flat.shape[0], flat.dtype, bias is not None)
    if choice.chosen is not None:
        return FEW_ROW_FORMS[choice.chosen](flat, weight, bias)
    return _timed_trial(choice, flat, weight, bias)


def _timed_trial(choice: FormChoice, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One call in the form whose turn it is, timed into `choice`."""
    name = choice.next_trial()
    start = time.perf_counter()
    out = FEW_ROW_FORMS[name](x, weight, bias)
    choice.record(name, time.perf_counter() - start)
    return out


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
