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
