"""Pretrained text towers of every supported family, from a folder as `save_pretrained` writes it:
weights arrive intact, the model trains and generates (cached = uncached), saves and reloads,
and LoRA merges. Tiny random-weight LMs; nothing is downloaded."""

import pytest
import torch
from safetensors.torch import load_file

from medvlm.config import load_config
from medvlm.errors import UserError
from medvlm.finetuning import add_lora, exportable
from medvlm.modeling import MedVLMForConditionalGeneration
from medvlm.random_towers import save_random_lm
from medvlm.runs import build_model, build_processor
from tiny import as_studies

WORDS = ("no acute cardiopulmonary process . heart size is normal . there is a small left pleural effusion . "
         "mild cardiomegaly with right lower lobe opacity . is there an effusion ? yes no").split()
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=128)
FAMILIES = {
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=128),
    "bert": dict(model_type="bert", **SMALL),
    "llama": dict(model_type="llama", num_key_value_heads=2, tie_word_embeddings=False, **SMALL),
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2, tie_word_embeddings=True, **SMALL),
    "gemma2": dict(model_type="gemma2", num_key_value_heads=2, head_dim=8, sliding_window=8, **SMALL),
    "gemma3_text": dict(model_type="gemma3_text", num_key_value_heads=2, head_dim=8, sliding_window=8, **SMALL),
    "phi3": dict(model_type="phi3", num_key_value_heads=2, tie_word_embeddings=False, pad_token_id=None, **SMALL),
    "mistral": dict(model_type="mistral", num_key_value_heads=2, sliding_window=8, tie_word_embeddings=False,
                    **SMALL),
}
EXTRA_ROWS = {"qwen2": 16}  # Qwen checkpoints carry embedding rows beyond the tokenizer
TINY_VISION = ["data.image_size=32", "model.vision.model_name=vit_tiny_patch16_224",
               "model.vision.timm_kwargs={embed_dim: 32, depth: 1, num_heads: 2}", "model.vision.token_reduction=null",
               "model.fusion_layers=1", "model.fusion_heads=2", "model.embed_dim=16", "data.max_length=48"]


def run_config(lm_folder, *extra):
    return load_config(None, [*TINY_VISION, f"model.text={{pretrained_path: {lm_folder}}}", *extra])


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, LM folder, processor, model) for one family, built the way `train.py` builds it."""
    name = request.param
    folder = save_random_lm(tmp_path_factory.mktemp(name), FAMILIES[name], WORDS, EXTRA_ROWS.get(name, 0))
    cfg = run_config(folder)
    processor = build_processor(cfg, [])
    torch.manual_seed(0)
    return name, folder, processor, build_model(cfg, processor)


def batch(processor, n=2):
    texts = ["heart size is normal .", "there is a small left pleural effusion ."][:n]
    enc = processor.texts(texts)
    enc["pixel_values"] = torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    return enc


def test_tower_weights_equal_the_checkpoint(family):
    name, folder, _, model = family
    saved = load_file(str(folder / "model.safetensors"))
    text = model.model.text
    prefix = {"gpt2": "transformer.", "bert": "bert."}.get(name, "model.")
    body = text.model.state_dict()
    compared = 0
    for key, value in body.items():
        source = saved.get(prefix + key)
        if source is None:
            continue  # tied or non-persistent tensors saved under another name
        assert torch.equal(value[: source.shape[0]], source), key
        compared += 1
    assert compared >= len(body) - 1
    if text.output_weight is not None:
        head = saved["lm_head.weight"]
        assert torch.equal(text.output_weight[: head.shape[0]], head)
    if name == "bert":
        assert torch.equal(model.lm_bias[: saved["cls.predictions.bias"].shape[0]], saved["cls.predictions.bias"])
        assert torch.equal(text.head_transform.dense.weight, saved["cls.predictions.transform.dense.weight"])
    expected_head = {"llama": "own", "phi3": "own", "mistral": "own", "bert": "own"}.get(name, "tied")
    assert model.config.text["head"] == expected_head


def test_tokenizer_is_the_lms_and_frames_reports(family):
    name, folder, processor, model = family
    tokenizer = processor.tokenizer
    ids = tokenizer("heart size is normal .")["input_ids"]
    assert ids[0] == model.config.bos_token_id and ids[-1] == model.config.eos_token_id
    assert processor.decode(torch.tensor([ids])) == ["heart size is normal ."]
    assert model.config.vocab_size >= len(tokenizer)
    assert model.config.vocab_size == max(len(tokenizer), len(WORDS) and model.model.text.token_embeddings.num_embeddings)
    pair = tokenizer("is there an effusion ?", "yes")["input_ids"]
    assert tokenizer.sep_token_id in pair and pair[-1] == model.config.eos_token_id


def test_forward_loss_and_a_training_step_reach_every_new_parameter(family):
    name, _, processor, model = family
    model.train()
    out = model(**as_studies(batch(processor)))  # studies: view and prior embeddings too
    assert torch.isfinite(out.loss)
    out.loss.backward()
    pretrained = {f"model.text.model.{k}" for k in model.model.text.model.state_dict()}
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and n not in pretrained and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.step()
    model.zero_grad()
    assert torch.isfinite(model(**batch(processor)).loss)


def test_cached_and_uncached_greedy_generation_agree(family):
    _, _, processor, model = family
    model.eval()
    pixels = batch(processor)["pixel_values"]
    settings = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False)  # past the 8-token sliding windows
    cached = model.generate(pixel_values=pixels, use_cache=True, **settings)
    uncached = model.generate(pixel_values=pixels, use_cache=False, **settings)
    assert torch.equal(cached, uncached)


def test_save_and_reload_give_identical_outputs(family, tmp_path):
    _, _, processor, model = family
    model.eval()
    inputs = batch(processor)
    model.save_pretrained(tmp_path / "m")
    again = MedVLMForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs, return_logits=True).logits, again(**inputs, return_logits=True).logits)


def test_lora_on_the_text_tower_merges_and_reloads(family, tmp_path):
    name, _, processor, model = family
    model.eval()
    inputs = batch(processor)
    lora = add_lora(_copy(model), {"r": 4, "alpha": 8, "towers": ["text"]})
    wrapped = [n for n, _ in lora.named_modules() if n.endswith("lora_A")]
    assert wrapped, f"{name}: LoRA found no target in the text tower"
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)  # B starts at zero: without this, merging would be trivially exact
        adapted = lora(**inputs, return_logits=True).logits
    merged = exportable(lora)
    merged.save_pretrained(tmp_path / "merged")
    again = MedVLMForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        reloaded = again(**inputs, return_logits=True).logits
        original = model(**inputs, return_logits=True).logits
    assert torch.allclose(adapted, reloaded, atol=1e-5)
    assert not torch.allclose(original, reloaded, atol=1e-4)


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_a_hub_id_without_the_hub_is_a_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = run_config("Qwen/Qwen2.5-0.5B-not-cached")
    with pytest.raises(UserError, match=r"hf download Qwen/Qwen2.5-0.5B-not-cached --local-dir"):
        build_processor(cfg, [])


def test_a_path_that_is_not_there_names_the_setting(tmp_path):
    with pytest.raises(UserError, match="model.text.pretrained_path"):
        build_processor(run_config(tmp_path / "nowhere"), [])


def test_the_readme_yaml_and_the_presets_are_valid_run_configs(tmp_path):
    """The README's "Pretrained towers" YAML and every configs/pretrained preset load as run
    configs (the image size is given, so nothing is looked up on the hub)."""
    import re

    from tiny import ROOT

    block = re.search(r"<!-- example:pretrained-yaml -->\s*```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (tmp_path / "readme.yaml").write_text(block.group(1))
    presets = sorted((ROOT / "configs" / "pretrained").glob("*.yaml"))
    assert len(presets) >= 2
    for path in [tmp_path / "readme.yaml", *presets]:
        cfg = load_config(path, ["data.image_size=224"])
        assert cfg.model.values["vision"]["pretrained_path"] and cfg.model.values["text"]["pretrained_path"], path


def test_a_pad_shared_with_bos_or_eos_is_no_padding_idx(family):
    """Qwen and GPT-2 frame reports with their end-of-text token, which is also the pad: it must
    not become the embedding's padding_idx (a zero, frozen row for the token every report starts
    with: with random weights, backpropagation through that zero row overflows to NaN)."""
    _, _, processor, model = family
    embedding = model.model.text.token_embeddings
    tokenizer = processor.tokenizer
    if tokenizer.pad_token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        assert embedding.padding_idx is None
    model.train()
    out = model(**batch(processor))
    out.loss.backward()
    assert embedding.weight.grad[model.config.bos_token_id].abs().sum() > 0  # the start token trains
    model.zero_grad()
