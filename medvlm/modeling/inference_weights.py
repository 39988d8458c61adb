"""Lighter weights for CPU report generation: the model cast to bfloat16, or its linear maps
quantised to int8 (dynamic quantisation: int8 weights, activations quantised per call).

Decoding a report on the CPU is bound by reading the weights once per token (README
"Performance"); bf16 halves the bytes, int8 quarters them. Both are for inference only: the
returned model is a copy (int8) or the same model cast (bf16), never saved. How closely their
reports agree with fp32 (CE labels of the demo's test reports): docs/performance.md.
"""

import copy
import warnings

import torch
from torch import nn

from .modeling_medvlm import MedVLMForConditionalGeneration

WEIGHT_FORMATS = ("fp32", "bf16", "int8")


def for_generation(model: MedVLMForConditionalGeneration, weights: str) -> MedVLMForConditionalGeneration:
    """The model to generate with in `weights` format ("fp32": the model itself)."""
    if weights == "fp32":
        return model
    if weights == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16)
    if weights == "int8":
        return quantized_int8(model)
    raise ValueError(f"weights={weights!r}: expected one of {', '.join(WEIGHT_FORMATS)}")


def quantized_int8(model: MedVLMForConditionalGeneration) -> MedVLMForConditionalGeneration:
    """A CPU copy whose linear maps (vision, text and fusion layers, and the LM head) hold
    int8 weights, one scale per output row; convolutions, norms and embeddings stay float32.
    Uses torch's dynamic quantisation (`torch.ao.quantization.quantize_dynamic`, x86/fbgemm
    kernels); torch marks that API deprecated in favour of torchao, whose CPU kernels for this
    case we have not measured, so its warnings are silenced here."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    quantized = copy.deepcopy(model).cpu().float().eval()
    _as_plain_linear(quantized)
    embedding = quantized.model.text.head_weight()  # (V, D): the LM head, tied or the LM's own
    head = nn.Linear(embedding.shape[1], embedding.shape[0])
    with torch.no_grad():
        head.weight.copy_(embedding)
        head.bias.copy_(quantized.lm_bias)
    quantized.quantized_lm_head = head
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(deprecat|torch\.ao).*")
        quantize_dynamic(quantized, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return quantized


def _as_plain_linear(module: nn.Module) -> None:
    """Replace, in place, every nn.Linear subclass (our FewRowLinear) and GPT-2's Conv1D, which
    stores its weight as (in, out), by a plain nn.Linear with the same map: dynamic quantisation
    converts exactly nn.Linear."""
    from transformers.pytorch_utils import Conv1D

    for name, child in list(module.named_children()):
        if isinstance(child, Conv1D):
            plain = nn.Linear(child.weight.shape[0], child.nf)
            with torch.no_grad():
                plain.weight.copy_(child.weight.T)
                plain.bias.copy_(child.bias)
            setattr(module, name, plain)
        elif isinstance(child, nn.Linear) and type(child) is not nn.Linear:
            plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            plain.weight, plain.bias = child.weight, child.bias
            setattr(module, name, plain)
        else:
            _as_plain_linear(child)
