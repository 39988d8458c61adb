"""MedVLM: timm vision tower + causal HF text tower + cross-attention fusion decoder (CoCa-style).

One causal pass over the report serves both losses: the text tower's state at the end token is
the contrastive text embedding, and the fusion blocks turn the same states into next-token
predictions conditioned on the image patches. Generation's KV caches are in cache.py, the
speed-ups (few-row products, chunked caption cross-entropy) with their references in kernels.py.
"""

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.utils import ModelOutput
from transformers.utils import logging as hf_logging
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from .cache import PreallocatedCache, StaticDecoderCache
from .configuration_medvlm import MedVLMConfig
from .fusion import LORA_TARGETS as FUSION_LORA_TARGETS
from .fusion import CrossAttention, FusionBlock
from .kernels import FewRowLinear, choose_forms_now, few_row_linear
from .losses import (
    caption_loss,
    contrastive_loss,
    gather_with_local_grad,
    match_single_process_gradient,
    weighted_total,
)
from .text import TextTower
from .vision import build_vision_tower, init_layer_weights

logger = hf_logging.get_logger(__name__)

# Rows of the view-embedding table: a study's image slots carry one of these ids
# (medvlm.processing.VIEW_IDS maps view names to them); EMPTY_VIEW marks a padding slot.
EMPTY_VIEW, NUM_VIEW_IDS = 0, 4  # 0 empty, 1 frontal, 2 lateral, 3 other


def soft_capped(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma 2's final logit soft-capping, cap * tanh(logits / cap); no cap: the logits."""
    return logits if not cap else torch.tanh(logits / cap) * cap


@dataclass
class MedVLMModelOutput(ModelOutput):
    """
    last_hidden_state: (B, T, D) fusion decoder output, after the final norm.
    image_embeds: (B, E) L2-normalised image embedding, pooled over the current study's views
        (None when image keys/values were given).
    text_embeds: (B, E) L2-normalised text embedding, pooled at the last real token (None when a
        cache was passed in, i.e. in decoding steps, which see only the newest tokens).
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
    logits: (B, T, V) next-token scores (None when labels were given, unless return_logits=True).
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
    supports_gradient_checkpointing = True  # activation_checkpointing_enable(): text, fusion and vision blocks

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=checkpoint,
                                    every_n_layers: int = 1):
        # HF's switch reaches the text tower's and our fusion blocks (GradientCheckpointingLayer);
        # the timm backbone has its own
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func, every_n_layers)
        for module in self.modules():
            if module is not self and hasattr(module, "set_grad_checkpointing") and hasattr(module, "block_prefix"):
                module.set_grad_checkpointing(enable)  # a vision tower: each kind has its own switch

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: weight matrices decay; biases, norms, scales (including the
        cross-attention score scales), other 1-d tensors, the cross-attention null slots and the
        image position embeddings (learnt tokens, not maps) do not."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        no_decay = ("null_kv", "image_positions", "log_scale", "view_embeddings.weight", "prior_embedding")
        decays = {n: p.ndim >= 2 and not n.endswith(no_decay) for n, p in named}
        return [
            {"params": [p for n, p in named if decays[n]], "weight_decay": weight_decay},
            {"params": [p for n, p in named if not decays[n]], "weight_decay": 0.0},
        ]

    def _init_weights(self, module: nn.Module) -> None:
        # Reached for our own modules and the timm backbone; the HF text tower keeps its own init.
        if init_layer_weights(module, self.config.initializer_range):
            return
        if isinstance(module, MedVLMModel):
            init.constant_(module.logit_scale, math.log(1.0 / self.config.init_temperature))
            if module.image_positions is not None:
                init.normal_(module.image_positions, std=self.config.initializer_range)
            # zero: a checkpoint trained on single images (without these) reads a study's first
            # image exactly as it read that image alone
            init.zeros_(module.view_embeddings.weight)
            init.zeros_(module.prior_embedding)
        elif isinstance(module, CrossAttention):
            if module.null_kv is not None:
                init.zeros_(module.null_kv)  # a zero key scores 0 against every query at the start
            if module.log_scale is not None:
                init.constant_(module.log_scale, math.log(CrossAttention.QK_NORM_SCALE))


class MedVLMModel(MedVLMPreTrainedModel):
    def __init__(self, config: MedVLMConfig):
        super().__init__(config)
        v = config.vision
        self.vision = build_vision_tower(v)  # timm, transformers (Dinov2, SigLIP, CLIP) or open_clip
        self.text = TextTower(config.text)
        width = self.text.hidden_size
        self.image_to_fusion = nn.Linear(self.vision.token_features, width)
        self.image_positions = None  # (1, N, width): where each image token sits, seen by cross-attention
        if config.fusion_image_positions:
            rows, cols = self.vision.token_grid(v["img_size"])
            self.image_positions = nn.Parameter(torch.zeros(1, rows * cols, width))
        # added to every token of an image: which view it is (frontal, lateral, ...) and whether
        # it belongs to the prior study, so cross-attention can tell the images of a study apart
        self.view_embeddings = nn.Embedding(NUM_VIEW_IDS, width)
        self.prior_embedding = nn.Parameter(torch.zeros(width))
        self.fusion = nn.ModuleList(
            FusionBlock(width, config.fusion_heads, config.fusion_mlp_ratio, config.dropout,
                        layer_idx=self.text.num_layers + i, null_slot=config.fusion_null_slot,
                        qk_norm=config.fusion_qk_norm)
            for i in range(config.fusion_layers)
        )
        self.ln_final = nn.LayerNorm(width)
        # the causal/padding mask is built by transformers' own rules, in SDPA's form (the fusion
        # blocks call SDPA); a text tower on SDPA (the default) takes the same mask
        self.sdpa_mask_config = copy.copy(self.text.model.config)
        self.sdpa_mask_config._attn_implementation = "sdpa"
        self.image_projection = nn.Linear(self.vision.num_features, config.embed_dim, bias=False)
        self.text_projection = nn.Linear(width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.post_init()

    def load_pretrained_towers(self) -> torch.Tensor | None:
        """Load tower weights named in the config (`vision/text.pretrained_path`: local files, or
        hub ids); returns the text checkpoint's LM-head bias, if it has one."""
        if self.config.vision.get("pretrained_path"):
            self.vision.load_pretrained(self.config.vision["pretrained_path"])
        if self.config.text.get("pretrained_path"):
            return self.text.load_pretrained(self.config.text["pretrained_path"])
        return None

    def clamped_logit_scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(0, math.log(self.config.max_logit_scale)).exp()

    def _image_tokens(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, S, S) -> fusion-width patch tokens (B, N, D) and the vision tower's pooled (B, Dv)."""
        # pixels arrive in float32 from the processor; weights may be held in bfloat16 (train.dtype)
        tokens, pooled = self.vision(pixel_values.to(self.logit_scale.dtype))  # (B, N, Dv), (B, Dv)
        tokens = self.image_to_fusion(tokens)  # (B, N, D)
        if self.image_positions is not None:
            tokens = tokens + self.image_positions
        return tokens, pooled

    def encode_image(self, pixel_values: torch.Tensor, image_views: torch.Tensor | None = None,
                     image_is_prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One image per row (B, C, S, S), or a study per row (B, K, C, S, S) with `image_views`
        (B, K) ids (EMPTY_VIEW: a padding slot) and `image_is_prior` (B, K) flags ->
        fusion-width tokens (B, K * N, D), the normalised image embedding (B, E) pooled over the
        current study's images, and the key mask (B, K * N) of real tokens (None: all real)."""
        if pixel_values.dim() == 4:
            tokens, pooled = self._image_tokens(pixel_values)
            return tokens, F.normalize(self.image_projection(pooled), dim=-1), None
        B, K = pixel_values.shape[:2]
        views = image_views if image_views is not None else pixel_values.new_full((B, K), NUM_VIEW_IDS - 1, dtype=torch.long)
        present = views != EMPTY_VIEW  # (B, K)
        tokens, pooled = self._present_image_tokens(pixel_values.flatten(0, 1), present.flatten())
        tokens = tokens.unflatten(0, (B, K))  # (B, K, N, D)
        if image_views is not None:
            tokens = tokens + self.view_embeddings(views)[:, :, None]
        prior = image_is_prior.bool() if image_is_prior is not None else torch.zeros_like(present)
        tokens = tokens + (prior[..., None, None] * self.prior_embedding).to(tokens.dtype)
        current = (present & ~prior).to(pooled.dtype)  # (B, K) weights of the views pooled
        pooled = (pooled.unflatten(0, (B, K)) * current[..., None]).sum(1) / current.sum(1).clamp(min=1)[:, None]
        N = tokens.shape[2]
        mask = None if bool(present.all()) else present[:, :, None].expand(B, K, N).reshape(B, K * N)
        return tokens.flatten(1, 2), F.normalize(self.image_projection(pooled), dim=-1), mask

    def _present_image_tokens(self, pixels: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vision tower over the real slots only (B*K, C, S, S) -> tokens (B*K, N, D) and pooled
        (B*K, Dv), zero in empty slots."""
        if bool(present.all()):
            return self._image_tokens(pixels)
        tokens, pooled = self._image_tokens(pixels[present])
        all_tokens = tokens.new_zeros((pixels.shape[0],) + tokens.shape[1:])
        all_pooled = pooled.new_zeros((pixels.shape[0],) + pooled.shape[1:])
        all_tokens[present], all_pooled[present] = tokens, pooled
        return all_tokens, all_pooled

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

    def get_image_features(self, pixel_values: torch.Tensor, image_views: torch.Tensor | None = None,
                           image_is_prior: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode_image(pixel_values, image_views, image_is_prior)[1]

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
        image_views: torch.Tensor | None = None,
        image_is_prior: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> MedVLMModelOutput:
        """image_views, image_is_prior: (B, K) with 5-D pixel_values (see `encode_image`);
        image_mask: (B, N) real-token mask that goes with a precomputed `image_kv`."""
        image_embeds = None
        if image_kv is None:
            if pixel_values is None:
                raise ValueError("MedVLM needs pixel_values or precomputed image_kv")
            image_tokens, image_embeds, image_mask = self.encode_image(pixel_values, image_views, image_is_prior)
            image_kv = self.image_keys_values(image_tokens)
        text_embeds_wanted = cache is None  # a passed-in cache means a decoding step
        if use_cache and cache is None:
            cache = DynamicCache()
        T = input_ids.shape[1]
        position_ids = None
        if attention_mask is not None:
            # positions count real tokens only, so left-padded prompts line up with training
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -T:]
        # (B, 1, T, keys), or None where SDPA's causal flag is exact; sized by the cache before this
        # pass, so it serves every layer (only the batch, length, dtype of `inputs_embeds` are read)
        shape_only = image_kv.new_empty(input_ids.shape + (0,))  # (B, T, 0)
        mask = create_causal_mask(config=self.sdpa_mask_config, inputs_embeds=shape_only,
                                  attention_mask=attention_mask, cache=cache)
        tower_on_sdpa = self.text.model.config._attn_implementation == "sdpa"
        tower_mask = mask if tower_on_sdpa and not self.text.builds_own_masks else attention_mask
        text_states = self.text(input_ids, tower_mask, cache, position_ids)  # (B, T, D)
        text_embeds = self.pool_text(text_states, attention_mask) if text_embeds_wanted else None
        x = text_states
        for i, block in enumerate(self.fusion):
            x = block(x, image_kv[:, i].transpose(0, 1), mask, cache=cache, image_mask=image_mask)
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
        # an int8 copy of the head for CPU generation, set by inference_weights.quantized_int8
        self.quantized_lm_head: nn.Module | None = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MedVLMForConditionalGeneration):
            init.zeros_(module.lm_bias)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        text = self.model.text
        hidden = text.head_input(hidden)
        if self.quantized_lm_head is not None:
            logits = self.quantized_lm_head(hidden)
        else:
            # a tied head is the embedding matrix itself, so there is nothing to re-tie on load
            logits = few_row_linear(hidden, text.head_weight(), self.lm_bias)  # (B, T, V)
        return soft_capped(logits, text.logit_softcap)

    # The public surface: code outside medvlm/modeling calls these, never `model.model.*`.

    # `get_submodule` name of the timm backbone: Grad-CAM layer names start with it
    vision_backbone_name = "model.vision.backbone"

    def lora_targets(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Per tower: the `named_modules` prefix of its repeated blocks and the name suffixes of
        the projections LoRA adapts there (each family's own names)."""
        vision = self.model.vision
        return {"vision": (f"model.vision.{vision.block_prefix}", tuple(vision.lora_targets)),
                "text": ("model.text.model", self.model.text.lora_targets),
                "fusion": ("model.fusion", FUSION_LORA_TARGETS)}

    def get_image_features(self, pixel_values: torch.Tensor, image_views: torch.Tensor | None = None,
                           image_is_prior: torch.Tensor | None = None) -> torch.Tensor:
        """pixels (B, C, S, S), or studies (B, K, C, S, S) with their (B, K) view ids and prior
        flags -> (B, E) L2-normalised image embeddings (the contrastive space), pooled over the
        current study's views."""
        return self.model.get_image_features(pixel_values, image_views, image_is_prior)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """token ids (B, T) and padding mask (B, T) -> (B, E) L2-normalised text embeddings, taken
        at the last real token (the end token of a report)."""
        return self.model.get_text_features(input_ids, attention_mask)

    def clamped_logit_scale(self) -> torch.Tensor:
        """The contrastive logit scale (a scalar), clamped to at most `config.max_logit_scale`."""
        return self.model.clamped_logit_scale()

    def load_pretrained_towers(self) -> None:
        """Load the tower weights named by `vision/text.pretrained_path` (local files or folders,
        or hub ids), the text checkpoint's LM-head bias into `lm_bias`."""
        bias = self.model.load_pretrained_towers()
        if bias is not None:
            with torch.no_grad():
                self.lm_bias.copy_(bias)

    def resize_vocabulary(self, new_size: int, row_sources: list[list[int]]) -> None:
        """Grow the vocabulary to `new_size` tokens (an extended tokenizer): new row i of the token
        embeddings, of an untied head and of the bias starts as the mean of the old rows
        `row_sources[i]` (the old tokenizer's pieces of that token), so a new token first means
        what its pieces meant together. Old rows are unchanged."""
        text = self.model.text
        old = text.token_embeddings.num_embeddings
        if new_size - old != len(row_sources) or new_size < old:
            raise ValueError(f"{new_size - old} new rows need as many sources, got {len(row_sources)}")

        def grown(rows: torch.Tensor) -> torch.Tensor:  # (V, ...) -> (new_size, ...)
            new = torch.stack([rows[torch.as_tensor(ids)].float().mean(0) for ids in row_sources]).to(rows.dtype)
            return torch.cat([rows.detach(), new])

        embeddings = text.token_embeddings
        resized = nn.Embedding(new_size, embeddings.embedding_dim, padding_idx=embeddings.padding_idx,
                               device=embeddings.weight.device, dtype=embeddings.weight.dtype)
        with torch.no_grad():
            resized.weight.copy_(grown(embeddings.weight))
        text.model.set_input_embeddings(resized)
        if text.output_weight is not None:
            text.output_weight = nn.Parameter(grown(text.output_weight))
        self.lm_bias = nn.Parameter(grown(self.lm_bias[:, None])[:, 0])
        self.config.vocab_size = new_size
        self.config.text["vocab_size"] = new_size
        text.model.config.vocab_size = new_size

    def vision_tower(self) -> nn.Module:
        """The vision tower: `.backbone` is its timm model (named `vision_backbone_name`),
        `.num_prefix_tokens` the class/register tokens before its patch tokens."""
        return self.model.vision

    def cross_attention_layers(self) -> list[CrossAttention]:
        """The cross-attention module of each fusion layer, first to last; each takes text states
        (B, T, D) and image keys/values, and gives its weights by `attention_weights`."""
        return [block.cross_attn for block in self.model.fusion]

    def max_text_positions(self) -> int | None:
        """The longest sequence the text tower's positions allow (None: no limit)."""
        return getattr(self.model.text.model.config, "max_position_embeddings", None)

    def tower_modules(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        """The modules (and loose parameters) of each tower, for freezing: "vision" is the vision
        tower and the image projection, "text" the text tower and the text projection, "fusion" the
        fusion blocks, the image-to-fusion projection, the final norm and the image positions.
        The logit scale belongs to none."""
        inner = self.model
        fusion = [inner.fusion, inner.image_to_fusion, inner.ln_final, inner.view_embeddings, inner.prior_embedding]
        if inner.image_positions is not None:
            fusion.append(inner.image_positions)
        return {
            "vision": [inner.vision, inner.image_projection],
            "text": [inner.text, inner.text_projection],
            "fusion": fusion,
        }

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
        return_logits: bool | None = None,
        image_views: torch.Tensor | None = None,
        image_is_prior: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> MedVLMOutput:
        """labels: (B, T) token ids with -100 at pads and prompt tokens; the shift to next-token
        targets happens inside `caption_loss`, nowhere else. With labels the caption loss never
        forms the (B, T, V) logits, and `logits` is None unless `return_logits=True`.
        text_keys: (B,) ids equal for identical report texts (see `contrastive_loss`); defaults to
        comparing the token ids. Studies: 5-D pixel_values with image_views and image_is_prior,
        as `MedVLMModel.encode_image` describes."""
        out = self.model(input_ids, pixel_values, attention_mask, image_kv, cache, use_cache,
                         image_views=image_views, image_is_prior=image_is_prior, image_mask=image_mask)
        hidden = out.last_hidden_state[:, -logits_to_keep:] if logits_to_keep else out.last_hidden_state
        if return_logits is None:
            return_logits = labels is None
        logits = self.lm_logits(hidden) if return_logits else None
        logit_scale = self.model.clamped_logit_scale()
        parts = {}
        if labels is not None:
            text = self.model.text
            parts["caption_loss"] = caption_loss(text.head_input(out.last_hidden_state), text.head_weight(),
                                                 self.lm_bias, labels, self.config.label_smoothing,
                                                 softcap=text.logit_softcap)
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

    def _fit_new_tokens_to_positions(self, prompt_length: int, generate_kwargs: dict) -> None:
        """Lower `max_new_tokens` so that every token fed back fits the text tower's positions
        (with a warning): past them the position lookup would fail with an index error. The last
        new token is never fed back, so prompt + new tokens may exceed the positions by one."""
        positions, wanted = self.max_text_positions(), generate_kwargs.get("max_new_tokens")
        room = None if positions is None else positions - prompt_length + 1
        if room is None or wanted is None or wanted <= room:
            return
        if room < 1:
            raise UserError(f"the prompt has {prompt_length} tokens, more than the text tower's {positions} positions")
        generate_kwargs["max_new_tokens"] = room
        logger.warning_once(f"max_new_tokens={wanted}: a {prompt_length}-token prompt leaves room for {room} new "
                            f"tokens in the text tower's {positions} positions; generating at most {room}")

    @torch.inference_mode()
    def generate(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        image_kv: torch.Tensor | None = None,
        image_views: torch.Tensor | None = None,
        image_is_prior: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """HF `generate` (greedy, beam, sampling, ...) conditioned on images.

        The vision tower and the cross-attention key/value projections run once per image here;
        `generate` then only repeats the resulting tensor for beams/samples. Without `input_ids`
        every sequence starts from the BOS token (report generation); VQA passes the question as
        a left-padded prompt. Unless a `cache` is given, keys/values go to a cache sized for
        prompt + new tokens: a `PreallocatedCache`, or with `cache_implementation="static"` a
        `StaticDecoderCache`, whose fixed shapes let `generate` compile the decode step (on GPU by
        itself; elsewhere with `compile_config=compile_on_any_device()`). Runs under
        `torch.inference_mode` (less per-op overhead). A study (5-D pixel_values with
        `image_views`, `image_is_prior`) is encoded once too; its key mask is repeated like the
        keys/values.
        """
        if image_kv is None:
            image_tokens, _, image_mask = self.model.encode_image(pixel_values, image_views, image_is_prior)
            image_kv = self.model.image_keys_values(image_tokens)
            if image_mask is not None:
                generate_kwargs["image_mask"] = image_mask
        if input_ids is None:  # reports start from BOS alone: nothing is padding, as the mask says
            input_ids = torch.full((image_kv.shape[0], 1), self.config.bos_token_id, device=image_kv.device)
            attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        self._fit_new_tokens_to_positions(input_ids.shape[1], generate_kwargs)
        implementation = generate_kwargs.pop("cache_implementation", None)
        if implementation not in (None, "dynamic", "static"):
            raise UserError(f"cache_implementation={implementation!r}: MedVLM supports 'dynamic' (default) "
                             "or 'static'")
        if "compile_config" in generate_kwargs:  # the compiled decode step uses the forms chosen by then
            rows = image_kv.shape[0] * max(generate_kwargs.get("num_beams", 1),
                                           generate_kwargs.get("num_return_sequences", 1))
            choose_forms_now(self._few_row_layers(), rows)
        if generate_kwargs.get("use_cache", True) and "cache" not in generate_kwargs:
            capacity = self._expected_length(input_ids, generate_kwargs)
            generate_kwargs["cache"] = (
                StaticDecoderCache(self.model.text.num_layers + len(self.model.fusion), capacity)
                if implementation == "static" else PreallocatedCache(capacity)
            )
        return super().generate(
            input_ids=input_ids, attention_mask=attention_mask, image_kv=image_kv, **generate_kwargs
        )

    def _few_row_layers(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(weight, bias) of every product a decoding step sends through `few_row_linear`."""
        layers = [(m.weight, m.bias) for m in self.model.fusion.modules() if isinstance(m, FewRowLinear)]
        return layers + [(self.model.text.head_weight(), self.lm_bias)]

    def create_masks_for_generate(self, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
        """`generate` turns the 2D padding mask into a 4D one for static caches; MedVLM keeps it 2D,
        since `forward` counts positions from it and builds every layer's mask itself."""
        return attention_mask

    def _expected_length(self, input_ids: torch.Tensor, generate_kwargs: dict) -> int:
        """Prompt + new tokens, to size the KV cache once (it still grows if this falls short)."""
        config = generate_kwargs.get("generation_config") or self.generation_config
        new_tokens = generate_kwargs.get("max_new_tokens") or config.max_new_tokens
        if new_tokens:
            return input_ids.shape[1] + new_tokens
        return generate_kwargs.get("max_length") or config.max_length or input_ids.shape[1]
