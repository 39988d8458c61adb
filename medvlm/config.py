"""Run configuration: YAML presets -> typed dataclasses, with `section.key=value` overrides.

An unknown key or a value of the wrong type is an error that names the key, so a typo in a
preset or on the command line never silently falls back to a default.
"""

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


class ConfigError(UserError):
    pass


# run-config keys that moved out of the model section, and where they went
MOVED_MODEL_KEYS = {"init_from": "train.init_from"}


class ModelSettings:
    """The run config's `model:` section, checked by the model's own config class
    (`MedVLMConfig`, or `CheXNetConfig` with `architecture: chexnet`): its fields are the keys,
    their types are checked, and its defaults apply. A new model option is a new field there.

    `values` holds the keys the preset set; attribute access gives the
    resolved setting (e.g. the whole vision dict), defaults and dict merging included, as the
    model will see it."""

    def __init__(self, architecture: str, values: dict):
        self.architecture = architecture
        self.values = values
        self.resolved = model_config_class(architecture)(**values)

    def __getattr__(self, name: str) -> Any:
        if name in ("architecture", "values", "resolved"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.resolved, name)

    def to_dict(self) -> dict:
        return {"architecture": self.architecture, **self.values}


def model_config_class(architecture: str):
    from .modeling.configuration_chexnet import CheXNetConfig
    from .modeling.configuration_medvlm import MedVLMConfig

    classes = {"medvlm": MedVLMConfig, "chexnet": CheXNetConfig}
    if architecture not in classes:
        raise ConfigError(f"model.architecture: unknown {architecture!r}; expected one of {', '.join(classes)}")
    return classes[architecture]


def _model_fields(config_class) -> dict:
    """The settable fields of a model config class: its own annotations, less those that come
    from the tokenizer or the data (`derived_fields`)."""
    derived = getattr(config_class, "derived_fields", ())
    return {k: v for k, v in vars(config_class)["__annotations__"].items() if k not in derived}


def _build_model_settings(values: Any) -> ModelSettings:
    if not isinstance(values, dict):
        raise ConfigError(f"model: expected a mapping, got {type(values).__name__}")
    values = dict(values)
    architecture = values.pop("architecture", "medvlm")
    config_class = model_config_class(architecture)
    fields = _model_fields(config_class)
    checked = {}
    for key, value in values.items():
        full = f"model.{key}"
        if key in MOVED_MODEL_KEYS:
            raise ConfigError(f"config key '{full}' is now '{MOVED_MODEL_KEYS[key]}'")
        if key in getattr(config_class, "derived_fields", ()):
            raise ConfigError(f"config key '{full}' is not set in a run config: {config_class.derived_fields[key]}")
        if key not in fields:
            _unknown_key(full, key, ["architecture", *fields])
        if key == "vision" and isinstance(value, dict):
            _check_vision_keys(config_class, value)
        checked[key] = _checked_value(full, value, fields[key])
    try:
        return ModelSettings(architecture, checked)
    except (TypeError, ValueError) as error:  # the config class's own checks (e.g. text without model_type)
        raise ConfigError(f"model: {error}") from None


def _check_vision_keys(config_class, vision: dict) -> None:
    known = config_class.vision_keys
    for key in vision:
        if key == "img_size":
            raise ConfigError("config key 'model.vision.img_size' is not set in a run config: it is data.image_size")
        if key not in known:
            _unknown_key(f"model.vision.{key}", key, known)


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # synthetic | mimic_cxr | iu_xray | vqa_rad | slake | chestxray14 | csv | jsonl | hf
    root: str | None = None
    options: dict = field(default_factory=dict)  # passed to the dataset's loader
    image_size: int = 128
    resize_mode: str = "pad"
    augment: bool = True
    max_length: int = 128
    tokenizer: str | None = None  # an existing tokenizer directory; default: train one on the train split
    tokenizer_vocab_size: int = 1000
    cache_dir: str | None = None  # a `medvlm prepare` cache; images are read from it when set
    num_workers: int = 0
    on_error: str = "raise"  # raise | skip


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    batch_size: int = 32
    max_steps: int = 1000
    learning_rate: float = 5.0e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16
    gradient_checkpointing: bool = False  # recompute block activations in backward: less memory, more time
    compile: bool = False  # torch.compile the model (inductor) through accelerate
    log_every: int = 10
    eval_every: int = 500
    eval_samples: int = 64
    save_every: int = 500
    keep_last: int = 2
    resume: str | None = None  # None | auto | a checkpoint directory
    max_nonfinite_steps: int = 5
    tensorboard: bool = True
    init_from: str | None = None  # a medvlm model directory to start from (fine-tuning)
    freeze: list = field(default_factory=list)  # any of: vision, text, fusion
    lora: dict | None = None  # e.g. {r: 8, alpha: 16, dropout: 0.05, towers: [fusion, text]}


@dataclass
class EvalConfig:
    split: str = "test"
    batch_size: int = 32
    max_samples: int | None = None
    max_new_tokens: int = 96
    num_beams: int = 1
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    # report generation with a static KV cache and a compiled decode step (torch.compile through
    # generate): one compilation per batch shape first, then cheaper steps; README "Performance"
    compile_decoding: bool = False
    bootstrap_resamples: int = 200
    seed: int = 0
    uncertain: str = "negative"  # how uncertain (-1) labels count in clinical efficacy


@dataclass
class RunConfig:
    model: ModelSettings = field(default_factory=lambda: ModelSettings("medvlm", {}))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(),
                **{f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "model"}}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or annotation)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _default_of(cls, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _merge(base: Any, update: dict) -> dict:
    """Dict-valued settings (e.g. model.vision) update their defaults key by key."""
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in update.items():
        merged[key] = _merge(merged.get(key), value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _unknown_key(full: str, key: str, names: list[str]) -> None:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown config key '{full}'{hint}; known keys: {', '.join(names)}")


def _checked_value(full: str, value: Any, annotation: Any) -> Any:
    """`value` if it has the annotated type (an int is taken for a float), else a ConfigError."""
    if isinstance(value, int) and not isinstance(value, bool) and _type_ok(1.0, annotation) and not _type_ok(1, annotation):
        value = float(value)
    if not _type_ok(value, annotation):
        raise ConfigError(
            f"config key '{full}' must be {_type_name(annotation)}, got {value!r} ({type(value).__name__})"
            + (" - write floats like 1.0e-4: YAML reads 1e-4 as a string" if isinstance(value, str) and _type_ok(1.0, annotation) else "")
        )
    return float(value) if annotation is float else value


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{where}.{key}".lstrip(".")
        if key not in names:
            _unknown_key(full, key, names)
        annotation = hints[key]
        if annotation is ModelSettings:
            kwargs[key] = _build_model_settings(value)
            continue
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value, full)
            continue
        if isinstance(value, dict) and _type_ok({}, annotation):
            value = _merge(_default_of(cls, key), value)
        kwargs[key] = _checked_value(full, value, annotation)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{key}' is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML preset (or start from defaults) and apply `section.key=value` overrides."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        tree = yaml.safe_load(path.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping with model/data/train/eval sections")
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return _build(RunConfig, tree, "")
