"""The medvlm models and their configs, registered with the HF Auto classes. Model code imports
only torch, timm, transformers and `medvlm.errors`: no training, data or metrics code."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForImageTextToText

from .cache import PreallocatedCache, StaticDecoderCache, compile_on_any_device
from .configuration_chexnet import CheXNetConfig
from .configuration_medvlm import MedVLMConfig
from .kernels import FewRowLinear, LinearCrossEntropy, caption_cross_entropy, few_row_linear
from .modeling_chexnet import CheXNetForImageClassification, CheXNetOutput
from .modeling_medvlm import MedVLMForConditionalGeneration, MedVLMModel, MedVLMOutput

AutoConfig.register("medvlm", MedVLMConfig, exist_ok=True)
AutoModel.register(MedVLMConfig, MedVLMModel, exist_ok=True)
AutoModelForImageTextToText.register(MedVLMConfig, MedVLMForConditionalGeneration, exist_ok=True)
AutoConfig.register("chexnet", CheXNetConfig, exist_ok=True)
AutoModelForImageClassification.register(CheXNetConfig, CheXNetForImageClassification, exist_ok=True)

__all__ = ["MedVLMConfig", "MedVLMModel", "MedVLMForConditionalGeneration", "MedVLMOutput",
           "CheXNetConfig", "CheXNetForImageClassification", "CheXNetOutput", "compile_on_any_device",
           "PreallocatedCache", "StaticDecoderCache", "few_row_linear", "FewRowLinear", "caption_cross_entropy",
           "LinearCrossEntropy"]
