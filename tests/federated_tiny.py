"""A tiny federation (three synthetic hospitals, a small CNN at 32 px) shared by the federated tests."""

from pathlib import Path

TINY_FEDERATION = """\
model:
  vision: {model_name: regnetx_002, in_chans: 1, timm_kwargs: {}, token_reduction: 16, pool_tokens: max}
  text: {model_type: gpt2, n_embd: 32, n_layer: 1, n_head: 2}
  fusion_layers: 1
  fusion_heads: 2
  embed_dim: 32
data:
  dataset: synthetic
  options: {num_train: 90, num_validation: 24, num_test: 24, seed: 0, hospitals: 3}
  image_size: 32
  max_length: 64
  tokenizer_vocab_size: 200
train:
  output_dir: OUT
  batch_size: 8
  learning_rate: 1.0e-3
  warmup_steps: 1
  log_every: 5
  tensorboard: false
eval:
  batch_size: 12
  max_new_tokens: 16
  bootstrap_resamples: 20
federated:
  sites: 3
  rounds: 2
  local_steps: 2
  min_token_count: 1
"""


def write_config(folder: Path, out: Path) -> Path:
    path = folder / "federation.yaml"
    path.write_text(TINY_FEDERATION.replace("OUT", str(out)))
    return path
