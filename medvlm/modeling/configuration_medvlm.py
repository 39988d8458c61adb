"""MedVLMConfig: the vision tower, the text tower and the fusion decoder as one config.

The two towers are described by plain dicts so that any timm model and any GPT-2- or
BERT-family transformers model can be named without a config class per backbone:

    vision = {"model_name": "vit_small_patch16_224", "img_size": 224, "in_chans": 1,
              "timm_kwargs": {...}, "pretrained_path": None,
              "token_reduction": None,  # CNNs: tokens from the deepest stage with stride <= this
              "pool_tokens": False}  # image embedding from those tokens ("mean" or "max"), not the last stage's pool
    text   = {"model_type": "gpt2", "n_embd": 384, ...,  "pretrained_path": None}
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

DEFAULT_VISION = {
    "kind": None,  # None / "timm", "transformers" or "open_clip"; recognised from a checkpoint's files
    "config": None,  # transformers: the vision config as a dict; open_clip: its model_cfg
    "mean": None,  # per-channel normalisation of the encoder (None: 0.5 / 0.5)
    "std": None,
    "model_name": "vit_tiny_patch16_224",
    "img_size": 224,
    "in_chans": 1,
    "timm_kwargs": {},
    "token_reduction": None,
    "pool_tokens": False,
    "pretrained_path": None,
}
DEFAULT_TEXT = {"model_type": "gpt2", "n_embd": 256, "n_layer": 2, "n_head": 4}


def merged_text(text: dict | None) -> dict:
    """`text` over DEFAULT_TEXT key by key when it names the default family (or no family and no
    checkpoint, whose own config then applies), else as given."""
    text = dict(text or {})
    if text.get("pretrained_path"):
        return text  # the checkpoint's config (completed from it by the caller), never our defaults
    if text.get("model_type", DEFAULT_TEXT["model_type"]) == DEFAULT_TEXT["model_type"]:
        return {**DEFAULT_TEXT, **text}
    return text


@strict
class MedVLMConfig(PreTrainedConfig):
    r"""
    vision (`dict`): timm model name and arguments (see module docstring).
    text (`dict`): a transformers config as a dict (`model_type` plus its fields); BERT-family
        towers are switched to causal (`is_decoder=True`).
    fusion_layers (`int`): number of fusion blocks (self-attention, cross-attention, MLP).
    fusion_heads (`int`): attention heads in the fusion blocks.
    fusion_mlp_ratio (`float`): MLP hidden width as a multiple of the text width.
    fusion_null_slot (`bool`): give cross-attention one learnt key/value besides the image
        patches, so a query with nothing to look at attends there instead of piling its
        attention on an arbitrary background patch (which would make the maps meaningless).
    fusion_image_positions (`bool`): add a learnt position embedding to the image tokens that
        cross-attention reads (CNN tokens carry no explicit position; ViT tokens already do), so
        where a finding is can be read from where attention goes.
    fusion_qk_norm (`bool`): cross-attention scores as cosine(query, key) times a learnt per-head
        scale (starting at 10) instead of scaled dot products.
    embed_dim (`int`): width of the shared image-text contrastive embedding.
    init_temperature (`float`): initial contrastive temperature; the learnt logit scale is
        clamped to at most `max_logit_scale`.
    contrastive_weight / caption_weight (`float`): weights of the two losses in the total.
    label_smoothing (`float`): label smoothing of the caption loss.
    """

    model_type = "medvlm"
    # keys a run config's model section may not set, and where they come from instead
    derived_fields = {
        "vocab_size": "it is the tokenizer's", "bos_token_id": "it is the tokenizer's",
        "eos_token_id": "it is the tokenizer's", "pad_token_id": "it is the tokenizer's",
    }
    vision_keys = tuple(DEFAULT_VISION)
    # what a run config may set each field to (read by medvlm.config; rules: min / max inclusive,
    # gt / lt exclusive, choices); "vision.<key>" is a key of the vision dict
    setting_ranges = {
        "fusion_layers": {"min": 1}, "fusion_heads": {"min": 1}, "fusion_mlp_ratio": {"gt": 0},
        "dropout": {"min": 0, "lt": 1}, "embed_dim": {"min": 1}, "init_temperature": {"gt": 0},
        "max_logit_scale": {"gt": 0}, "contrastive_weight": {"min": 0}, "caption_weight": {"min": 0},
        "label_smoothing": {"min": 0, "lt": 1}, "initializer_range": {"gt": 0},
        "vision.in_chans": {"min": 1}, "vision.token_reduction": {"min": 1},
        "vision.pool_tokens": {"choices": (False, True, "mean", "max")},
    }

    vision: dict | None = None
    text: dict | None = None
    fusion_layers: int = 2
    fusion_heads: int = 4
    fusion_mlp_ratio: float = 4.0
    fusion_null_slot: bool = False
    fusion_image_positions: bool = False
    fusion_qk_norm: bool = False
    dropout: float = 0.0
    embed_dim: int = 256
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    contrastive_weight: float = 1.0
    caption_weight: float = 2.0
    label_smoothing: float = 0.0
    initializer_range: float = 0.02
    vocab_size: int = 1000
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = False  # the LM head reuses the embedding matrix itself (see LMHead)

    def __post_init__(self, **kwargs):
        self.vision = {**DEFAULT_VISION, **(self.vision or {})}
        self.text = merged_text(self.text)
        # the text tower shares the tokenizer, hence the vocabulary and special ids, of the whole model
        # A pad that doubles as BOS/EOS (GPT-2, Qwen) must not reach the tower as its pad id:
        # transformers makes it the embedding's padding_idx, which would zero that row at init and
        # freeze it in training, though every report starts and ends with it. Pads are masked by
        # the attention mask, never by id.
        shared = self.pad_token_id in (self.bos_token_id, self.eos_token_id)
        self.text.update(vocab_size=self.vocab_size, bos_token_id=self.bos_token_id,
                         eos_token_id=self.eos_token_id, pad_token_id=None if shared else self.pad_token_id)
        super().__post_init__(**kwargs)
