"""transformers adapter: token ids -> causal text states, and the LM head that reads them.

Any causal LM transformers builds through `AutoModelForCausalLM` (GPT-2, Llama, Qwen2/3,
Gemma 2/3, Phi-3, Mistral, ...) or a BERT-family encoder switched to causal. The tower keeps the
LM's body (`self.model`, state-dict names as the LM's base model) and its head, in one of two
forms named by the text spec's `head` key:

- "tied" (medvlm's own models, and LMs whose config ties the head to the input embeddings, such
  as GPT-2, Qwen2.5-0.5B or Gemma): logits = states @ embeddings.T + a bias;
- "own" (LMs with an untied head, such as Llama 3 or Phi-3, and BERT's MLM head with its
  transform): the checkpoint's head weights are kept and fine-tuned.
"""

from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.cache_utils import Cache
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from torch import nn

from ..errors import UserError
from .sources import resolve_local

SPEC_ONLY_KEYS = ("model_type", "pretrained_path", "head")  # text-spec keys that are not config fields
HEADS = ("tied", "own")
# LoRA targets: every attention and MLP projection of a block (as QLoRA found best), by name suffix
LORA_TARGETS = {
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "bert": ("query", "key", "value", "dense"),  # and the other BERT-family encoders
    # Llama, Qwen2/3, Gemma 2/3, Mistral use the first seven; Phi-3 fuses them as qkv_proj, gate_up_proj
    "decoder": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj",
                "gate_up_proj"),
}


def text_config_from(spec: dict):
    """A transformers config from a dict with `model_type`; BERT-family models are made causal."""
    fields = {k: v for k, v in spec.items() if k not in SPEC_ONLY_KEYS}
    model_type = spec["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise UserError(f"model.text.model_type={model_type!r}: not a transformers model type "
                        "(e.g. 'gpt2', 'bert', 'llama', 'qwen2', 'gemma3_text', 'phi3', 'mistral')")
    try:
        config = AutoConfig.for_model(model_type, **fields)
    except (ValueError, TypeError, StrictDataclassError) as error:
        raise UserError(f"model.text ({model_type}): {error}") from None
    if hasattr(config, "is_decoder"):
        config.is_decoder = True  # BERT-style encoders run causally: one pass serves both losses
    if getattr(config, "activation_function", None) == "gelu_new":
        # GPT-2's tanh GELU written out in Python (six kernels each way) -> torch's fused kernel of
        # the same formula; pretrained GPT-2 weights give the same outputs
        config.activation_function = "gelu_pytorch_tanh"
    return config


def is_bert_like(config) -> bool:
    """Encoders run causally (BERT, RoBERTa, ...): they have an `is_decoder` switch."""
    return hasattr(config, "is_decoder") and not getattr(config, "n_embd", None)


def head_kind_of(config) -> str:
    """The head a pretrained LM brings: "own" when it is untied or has a transform (BERT's MLM
    head), else "tied"."""
    if is_bert_like(config):
        return "own"
    return "tied" if getattr(config, "tie_word_embeddings", True) else "own"


def text_spec_from_checkpoint(path: str | Path) -> dict:
    """The `text` dict of MedVLMConfig for a transformers checkpoint (local folder or hub id)."""
    folder = resolve_local(path, "model.text.pretrained_path", "config.json")
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as error:
        raise UserError(f"model.text.pretrained_path={str(path)!r}: no transformers checkpoint there ({error})") from None
    if hasattr(config, "text_config") and not hasattr(config, "vocab_size"):
        raise UserError(f"model.text.pretrained_path={str(path)!r}: a {config.model_type} checkpoint is a "
                        "multimodal model; point the text tower at its language model")
    spec = config.to_diff_dict()
    spec["model_type"] = config.model_type
    spec["pretrained_path"] = str(path)
    spec["head"] = head_kind_of(config)
    for key in ("architectures", "transformers_version", "dtype", "torch_dtype", "auto_map"):
        spec.pop(key, None)
    return spec


class TextTower(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        config = text_config_from(spec)
        self.head_kind = spec.get("head", "tied")
        if self.head_kind not in HEADS:
            raise UserError(f"model.text.head={self.head_kind!r}: expected one of {', '.join(HEADS)}")
        self.head_transform: nn.Module | None = None  # BERT's dense + act + norm before the decoder
        self.output_weight: nn.Parameter | None = None  # (V, D) untied head; None: the embeddings
        if self.head_kind == "tied":
            self.model = AutoModel.from_config(config)
        else:
            lm = AutoModelForCausalLM.from_config(config)
            self.model = lm.base_model
            if is_bert_like(config):
                self.head_transform = lm.cls.predictions.transform
            elif not config.tie_word_embeddings:
                self.output_weight = lm.get_output_embeddings().weight
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # BERT's [CLS] pooler is unused: we pool at the end token
        family = "gpt2" if config.model_type == "gpt2" else "bert" if is_bert_like(config) else "decoder"
        self.lora_targets = LORA_TARGETS[family]
        self.hidden_size = config.hidden_size
        self.num_layers = config.num_hidden_layers
        # Gemma 2's logits pass through cap * tanh(logits / cap)
        self.logit_softcap: float | None = getattr(config, "final_logit_softcapping", None)
        # sliding-window layers (Gemma, Mistral): the tower builds its own masks from the 2D one
        self.builds_own_masks = bool(getattr(config, "sliding_window", None)) and (
            "sliding_attention" in (getattr(config, "layer_types", None) or ["sliding_attention"]))
        # The tower gets no mask exactly when none is needed (MedVLMModel passes None where SDPA's
        # causal flag is exact); transformers would then warn about "padding" whenever a pad id
        # appears, e.g. the filler generate feeds to finished sequences, whose outputs are dropped.
        self.model.warn_if_padding_and_no_attention_mask = lambda input_ids, attention_mask: None

    def load_pretrained(self, path: str | Path) -> torch.Tensor | None:
        """Copy the weights of a transformers checkpoint (local folder, or a hub id in the local
        cache) into the body and head; rows for tokens the checkpoint lacks (a vocabulary grown
        by new special tokens) start as the mean of its rows. Returns the head bias the
        checkpoint has (BERT's), for the model's `lm_bias`, or None."""
        folder = resolve_local(path, "model.text.pretrained_path", "config.json")
        try:
            # the checkpoint's own config (its vocabulary size), made causal as the tower is
            causal = {"is_decoder": True} if is_bert_like(self.model.config) else {}
            source = AutoModelForCausalLM.from_pretrained(str(folder), **causal)
        except (OSError, ValueError) as error:
            raise UserError(f"model.text.pretrained_path={str(path)!r}: no transformers checkpoint there "
                            f"({error})") from None
        body = source.base_model.state_dict()
        own = self.model.state_dict()
        unmatched = [k for k in own if k not in body]
        if unmatched:
            raise UserError(f"model.text.pretrained_path={str(path)!r}: the checkpoint lacks {len(unmatched)} "
                            f"tensors of the {type(self.model).__name__} text tower, e.g. {unmatched[:3]}")
        embedding_name = next(k for k, v in self.model.named_parameters() if v is self.token_embeddings.weight)
        body[embedding_name] = grown_rows(body[embedding_name], own[embedding_name].shape[0])
        self.model.load_state_dict(body, strict=True)
        bias = None
        if self.head_transform is not None:
            self.head_transform.load_state_dict(source.cls.predictions.transform.state_dict())
            bias = source.cls.predictions.bias.detach()
        elif self.output_weight is not None:
            head = source.get_output_embeddings()
            with torch.no_grad():
                self.output_weight.copy_(grown_rows(head.weight.detach(), self.output_weight.shape[0]))
            bias = None if head.bias is None else head.bias.detach()
        return None if bias is None else grown_rows(bias[:, None], self.token_embeddings.num_embeddings)[:, 0]

    @property
    def token_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def head_weight(self) -> torch.Tensor:
        """(V, D) matrix of the LM head: its own, or the token embeddings."""
        return self.output_weight if self.output_weight is not None else self.token_embeddings.weight

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the head's matrix multiplies: the states, through BERT's transform when present."""
        return hidden if self.head_transform is None else self.head_transform(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state  # (B, T, D)


def grown_rows(rows: torch.Tensor, count: int) -> torch.Tensor:
    """`rows` (V, ...) with rows appended up to `count`, each the mean of the existing ones; a
    checkpoint with more rows than `count` (padding rows some LMs carry) is an error."""
    if rows.shape[0] == count:
        return rows
    if rows.shape[0] > count:
        raise UserError(f"the text checkpoint has {rows.shape[0]} token rows, more than the model's vocabulary "
                        f"of {count}; the vocabulary size comes from the larger of the two")
    extra = rows.float().mean(0, keepdim=True).to(rows.dtype).expand(count - rows.shape[0], *rows.shape[1:])
    return torch.cat([rows, extra])
