"""medvlm: chest X-ray vision-language models (CoCa-style), report generation, VQA and evaluation.

Importing it registers the models, configs and processor with transformers' Auto classes."""

from .modeling import MedVLMConfig, MedVLMForConditionalGeneration, MedVLMModel
from .processing import MedVLMImageProcessor, MedVLMProcessor

__version__ = "0.1.0"
__all__ = ["MedVLMConfig", "MedVLMModel", "MedVLMForConditionalGeneration", "MedVLMProcessor",
           "MedVLMImageProcessor", "__version__"]
