"""transformers adapter: token ids -> unimodal, causal text states (GPT-2 or BERT family)."""

from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoModel
from transformers.cache_utils import Cache
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from torch import nn

from ..errors import UserError


def text_config_from(spec: dict):
    """A transformers config from a dict with `model_type`; BERT-family models are made causal."""
    fields = {k: v for k, v in spec.items() if k not in ("model_type", "pretrained_path")}
    model_type = spec["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise UserError(f"model.text.model_type={model_type!r}: not a transformers model type "
                        "(e.g. 'gpt2', 'bert', 'llama')")
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


def text_spec_from_checkpoint(path: str | Path) -> dict:
    """The `text` dict of MedVLMConfig for a local transformers checkpoint directory."""
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise UserError(f"model.text.pretrained_path={str(path)!r}: no transformers checkpoint there ({error})") from None
    spec = config.to_diff_dict()
    spec["model_type"] = config.model_type
    spec["pretrained_path"] = str(path)
    for key in ("architectures", "transformers_version", "dtype", "torch_dtype"):
        spec.pop(key, None)
    return spec


class TextTower(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        self.model = AutoModel.from_config(text_config_from(spec))
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # BERT's [CLS] pooler is unused: we pool at the end token
        self.hidden_size = self.model.config.hidden_size
        self.num_layers = self.model.config.num_hidden_layers
        # The tower gets no mask exactly when none is needed (MedVLMModel passes None where SDPA's
        # causal flag is exact); transformers would then warn about "padding" whenever a pad id
        # appears, e.g. the filler generate feeds to finished sequences, whose outputs are dropped.
        self.model.warn_if_padding_and_no_attention_mask = lambda input_ids, attention_mask: None

    def load_pretrained(self, path: str | Path) -> None:
        """Copy weights from a local transformers checkpoint of the same architecture."""
        try:
            source = AutoModel.from_pretrained(str(path))
        except (OSError, ValueError) as error:
            raise UserError(f"model.text.pretrained_path={str(path)!r}: no transformers checkpoint there "
                            f"({error})") from None
        missing, _ = self.model.load_state_dict(source.state_dict(), strict=False)
        if len(missing) == len(self.model.state_dict()):
            raise UserError(f"model.text.pretrained_path={str(path)!r}: no weight matches the "
                            f"{type(self.model).__name__} text tower")

    @property
    def token_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

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
