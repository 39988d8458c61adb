from pathlib import Path

import pytest

from medvlm.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.max_steps=7", "train.learning_rate=1.0e-3", "model.vision.timm_kwargs.depth=3"])
    assert cfg.train.max_steps == 7
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    # dict-valued settings are updated key by key, not replaced
    assert cfg.model.vision["timm_kwargs"] == {"depth": 3}
    assert cfg.model.vision["model_name"] == "vit_tiny_patch16_224"


def test_integer_is_accepted_for_a_float():
    assert load_config(None, ["train.learning_rate=1"]).train.learning_rate == 1.0


@pytest.mark.parametrize("override, message", [
    ("train.lr=0.1", "unknown config key 'train.lr'"),
    ("trian.max_steps=1", "did you mean 'train'"),
    ("train.max_steps=ten", "'train.max_steps' must be int"),
    ("train.learning_rate=1e-4", "YAML reads 1e-4 as a string"),
    ("data.augment=[1]", "'data.augment' must be bool"),
])
def test_bad_keys_and_types_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, [override])


def test_unknown_key_in_a_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_step: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.max_step'.*max_steps"):
        load_config(path)


def test_missing_file_and_malformed_override():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.max_steps"])


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_presets_load(preset):
    cfg = load_config(CONFIGS / preset)
    assert cfg.train.max_steps > 0


# ---- the model section is checked by the model's own config class (one schema)

@pytest.mark.parametrize("override, message", [
    ("model.fusion_layer=3", "unknown config key 'model.fusion_layer' (did you mean 'fusion_layers'?)"),
    ("model.fusion_layers=two", "'model.fusion_layers' must be int"),
    ("model.init_from=runs/demo/final", "'model.init_from' is now 'train.init_from'"),
    ("model.vocab_size=99", "'model.vocab_size' is not set in a run config: it is the tokenizer's"),
    ("model.vision.model_nam=resnet18", "unknown config key 'model.vision.model_nam' (did you mean 'model_name'?)"),
    ("model.vision.img_size=64", "it is data.image_size"),
    ("model.architecture=clip", "model.architecture: unknown 'clip'"),
    ("model.text={n_embd: 32}", None),  # the GPT-2 defaults fill the rest
])
def test_model_section_is_checked_by_the_model_config(override, message):
    if message is None:
        assert load_config(None, [override]).model.text["model_type"] == "gpt2"
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_config(None, [override])


def test_model_defaults_come_from_medvlm_config():
    from medvlm.modeling import MedVLMConfig

    cfg = load_config(None, ["model.text.n_layer=3", "model.max_logit_scale=50"])
    assert cfg.model.values == {"text": {"n_layer": 3}, "max_logit_scale": 50.0}
    defaults = MedVLMConfig()
    for name in ("fusion_layers", "fusion_heads", "embed_dim", "caption_weight", "init_temperature"):
        assert getattr(cfg.model, name) == getattr(defaults, name)
    assert cfg.model.text == {**defaults.text, "n_layer": 3}
    assert cfg.model.max_logit_scale == 50.0  # any MedVLMConfig field is a run-config key


def test_chexnet_section_is_checked_by_chexnet_config():
    cfg = load_config(CONFIGS / "chexnet.yaml")
    assert cfg.model.architecture == "chexnet" and cfg.model.vision["model_name"] == "densenet121"
    with pytest.raises(ConfigError, match="unknown config key 'model.fusion_layers'"):
        load_config(CONFIGS / "chexnet.yaml", ["model.fusion_layers=2"])
    with pytest.raises(ConfigError, match="'model.label_names' is not set in a run config"):
        load_config(CONFIGS / "chexnet.yaml", ["model.label_names=[a]"])


@pytest.mark.parametrize("preset", ["demo.yaml", "chexnet.yaml", "vqa_demo.yaml"])
def test_saved_run_config_reloads_to_the_same_settings(tmp_path, preset):
    cfg = load_config(CONFIGS / preset)
    cfg.save(tmp_path / "run_config.yaml")
    again = load_config(tmp_path / "run_config.yaml")
    assert again.to_dict() == cfg.to_dict()
    assert again.model.vision == cfg.model.vision


def test_demo_model_config_is_the_preset_completed_from_data_and_tokenizer():
    from medvlm.runs import model_config

    class Tokenizer:  # what model_config reads of a tokenizer
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

        def __len__(self):
            return 600

    cfg = load_config(CONFIGS / "demo.yaml")
    config = model_config(cfg, Tokenizer())
    assert config.vocab_size == 600 and (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 0)
    assert config.vision["model_name"] == "regnetx_002" and config.vision["img_size"] == cfg.data.image_size
    assert config.vision["token_reduction"] == 16 and config.vision["pool_tokens"] == "max"
    assert config.text["n_embd"] == 192 and config.text["n_positions"] == cfg.data.max_length
    assert config.fusion_null_slot and config.fusion_image_positions and config.embed_dim == 128


def test_a_config_written_as_overrides_reads_back_as_the_same_config():
    """`as_overrides` is how eval and the federated sites rebuild a saved config: small floats
    (1e-05, which YAML would read as a string) and nested settings must survive the trip."""
    import json

    from medvlm.config import as_overrides

    cfg = load_config(None, ["federated.dp_delta=1.0e-7", "train.learning_rate=2.5e-5",
                             "data.options={num_train: 5, hospitals: 3}"])
    tree = json.loads(json.dumps(cfg.to_dict()))
    assert load_config(None, as_overrides(tree)).to_dict() == tree
