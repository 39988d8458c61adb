"""Run configuration: YAML presets -> typed dataclasses, with `section.key=value` overrides.

An unknown key, a value of the wrong type, a number out of its range or a choice that is not
one of the allowed ones is an error that names the key, the value and what is allowed, so a typo
in a preset or on the command line never silently falls back to a default or trains nothing.
A preset with a YAML syntax error or a key written twice (at any level) is an error naming the
file and the line.
"""

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import UserError


class ConfigError(UserError):
    pass


# run-config keys that moved out of the model section, and where they went
MOVED_MODEL_KEYS = {"init_from": "train.init_from"}

# ---------------------------------------------------------------- ranges and choices
#
# Every number and choice of a run config says what it allows where it is declared, in one
# vocabulary of rules:
#   min / max   inclusive bounds          gt / lt   exclusive bounds
#   choices     the allowed values        note      what a boundary value means ("0 = never")
# The dataclasses below carry them in a field's metadata (`setting(32, min=1)` is
# `field(default=32, metadata={"min": 1})`) and take choices from `Literal[...]` annotations;
# the model config classes (MedVLMConfig, CheXNetConfig), whose field types belong to HF's
# strict validation, keep theirs in a class-level `setting_ranges` dict (keys: field names, or
# "vision.<key>" inside the vision dict). `_check_rules` applies either where the value is read.
RULES = ("min", "max", "gt", "lt", "choices", "note")


def setting(default, **rules):
    """A dataclass field with a default and range/choice rules (see RULES)."""
    unknown = set(rules) - set(RULES)
    if unknown:
        raise TypeError(f"unknown setting rule(s) {sorted(unknown)}; known: {RULES}")
    return field(default=default, metadata=rules)


def _show(value: Any) -> str:
    """A value as the YAML a user writes shows it (true, null, 'text', 3)."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    return repr(value)


def allowed_values(rules: dict, integer: bool = False) -> str:
    """What `rules` allow, in words: "an integer >= 1", "a number in [0, 1)", "one of 'a', 'b'"."""
    if "choices" in rules:
        return "one of " + ", ".join(_show(c) for c in rules["choices"])
    kind = "an integer" if integer else "a number"
    low = ("[", rules["min"]) if "min" in rules else ("(", rules["gt"]) if "gt" in rules else None
    high = (rules["max"], "]") if "max" in rules else (rules["lt"], ")") if "lt" in rules else None
    if low and high:
        return f"{kind} in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f"{kind} {'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{kind} {'<=' if high[1] == ']' else '<'} {high[0]}"
    return kind


def breaks_rules(value: Any, rules: dict) -> bool:
    """True when `value` is outside `rules` (None is always allowed: "not set")."""
    if value is None:
        return False
    if "choices" in rules:
        return not any(value == c and type(value) is type(c) for c in rules["choices"])
    checks = {"min": lambda bound: value >= bound, "max": lambda bound: value <= bound,
              "gt": lambda bound: value > bound, "lt": lambda bound: value < bound}
    bounds = [k for k in checks if k in rules]
    if not bounds:
        return False
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return True
    return not all(checks[k](rules[k]) for k in bounds)


def _check_rules(full: str, value: Any, rules: dict | None, integer: bool = False) -> None:
    wrong_kind = integer and "choices" not in (rules or {}) and isinstance(value, float)
    if rules and (breaks_rules(value, rules) or wrong_kind):
        note = f" ({rules['note']})" if rules.get("note") else ""
        raise ConfigError(f"config key '{full}' must be {allowed_values(rules, integer)}{note}, got {_show(value)}")


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
        _check_rules(full, checked[key], _model_ranges(config_class).get(key), _is_integer(fields[key]))
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
        rules = _model_ranges(config_class).get(f"vision.{key}")
        _check_rules(f"model.vision.{key}", vision[key], rules, integer=rules is not None and "choices" not in rules)


def _model_ranges(config_class) -> dict:
    """The model config class's `setting_ranges` (see RULES); {} for a class without them."""
    return getattr(config_class, "setting_ranges", {})


Dataset = Literal["synthetic", "mimic_cxr", "iu_xray", "vqa_rad", "slake", "chestxray14", "csv", "jsonl", "hf"]
DATASETS = typing.get_args(Dataset)  # medvlm.data.sources loads each of these
Tower = Literal["vision", "text", "fusion"]  # medvlm.finetuning.TOWERS
Split = Literal["train", "validation", "test"]
# weights of the model that generates reports (medvlm.modeling.inference_weights.WEIGHT_FORMATS)
WeightFormat = Literal["fp32", "bf16", "int8"]
# the field's learnt report scorers eval.py adds where installed (medvlm.metrics.field_scorers.SCORERS)
FieldScorer = Literal["f1chexbert", "radgraph"]


@dataclass
class DataConfig:
    dataset: Dataset = "synthetic"
    root: str | None = None
    options: dict = field(default_factory=dict)  # passed to the dataset's loader
    # pixels per side; null: the vision checkpoint's own input size (model.vision.pretrained_path), else 128
    image_size: int | None = setting(None, min=16)
    resize_mode: Literal["pad", "crop"] = "pad"  # medvlm.data.images.RESIZE_MODES
    augment: bool = True
    max_length: int = setting(128, min=8)  # tokens per text; at most the text tower's positions
    # studies: the report is written after a prompt holding the prior study's impression (MAIRA-2 style)
    prior_report: bool = False
    tokenizer: str | None = None  # an existing tokenizer directory; default: train one on the train split
    tokenizer_vocab_size: int = setting(1000, min=32)  # an upper bound: small corpora get fewer
    cache_dir: str | None = None  # a `medvlm prepare` cache; images are read from it when set
    num_workers: int = setting(0, min=0, note="0 = load in the main process")
    on_error: Literal["raise", "skip"] = "raise"  # medvlm.data.records.ON_ERROR
    # image paths read from the dataset's files must resolve inside its root (symlinks followed);
    # true also opens absolute paths and paths that lead out of it
    allow_outside_root: bool = False


@dataclass
class LoraSettings:
    """The keys `train.lora` may set (checked here, passed on as the dict the preset wrote)."""
    r: int = setting(8, min=1)
    alpha: float = setting(16.0, gt=0)
    dropout: float = setting(0.0, min=0, lt=1)
    towers: list[Tower] = field(default_factory=lambda: ["fusion", "text"])
    full_towers: list[Tower] = field(default_factory=list)  # trained in full beside the adapters


@dataclass
class TowerRates:
    """The keys `train.tower_learning_rates` may set."""
    vision: float = setting(1.0e-5, gt=0)
    text: float = setting(1.0e-5, gt=0)
    fusion: float = setting(1.0e-4, gt=0)


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = setting(0, min=0)
    batch_size: int = setting(32, min=1)
    max_steps: int = setting(1000, min=1)
    learning_rate: float = setting(5.0e-4, gt=0)
    weight_decay: float = setting(0.05, min=0)
    warmup_steps: int = setting(100, min=0, note="0 = no warmup")
    min_lr_ratio: float = setting(0.05, min=0, max=1, note="the cosine ends at this share of the peak; 1 = constant")
    grad_clip: float = setting(1.0, min=0, note="0 = no clipping")
    grad_accum: int = setting(1, min=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False  # recompute block activations in backward: less memory, more time
    compile: bool = False  # torch.compile the model (inductor) through accelerate
    log_every: int = setting(10, min=1)
    eval_every: int = setting(500, min=0, note="0 = never")
    eval_samples: int = setting(64, min=1)
    # stop once this many evaluations in a row have not lowered the validation loss (needs
    # eval_every > 0 and a validation split); `final` is then the model of the lowest one
    early_stopping_patience: int | None = setting(None, min=1, note="null = off")
    # the validation figure that counts as an improvement (and picks the best checkpoint kept):
    # a *loss is minimised, anything else (val_vqa_closed_acc, val_ce_micro_f1, ...) maximised
    early_stopping_metric: str = "val_loss"
    save_every: int = setting(500, min=0, note="0 = no periodic checkpoints; the final model is saved")
    keep_last: int = setting(2, min=1, note="0 would delete each checkpoint as it is written")
    resume: str | None = None  # None | auto | a checkpoint directory
    max_nonfinite_steps: int = setting(5, min=1)
    tensorboard: bool = True
    init_from: str | None = None  # a medvlm model directory to start from (fine-tuning)
    freeze: list[Tower] = field(default_factory=list)
    lora: dict | None = field(default=None, metadata={"schema": LoraSettings})  # e.g. {r: 8, towers: [fusion, text]}
    # learning rates of named towers, e.g. {vision: 1.0e-5, text: 2.0e-5}: pretrained towers move
    # gently while the new fusion layers train at learning_rate
    tower_learning_rates: dict = field(default_factory=dict, metadata={"schema": TowerRates})
    dtype: Literal["float32", "bfloat16"] = "float32"  # the weights' dtype; bfloat16 halves their memory
    # with init_from: fit up to this many sentencepiece pieces on the new training text and add
    # those the checkpoint's tokenizer lacks (0 = keep its vocabulary as it is)
    extend_vocabulary: int = setting(0, min=0, note="0 = off")


@dataclass
class EvalConfig:
    split: Split = "test"
    batch_size: int = setting(32, min=1)
    max_samples: int | None = setting(None, min=1)
    max_new_tokens: int = setting(96, min=1)
    num_beams: int = setting(1, min=1)
    no_repeat_ngram_size: int = setting(0, min=0, note="0 = off")
    repetition_penalty: float = setting(1.0, gt=0, note="1 = off")
    # report generation with a static KV cache and a compiled decode step (torch.compile through
    # generate): one compilation per batch shape first, then cheaper steps; README "Performance"
    compile_decoding: bool = False
    # best-of-N decoding: the usual report plus this many sampled ones per image; the one kept is
    # the closest to the image by the contrastive head (image_text) or the one whose findings most
    # samples share (label_consensus: MBR with the labeler as utility); medvlm.tasks.reranking
    rerank_samples: int = setting(0, min=0, note="0 = off")
    rerank_temperature: float = setting(1.0, gt=0)
    rerank_by: Literal["image_text", "label_consensus"] = "image_text"
    # weights of the model that generates the reports on the CPU: bf16 halves the bytes each
    # decoding step reads, int8 (dynamic quantisation of the linear maps) quarters them; README
    # "Performance" gives the speed and how often the reports' CE labels agree with fp32
    weights: WeightFormat = "fp32"
    bootstrap_resamples: int = setting(200, min=1)
    seed: int = setting(0, min=0)
    # how uncertain (-1) labels count in clinical efficacy (medvlm.metrics.chexpert.efficacy)
    uncertain: Literal["negative", "positive", "ignore"] = "negative"
    # F1-CheXbert / RadGraph-F1 of the reports, from the clinical-scorers extra; a scorer not
    # installed or without its weights on disk is "not computed: <why>" in metrics.json, never 0
    field_scorers: list[FieldScorer] = field(default_factory=list)
    field_scorer_weights: str | None = None  # a folder holding their weights; default: the packages' caches


FederatedStrategy = Literal["fedavg", "fedprox", "fedadam"]  # medvlm.federated.strategies


@dataclass
class FederatedConfig:
    """`medvlm federate`: Flower training across sites whose data stays where it is (medvlm.federated)."""
    sites: int = setting(3, min=1, note="the simulated sites; a deployment has as many as connect")
    rounds: int = setting(10, min=1)
    local_steps: int = setting(25, min=1)  # optimiser steps each site trains per round, from the global weights
    strategy: FederatedStrategy = "fedavg"
    fraction_train: float = setting(1.0, gt=0, max=1)  # the share of sites sampled to train each round
    min_sites: int = setting(2, min=1)  # a round waits until this many sites are connected
    # FedProx: mu/2 * ||w - w_global||^2 added to each site's loss (Flower leaves the term to the client)
    proximal_mu: float = setting(0.01, min=0)
    # FedAdam: the server's step on the averaged update (eta) and its adaptivity (tau)
    server_learning_rate: float = setting(0.01, gt=0)
    server_adaptivity: float = setting(1.0e-3, gt=0)
    # the report tokenizer without pooling text: "token_counts" trains sentencepiece on the sum
    # of the sites' word counts (a first federated round); "language_model" is the pretrained
    # model.text.pretrained_path's own tokenizer, needing no round at all
    tokenizer: Literal["token_counts", "language_model"] = "token_counts"
    # a site sends no word it saw fewer times than this: a rare word can name a patient or a place
    min_token_count: int = setting(3, min=1)
    # differential privacy, client-side fixed clipping (Flower's wrappers): each site's update is
    # clipped to this L2 norm and the server adds Gaussian noise of noise_multiplier * norm
    dp_noise_multiplier: float = setting(0.0, min=0, note="0 = no differential privacy")
    dp_clipping_norm: float = setting(1.0, gt=0)
    dp_delta: float = setting(1.0e-5, gt=0, lt=1)  # the delta of the (epsilon, delta) reported
    secure_aggregation: bool = False  # Flower's SecAgg+: the server sees only the sum of the updates
    secagg_num_shares: int = setting(3, min=2)
    secagg_reconstruction_threshold: int = setting(2, min=1)
    # a site's weight in the secure average is its studies / this (capped at 1): SecAgg+ quantises after weighting
    secagg_max_weight: float = setting(10000.0, gt=0)
    keep_last: int = setting(2, min=1)  # round checkpoints kept (the server resumes from the newest)


@dataclass
class RunConfig:
    model: ModelSettings = field(default_factory=lambda: ModelSettings("medvlm", {}))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)

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
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in typing.get_args(annotation))
    if origin is list and typing.get_args(annotation):
        return isinstance(value, list) and all(_type_ok(v, typing.get_args(annotation)[0]) for v in value)
    return isinstance(value, origin or annotation)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(_show(choice) for choice in typing.get_args(annotation))
    if origin is list and typing.get_args(annotation):
        return f"a list, each item {_type_name(typing.get_args(annotation)[0])}"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _is_integer(annotation: Any) -> bool:
    return _type_ok(1, annotation) and not _type_ok(1.5, annotation)


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
        shown = _show(value) if "Literal" in str(annotation) else f"{value!r} ({type(value).__name__})"
        raise ConfigError(
            f"config key '{full}' must be {_type_name(annotation)}, got {shown}"
            + (" - write floats like 1.0e-4: YAML reads 1e-4 as a string" if isinstance(value, str) and _type_ok(1.0, annotation) else "")
        )
    return float(value) if annotation is float else value


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    metadata = {f.name: f.metadata for f in dataclasses.fields(cls)}
    names = list(metadata)
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
        if "schema" in metadata[key] and isinstance(kwargs[key], dict):
            _build(metadata[key]["schema"], kwargs[key], full)  # checks its keys; the dict is kept
        _check_rules(full, kwargs[key], {k: v for k, v in metadata[key].items() if k in RULES}, _is_integer(annotation))
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{key}' is not a section")
    node[keys[-1]] = value


class _DuplicateKey(Exception):
    def __init__(self, key, line: int, first: int):
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


class _PresetLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key written twice in one mapping (at any level) is an
    error: PyYAML would keep the last one and silently drop the first."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, (str, int, float, bool)) and (type(key), key) in first:
                    raise _DuplicateKey(key, line, first[(type(key), key)])
                first.setdefault((type(key), key), line)
        return super().construct_mapping(node, deep)


def read_yaml(text: str, source: str) -> Any:
    """YAML text -> data, the one way presets and override values are read. A syntax error or a
    duplicate key is a ConfigError naming `source` (a file, an override) and the line."""
    try:
        return yaml.load(text, Loader=_PresetLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise ConfigError(f"{source}: duplicate key {dup.key!r} at line {dup.line}, first at line {dup.first}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(p for p in (error.context, error.problem) if p)
        raise ConfigError(f"{source}{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML ({error})") from None


def _read_preset(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text (byte {error.start}: 0x{data[error.start]:02x}); "
                          "re-save the file as UTF-8") from None
    tree = read_yaml(text, str(path)) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping with model/data/train/eval sections")
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), read_yaml(raw, f"override '{text}'") if raw.strip() else None


DEFAULT_IMAGE_SIZE = 128


def _image_size_for(cfg: RunConfig) -> int:
    """data.image_size when set, else the input size the vision checkpoint was trained at."""
    if cfg.data.image_size is not None:
        return cfg.data.image_size
    path = (cfg.model.values.get("vision") or {}).get("pretrained_path")
    if path:
        from .modeling.sources import resolve_local
        from .modeling.vision_sources import native_image_size

        native = native_image_size(resolve_local(path, "model.vision.pretrained_path"))
        if native:
            return int(native)
    return DEFAULT_IMAGE_SIZE


def _check_across_sections(cfg: RunConfig) -> RunConfig:
    """Rules between keys of different sections (each key's own range is checked where it is read)."""
    cfg.data.image_size = _image_size_for(cfg)
    if cfg.model.architecture != "medvlm":
        return cfg
    text = cfg.model.values.get("text") or {}
    for key in ("n_positions", "max_position_embeddings"):
        positions = text.get(key)
        if isinstance(positions, int) and positions < cfg.data.max_length:
            raise ConfigError(f"config key 'data.max_length' ({cfg.data.max_length}) is more than the text tower's "
                              f"positions (model.text.{key}={positions}); lower data.max_length or raise "
                              f"model.text.{key}")
    if cfg.train.extend_vocabulary and not cfg.train.init_from:
        raise ConfigError("config key 'train.extend_vocabulary' needs train.init_from: it grows the vocabulary of the "
                          "checkpoint you start from (a new run trains its tokenizer on its own text)")
    if cfg.model.contrastive_weight == 0 and cfg.model.caption_weight == 0:
        raise ConfigError("config keys 'model.contrastive_weight' and 'model.caption_weight' are both 0: "
                          "nothing would be trained")
    return cfg


def as_overrides(tree: dict, prefix: str = "") -> list[str]:
    """A config dict (`RunConfig.to_dict()`) as `section.key=value` overrides, dict-valued
    settings kept whole: `load_config(None, as_overrides(tree))` rebuilds it."""
    items = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            items += as_overrides(value, f"{name}.")
        else:
            items.append(f"{name}={_yaml_value(value)}")
    return items


def _yaml_value(value: Any) -> str:
    """`value` as YAML that reads back as the same value (1e-05 as 1.0e-05: YAML reads 1e-05 as a string)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return text.removesuffix("...").strip()


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML preset (or start from defaults) and apply `section.key=value` overrides."""
    tree: dict = _read_preset(Path(path)) if path is not None else {}
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return _check_across_sections(_build(RunConfig, tree, ""))
