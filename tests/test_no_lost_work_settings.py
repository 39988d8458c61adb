"""Issue 15, impossible settings: every number and choice of a run config (all sections, the model
section included) and every numeric option of the command line is range- and choice-checked
where it is read, with a message naming the key, the value and what is allowed."""

import argparse
import re
import typing

import pytest

from medvlm.cli import main, nonnegative_int, positive_float, positive_int, probability
from medvlm.config import DATASETS, ConfigError, DataConfig, EvalConfig, TrainConfig, load_config


def refused(override: str) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    return str(error.value)


@pytest.mark.parametrize("override, message", [
    # the examples of the issue
    ("train.grad_accum=0", "config key 'train.grad_accum' must be an integer >= 1, got 0"),
    ("train.max_steps=-5", "config key 'train.max_steps' must be an integer >= 1, got -5"),
    ("train.batch_size=0", "config key 'train.batch_size' must be an integer >= 1, got 0"),
    ("data.on_error=ignore", "config key 'data.on_error' must be one of 'raise', 'skip', got 'ignore'"),
    ("eval.num_beams=0", "config key 'eval.num_beams' must be an integer >= 1, got 0"),
    # one of each kind of rule, in every section
    ("train.learning_rate=0", "config key 'train.learning_rate' must be a number > 0, got 0.0"),
    ("train.min_lr_ratio=1.5", "config key 'train.min_lr_ratio' must be a number in [0, 1]"),
    ("train.warmup_steps=-1", "config key 'train.warmup_steps' must be an integer >= 0 (0 = no warmup), got -1"),
    ("train.keep_last=0", "config key 'train.keep_last' must be an integer >= 1"),
    ("train.mixed_precision=fp8", "config key 'train.mixed_precision' must be one of 'no', 'bf16', 'fp16', got 'fp8'"),
    ("train.freeze=[vision, visoin]", "config key 'train.freeze' must be a list, each item one of 'vision', "
                                      "'text', 'fusion', got ['vision', 'visoin']"),
    ("train.lora={r: 0}", "config key 'train.lora.r' must be an integer >= 1, got 0"),
    ("train.lora={dropout: 1.0}", "config key 'train.lora.dropout' must be a number in [0, 1), got 1.0"),
    ("data.resize_mode=stretch", "config key 'data.resize_mode' must be one of 'pad', 'crop', got 'stretch'"),
    ("data.image_size=4", "config key 'data.image_size' must be an integer >= 16, got 4"),
    ("data.tokenizer_vocab_size=4", "config key 'data.tokenizer_vocab_size' must be an integer >= 32, got 4"),
    ("eval.repetition_penalty=0", "config key 'eval.repetition_penalty' must be a number > 0 (1 = off), got 0.0"),
    ("eval.bootstrap_resamples=0", "config key 'eval.bootstrap_resamples' must be an integer >= 1, got 0"),
    ("eval.uncertain=maybe", "config key 'eval.uncertain' must be one of 'negative', 'positive', 'ignore'"),
    # the model section: MedVLMConfig.setting_ranges
    ("model.fusion_layers=0", "config key 'model.fusion_layers' must be an integer >= 1, got 0"),
    ("model.init_temperature=0", "config key 'model.init_temperature' must be a number > 0, got 0.0"),
    ("model.dropout=1", "config key 'model.dropout' must be a number in [0, 1), got 1.0"),
    ("model.vision.pool_tokens=avg", "config key 'model.vision.pool_tokens' must be one of false, true, 'mean', "
                                     "'max', got 'avg'"),
    ("model.vision.token_reduction=1.5", "config key 'model.vision.token_reduction' must be an integer >= 1, got 1.5"),
])
def test_out_of_range_setting_names_key_value_and_what_is_allowed(override, message):
    assert message in refused(override)


def test_chexnet_model_section_has_its_own_ranges():
    with pytest.raises(ConfigError, match=re.escape("config key 'model.dropout' must be a number in [0, 1), got 1.5")):
        load_config(None, ["model.architecture=chexnet", "model.dropout=1.5"])
    assert load_config(None, ["model.architecture=chexnet", "model.dropout=0.2"]).model.dropout == 0.2


def test_boundary_values_that_mean_something_are_accepted():
    cfg = load_config(None, [
        "train.eval_every=0", "train.save_every=0", "train.warmup_steps=0", "train.grad_clip=0", "train.weight_decay=0",
        "train.min_lr_ratio=1", "data.num_workers=0", "eval.no_repeat_ngram_size=0", "model.vision.pool_tokens=max",
        "model.vision.token_reduction=null", "model.dropout=0", "model.contrastive_weight=0", "eval.max_samples=null",
        "train.lora={r: 4, alpha: 8, dropout: 0.1, towers: [text]}"])
    assert cfg.train.eval_every == 0 and cfg.train.lora == {"r": 4, "alpha": 8.0, "dropout": 0.1, "towers": ["text"]}
    assert load_config(None, ["model.vision.pool_tokens=true"]).model.vision["pool_tokens"] is True


def test_rules_between_sections():
    assert "nothing would be trained" in refused("model={contrastive_weight: 0, caption_weight: 0}")
    with pytest.raises(ConfigError, match=re.escape("'data.max_length' (128) is more than the text tower's positions "
                                                    "(model.text.n_positions=64)")):
        load_config(None, ["model.text={n_positions: 64}"])
    assert load_config(None, ["model.text={n_positions: 64}", "data.max_length=64"]).data.max_length == 64


def test_choices_are_the_ones_the_code_accepts():
    from medvlm.data.images import RESIZE_MODES
    from medvlm.data.records import ON_ERROR
    from medvlm.data.sources import _loader
    from medvlm.finetuning import TOWERS
    from medvlm.metrics.chexpert.efficacy import _binary

    hints = {name: typing.get_type_hints(cls) for name, cls in
             (("data", DataConfig), ("train", TrainConfig), ("eval", EvalConfig))}
    assert typing.get_args(hints["data"]["resize_mode"]) == RESIZE_MODES
    assert typing.get_args(hints["data"]["on_error"]) == ON_ERROR
    assert typing.get_args(typing.get_args(hints["train"]["freeze"])[0]) == TOWERS
    for name in DATASETS[1:]:  # synthetic is built in; every other name has a loader
        assert callable(_loader(name))
    for choice in typing.get_args(hints["eval"]["uncertain"]):
        _binary([[1.0, -1.0, 0.0]], choice)


def test_model_configs_with_ranges_still_save_and_load(tmp_path):
    from medvlm.modeling import CheXNetConfig, MedVLMConfig

    for config in (MedVLMConfig(fusion_layers=3, dropout=0.1), CheXNetConfig(dropout=0.2)):
        config.save_pretrained(tmp_path / config.model_type)
        again = type(config).from_pretrained(tmp_path / config.model_type)
        assert again.to_dict() == config.to_dict() and "setting_ranges" not in again.to_dict()


@pytest.mark.parametrize("argv, message", [
    (["generate", "x.png", "--checkpoint", "c", "--num-beams", "0"], "argument --num-beams: must be an integer >= 1, got 0"),
    (["generate", "x.png", "--checkpoint", "c", "--temperature", "0"], "argument --temperature: must be a number > 0, got 0"),
    (["generate", "x.png", "--checkpoint", "c", "--top-p", "1.5"], "argument --top-p: must be a number in (0, 1], got 1.5"),
    (["generate", "x.png", "--checkpoint", "c", "--batch-size", "two"], "argument --batch-size: must be an integer >= 1, got 'two'"),
    (["vqa", "--checkpoint", "c", "--image", "x.png", "--question", "q", "--max-new-tokens", "0"],
     "argument --max-new-tokens: must be an integer >= 1, got 0"),
    (["retrieve", "--checkpoint", "c", "--image", "x.png", "--top-k", "-3"], "argument --top-k: must be an integer >= 1, got -3"),
    (["prepare", "--out", "o", "--workers", "-1"], "argument --workers: must be an integer >= 0, got -1"),
])
def test_numeric_command_line_options_are_checked_by_argparse(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_option_types():
    assert positive_int("3") == 3 and nonnegative_int("0") == 0 and positive_float("0.5") == 0.5
    assert probability("1") == 1.0
    for parse, text in ((positive_int, "0"), (nonnegative_int, "-1"), (positive_float, "inf"), (probability, "0"),
                        (positive_int, "1.5")):
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            parse(text)
