"""Fusion decoder blocks: causal self-attention, cross-attention to image patches, MLP (pre-norm)."""

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from torch import nn

from ..errors import UserError
from .kernels import FewRowLinear


class CausalSelfAttention(nn.Module):
    """Causal self-attention over the text positions. `attn_mask` is the boolean (B, 1, T, keys)
    mask of transformers' `create_causal_mask` (causal + padding, sized to the cache), or None
    where that function finds SDPA's own causal flag exact."""

    def __init__(self, width: int, num_heads: int, dropout: float, layer_idx: int):
        super().__init__()
        if width % num_heads:
            raise UserError(f"model.fusion_heads={num_heads}: the fusion width {width} (the text tower's) is not "
                            "divisible by it")
        self.num_heads = num_heads
        self.layer_idx = layer_idx  # position of this layer in the shared KV cache
        self.qkv = FewRowLinear(width, 3 * width)  # fused projection: one matmul instead of three
        self.proj = FewRowLinear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, cache: Cache | None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, heads, T, head_dim)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, heads, past + T or cache size, head_dim)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            # no mask: plain causal attention over T new tokens is exact (HF's rule), or T == 1
            is_causal=attn_mask is None and T > 1,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, heads, T, head_dim)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class CrossAttention(nn.Module):
    """Text queries attend to image-patch keys/values; keys/values are projected once per image.

    With `null_slot`, a learnt key/value pair is appended after the patches: attention a query
    puts there means "nothing in the image", and `attention_weights` leaves it out of the maps.
    With `qk_norm`, queries and keys are L2-normalised per head and the scores are their cosine
    times a learnt per-head scale (starting at QK_NORM_SCALE), so attention can be sharp from the
    first steps instead of starting, and often staying, nearly uniform over the patches."""

    QK_NORM_SCALE = 10.0

    def __init__(self, width: int, num_heads: int, dropout: float, null_slot: bool = False, qk_norm: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.q = FewRowLinear(width, width)
        self.kv = nn.Linear(width, 2 * width)  # once per image, over every patch
        self.proj = FewRowLinear(width, width)
        self.dropout = dropout
        head_dim = width // num_heads
        self.null_kv = nn.Parameter(torch.zeros(2, num_heads, 1, head_dim)) if null_slot else None
        # (heads, 1, 1) log of the score scale; None: plain 1/sqrt(head_dim) scaled dot products
        self.log_scale = nn.Parameter(torch.zeros(num_heads, 1, 1)) if qk_norm else None

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.num_heads, D // self.num_heads).transpose(1, 2)  # (B, heads, T, hd)
        if self.log_scale is None:
            return q
        return F.normalize(q, dim=-1) * self.log_scale.exp()

    def _score_scale(self, head_dim: int) -> float:
        return 1.0 if self.log_scale is not None else head_dim**-0.5

    def image_keys_values(self, image_tokens: torch.Tensor) -> torch.Tensor:
        B, N, D = image_tokens.shape
        kv = self.kv(image_tokens).view(B, N, 2, self.num_heads, D // self.num_heads)
        kv = kv.permute(2, 0, 3, 1, 4)  # (2, B, heads, N, head_dim)
        if self.null_kv is not None:
            null = self.null_kv[:, None].expand(2, B, -1, -1, -1)  # (2, B, heads, 1, head_dim)
            kv = torch.cat([kv, null.to(kv.dtype)], dim=3)  # (2, B, heads, N + 1, head_dim)
        if self.log_scale is not None:
            kv = torch.stack([F.normalize(kv[0], dim=-1), kv[1]])  # unit keys, once per image
        return kv

    def key_mask(self, image_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, N) True where a patch token is real (False: an empty view slot of a study) ->
        SDPA's boolean (B, 1, 1, N [+ 1]) mask, the null slot always open; None stays None."""
        if image_mask is None:
            return None
        if self.null_kv is not None:
            image_mask = torch.cat([image_mask, image_mask.new_ones(image_mask.shape[0], 1)], dim=1)
        return image_mask[:, None, None, :]

    def forward(self, x: torch.Tensor, image_kv: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q = self._queries(x)  # (B, heads, T, hd)
        y = F.scaled_dot_product_attention(
            q, image_kv[0], image_kv[1], attn_mask=self.key_mask(image_mask),
            dropout_p=self.dropout if self.training else 0.0, scale=self._score_scale(q.shape[-1]),
        )  # (B, heads, T, head_dim)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))

    def attention_weights(self, x: torch.Tensor, image_kv: torch.Tensor, with_null: bool = False,
                          image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax attention of each text position over image patches: (B, heads, T, N), the
        null slot's share left out (rows then sum to at most 1) unless `with_null`; empty view
        slots (`image_mask` False) get none. Used by explainability only; training and generation
        go through SDPA."""
        q = self._queries(x)  # (B, heads, T, hd)
        scores = q @ image_kv[0].transpose(-1, -2) * self._score_scale(q.shape[-1])
        mask = self.key_mask(image_mask)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)  # (B, heads, T, N [+ 1])
        return weights if with_null or self.null_kv is None else weights[..., :-1]


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.fc = FewRowLinear(width, hidden)
        self.proj = FewRowLinear(hidden, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


LORA_TARGETS = ("qkv", "q", "kv", "proj", "fc")  # every projection of a fusion block, by name suffix


class FusionBlock(GradientCheckpointingLayer):
    """One fusion layer. As a `GradientCheckpointingLayer` it recomputes its activations in the
    backward pass once `activation_checkpointing_enable()` is called on the model."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, dropout: float, layer_idx: int,
                 null_slot: bool = False, qk_norm: bool = False):
        super().__init__()
        self.ln_self = nn.LayerNorm(width)
        self.self_attn = CausalSelfAttention(width, num_heads, dropout, layer_idx)
        self.ln_cross = nn.LayerNorm(width)
        self.cross_attn = CrossAttention(width, num_heads, dropout, null_slot, qk_norm)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio), dropout)

    def forward(
        self,
        x: torch.Tensor,
        image_kv: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.ln_self(x), attn_mask, cache)
        x = x + self.cross_attn(self.ln_cross(x), image_kv, image_mask)
        return x + self.mlp(self.ln_mlp(x))
