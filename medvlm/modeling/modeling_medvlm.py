"""MedVLM: timm vision tower + causal HF text tower + cross-attention fusion decoder (CoCa-style).

One causal pass over the report serves both losses: the text tower's state at the end token is
the contrastive text embedding, and the fusion blocks turn the same states into next-token
predictions conditioned on the image patches.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.utils import ModelOutput
from torch import nn

from .configuration_medvlm import MedVLMConfig
from .fusion import FusionBlock, decoder_attention_mask
from .losses import (
    caption_loss,
    contrastive_loss,
    gather_with_local_grad,
    match_single_process_gradient,
    weighted_total,
)
from .text import TextTower
from .vision import VisionTower


@dataclass
class MedVLMModelOutput(ModelOutput):
    """
    last_hidden_state: (B, T, D) fusion decoder output, after the final norm.
    image_embeds: (B, E) L2-normalised image embedding (None when image keys/values were given).
    text_embeds: (B, E) L2-normalised text embedding, pooled at the last real token.
    cache: key/value cache of every decoder layer (text tower layers first, then fusion layers).
    """

    last_hidden_state: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    cache: Cache | None = None


@dataclass
class MedVLMOutput(ModelOutput):
    """
    loss: weighted total of the parts below (present when `labels` are given).
    contrastive_loss, caption_loss: the named parts, unweighted.
    logits: (B, T, V) next-token scores.
    image_embeds, text_embeds: (B, E) L2-normalised embeddings; logit_scale: scalar, clamped.
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    caption_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None
    cache: Cache | None = None


class MedVLMPreTrainedModel(PreTrainedModel):
    config_class = MedVLMConfig
    config: MedVLMConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    _supports_sdpa = True

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: matrices decay; biases, norms, scales and other 1-d tensors do not."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]

    def _init_weights(self, module: nn.Module) -> None:
        # Reached for our own modules and the timm backbone; the HF text tower keeps its own init.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)):
            if module.weight is not None:
                init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, MedVLMModel):
            init.constant_(module.logit_scale, math.log(1.0 / self.config.init_temperature))


class MedVLMModel(MedVLMPreTrainedModel):
    def __init__(self, config: MedVLMConfig):
        super().__init__(config)
        v = config.vision
        self.vision = VisionTower(v["model_name"], v["img_size"], v["in_chans"], v.get("timm_kwargs"))
        self.text = TextTower(config.text)
        width = self.text.hidden_size
        self.image_to_fusion = nn.Linear(self.vision.num_features, width)
        self.fusion = nn.ModuleList(
            FusionBlock(width, config.fusion_heads, config.fusion_mlp_ratio, config.dropout,
                        layer_idx=self.text.num_layers + i)
            for i in range(config.fusion_layers)
        )
        self.ln_final = nn.LayerNorm(width)
        self.image_projection = nn.Linear(self.vision.num_features, config.embed_dim, bias=False)
        self.text_projection = nn.Linear(width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.post_init()

    def load_pretrained_towers(self) -> None:
        """Load tower weights named in the config (`vision/text.pretrained_path`), local files only."""
        if self.config.vision.get("pretrained_path"):
            self.vision.load_pretrained(self.config.vision["pretrained_path"])
        if self.config.text.get("pretrained_path"):
            self.text.load_pretrained(self.config.text["pretrained_path"])

    def clamped_logit_scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(0, math.log(self.config.max_logit_scale)).exp()

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> fusion-width patch tokens (B, N, D) and the normalised image embedding (B, E)."""
        tokens, pooled = self.vision(pixel_values)  # (B, N, Dv), (B, Dv)
        return self.image_to_fusion(tokens), F.normalize(self.image_projection(pooled), dim=-1)

    def image_keys_values(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Cross-attention keys/values of every fusion layer, computed once per image:
        (B, layers, 2, heads, N, head_dim); batch first so generation can expand it for beams."""
        kv = [block.cross_attn.image_keys_values(image_tokens) for block in self.fusion]  # each (2, B, H, N, hd)
        return torch.stack(kv).permute(2, 0, 1, 3, 4, 5)

    def pool_text(self, text_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Normalised text embedding from the last real token (the end token of the report)."""
        B, T, _ = text_states.shape
        last = attention_mask.sum(-1) - 1 if attention_mask is not None else torch.full((B,), T - 1)
        pooled = text_states[torch.arange(B, device=text_states.device), last.to(text_states.device)]
        return F.normalize(self.text_projection(pooled), dim=-1)  # (B, E)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encode_image(pixel_values)[1]

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool_text(self.text(input_ids, attention_mask), attention_mask)

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        image_kv: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> MedVLMModelOutput:
        image_embeds = None
        if image_kv is None:
            if pixel_values is None:
                raise ValueError("MedVLM needs pixel_values or precomputed image_kv")
            image_tokens, image_embeds = self.encode_image(pixel_values)
            image_kv = self.image_keys_values(image_tokens)
        if use_cache and cache is None:
            cache = DynamicCache()
        T = input_ids.shape[1]
        past_len = cache.get_seq_length() if cache is not None else 0
        position_ids = None
        if attention_mask is not None:
            # positions count real tokens only, so left-padded prompts line up with training
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -T:]
        text_states = self.text(input_ids, attention_mask, cache, position_ids)  # (B, T, D)
        text_embeds = self.pool_text(text_states, attention_mask) if past_len == 0 else None
        mask = decoder_attention_mask(attention_mask, T, past_len)
        x = text_states
        for i, block in enumerate(self.fusion):
            x = block(x, image_kv[:, i].transpose(0, 1), mask, cache)
        return MedVLMModelOutput(
            last_hidden_state=self.ln_final(x), image_embeds=image_embeds, text_embeds=text_embeds, cache=cache
        )


class MedVLMForConditionalGeneration(MedVLMPreTrainedModel, GenerationMixin):
    """Report generation and VQA: the fusion decoder plus an LM head that reuses the token
    embedding matrix; training returns the contrastive and caption losses by name."""

    def __init__(self, config: MedVLMConfig):
        super().__init__(config)
        self.model = MedVLMModel(config)
        self.lm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MedVLMForConditionalGeneration):
            init.zeros_(module.lm_bias)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # weight tying by construction: the head is the embedding matrix, so nothing to re-tie on load
        return F.linear(hidden, self.model.text.token_embeddings.weight, self.lm_bias)  # (B, T, V)

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        text_keys: torch.LongTensor | None = None,
        image_kv: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> MedVLMOutput:
        """labels: (B, T) token ids with -100 at pads and prompt tokens; the shift to next-token
        targets happens inside `caption_loss`, nowhere else. text_keys: (B,) ids equal for identical
        report texts (see `contrastive_loss`); defaults to comparing the token ids."""
        out = self.model(input_ids, pixel_values, attention_mask, image_kv, cache, use_cache)
        hidden = out.last_hidden_state[:, -logits_to_keep:] if logits_to_keep else out.last_hidden_state
        logits = self.lm_logits(hidden)
        logit_scale = self.model.clamped_logit_scale()
        parts = {}
        if labels is not None:
            parts["caption_loss"] = caption_loss(logits, labels, self.config.label_smoothing)
            if out.image_embeds is not None and self.config.contrastive_weight > 0:
                keys = text_keys if text_keys is not None else input_ids
                parts["contrastive_loss"] = match_single_process_gradient(contrastive_loss(
                    gather_with_local_grad(out.image_embeds),
                    gather_with_local_grad(out.text_embeds),
                    logit_scale,
                    gather_with_local_grad(keys),
                ))
        weights = {"caption_loss": self.config.caption_weight, "contrastive_loss": self.config.contrastive_weight}
        return MedVLMOutput(
            loss=weighted_total(parts, weights) if parts else None,
            contrastive_loss=parts.get("contrastive_loss"),
            caption_loss=parts.get("caption_loss"),
            logits=logits,
            image_embeds=out.image_embeds,
            text_embeds=out.text_embeds,
            logit_scale=logit_scale,
            cache=out.cache,
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        image_kv: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """HF `generate` (greedy, beam, sampling, ...) conditioned on images.

        The vision tower and the cross-attention key/value projections run once per image here;
        `generate` then only repeats the resulting tensor for beams/samples. Without `input_ids`
        every sequence starts from the BOS token (report generation); VQA passes the question as
        a left-padded prompt.
        """
        if image_kv is None:
            image_tokens, _ = self.model.encode_image(pixel_values)
            image_kv = self.model.image_keys_values(image_tokens)
        if input_ids is None:
            input_ids = torch.full((image_kv.shape[0], 1), self.config.bos_token_id, device=image_kv.device)
        if generate_kwargs.get("use_cache", True) and "cache" not in generate_kwargs:
            generate_kwargs["cache"] = DynamicCache()
        return super().generate(
            input_ids=input_ids, attention_mask=attention_mask, image_kv=image_kv, **generate_kwargs
        )
