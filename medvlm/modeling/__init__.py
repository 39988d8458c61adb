"""The medvlm models. Self-contained: imports only torch, timm and transformers (and relatively),
so a checkpoint directory can also be shared as HF remote code."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForImageTextToText

from .configuration_chexnet import CheXNetConfig
from .configuration_medvlm import MedVLMConfig
from .modeling_chexnet import CheXNetForImageClassification, CheXNetOutput
from .modeling_medvlm import MedVLMForConditionalGeneration, MedVLMModel, MedVLMOutput, compile_on_any_device

AutoConfig.register("medvlm", MedVLMConfig, exist_ok=True)
AutoModel.register(MedVLMConfig, MedVLMModel, exist_ok=True)
AutoModelForImageTextToText.register(MedVLMConfig, MedVLMForConditionalGeneration, exist_ok=True)
AutoConfig.register("chexnet", CheXNetConfig, exist_ok=True)
AutoModelForImageClassification.register(CheXNetConfig, CheXNetForImageClassification, exist_ok=True)

__all__ = ["MedVLMConfig", "MedVLMModel", "MedVLMForConditionalGeneration", "MedVLMOutput",
           "CheXNetConfig", "CheXNetForImageClassification", "CheXNetOutput", "compile_on_any_device"]
