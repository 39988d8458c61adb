"""Tiny model configs shared by the tests (random weights, built in milliseconds)."""

from medvlm.modeling import MedVLMConfig

VOCAB = 64


def tiny_config(text_type: str = "gpt2", vision: str = "vit", **overrides) -> MedVLMConfig:
    if vision == "vit":
        vision_spec = {"model_name": "vit_tiny_patch16_224", "img_size": 32, "in_chans": 1,
                       "timm_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}}
    else:
        vision_spec = {"model_name": vision, "img_size": 32, "in_chans": 1, "timm_kwargs": {}}
    if text_type == "gpt2":
        text = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}
    else:
        text = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64, "max_position_embeddings": 64}
    kwargs = dict(vision=vision_spec, text=text, fusion_layers=2, fusion_heads=2, embed_dim=16, vocab_size=VOCAB,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kwargs.update(overrides)
    return MedVLMConfig(**kwargs)
