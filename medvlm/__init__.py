"""medvlm: chest X-ray vision-language models (CoCa-style), report generation, VQA and evaluation."""

from .modeling import MedVLMConfig, MedVLMForConditionalGeneration, MedVLMModel
from .processing import MedVLMProcessor

__version__ = "0.1.0"
__all__ = ["MedVLMConfig", "MedVLMModel", "MedVLMForConditionalGeneration", "MedVLMProcessor", "__version__"]
