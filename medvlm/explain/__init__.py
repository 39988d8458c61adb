"""Explainability: where a model looks, as maps over the image.

- `attention`: cross-attention of the fusion decoder's text positions over image patches, per
  generated word (layers and heads chosen, averaged by default);
- `gradcam`: Grad-CAM on any layer named by string (CheXNet logits, the VLM's image-text
  similarity);
- `overlay`: the maps drawn over the radiograph and written as PNG.

Scoring maps against finding masks (pointing game, IoU) is in `medvlm.metrics.localization`.
"""

from .attention import cross_attention_maps, cross_attention_relevance, word_maps, word_positions
from .gradcam import grad_cam
from .overlay import save_overlay, save_word_overlays

__all__ = ["cross_attention_maps", "cross_attention_relevance", "word_maps", "word_positions", "grad_cam",
           "save_overlay", "save_word_overlays"]
