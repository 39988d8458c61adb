"""From a RunConfig to the things a run needs: records, processor, model.

This is the one place where configuration values become constructor arguments.
"""

import logging
from pathlib import Path

from .config import RunConfig
from .errors import UserError
from .data.images import ImageTransform
from .data.sources import load_split
from .modeling import CheXNetConfig, CheXNetForImageClassification, MedVLMConfig, MedVLMForConditionalGeneration
from .modeling.configuration_medvlm import merged_text
from .modeling.text import text_spec_from_checkpoint
from .processing import MedVLMProcessor
from .tokenization import lm_tokenizer, load_tokenizer, train_report_tokenizer

log = logging.getLogger(__name__)
TRAINING_CHOICES = ("contrastive_weight", "caption_weight", "label_smoothing")  # taken over a train.init_from model
def records_for(cfg: RunConfig, split: str) -> list[dict]:
    d = cfg.data
    if d.cache_dir:
        from .data.prepare import load_cache

        return load_cache(Path(d.cache_dir) / split, image_size=d.image_size, resize_mode=d.resize_mode)
    return load_split(d.dataset, split, root=d.root, image_size=d.image_size, on_error=d.on_error, options=d.options,
                      allow_outside_root=d.allow_outside_root)


def init_from_dir(cfg: RunConfig) -> Path:
    """`train.init_from`, checked: a medvlm model directory whose files match its manifest."""
    from .checkpointing import check_model_dir

    path = Path(cfg.train.init_from)
    if not (path / "config.json").is_file():
        raise UserError(f"train.init_from={str(path)!r}: not a medvlm model directory (no config.json)")
    return check_model_dir(path, "train.init_from")


def vision_spec(cfg: RunConfig) -> dict:
    """The model's vision dict: the preset's keys over what the tower's checkpoint files say
    (kind, architecture, channels, normalisation) over the defaults."""
    from .modeling.configuration_medvlm import DEFAULT_VISION
    from .modeling.sources import resolve_local
    from .modeling.vision_sources import vision_spec_from_checkpoint

    m = cfg.model
    written = dict(m.values.get("vision") or {})
    if not written.get("pretrained_path"):
        return {**m.vision, "img_size": cfg.data.image_size}
    folder = resolve_local(written["pretrained_path"], "model.vision.pretrained_path")
    found = vision_spec_from_checkpoint(folder, written.get("model_name"))
    found.pop("native_image_size", None)
    return {**DEFAULT_VISION, **found, **written, "img_size": cfg.data.image_size}


def image_transform(cfg: RunConfig, vision: dict) -> ImageTransform:
    """The image transform of the vision tower: its channels and its own normalisation, unless
    the preset sets model.vision.mean / std."""
    d = cfg.data
    return ImageTransform(d.image_size, resize_mode=d.resize_mode, in_chans=vision.get("in_chans", 1),
                          mean=vision.get("mean") if vision.get("mean") is not None else 0.5,
                          std=vision.get("std") if vision.get("std") is not None else 0.5)


def build_processor(cfg: RunConfig, train_records: list[dict]) -> MedVLMProcessor:
    """The tokenizer comes from `train.init_from`, `data.tokenizer`, or is trained on the
    training reports (saved under the run directory)."""
    d, m = cfg.data, cfg.model
    if cfg.train.init_from:
        processor = MedVLMProcessor.from_pretrained(str(init_from_dir(cfg)))
        processor.prior_report = processor.prior_report or d.prior_report
        return processor
    if cfg.model.architecture == "chexnet":  # image-only: the processor is just the image transform
        in_chans = m.vision.get("in_chans", 1)
        transform = ImageTransform(d.image_size, resize_mode=d.resize_mode, in_chans=in_chans)
        return MedVLMProcessor(None, transform, max_length=d.max_length)
    if d.tokenizer:
        tokenizer = load_tokenizer(d.tokenizer)
    elif (m.values.get("text") or {}).get("pretrained_path"):  # the LM's own tokenizer
        tokenizer = lm_tokenizer(m.values["text"]["pretrained_path"], model_max_length=d.max_length)
    else:
        corpus = [r["text"] for r in train_records] + [r["question"] for r in train_records if r.get("question")]
        tokenizer = train_report_tokenizer(corpus, Path(cfg.train.output_dir) / "tokenizer",
                                           vocab_size=d.tokenizer_vocab_size, model_max_length=d.max_length)
    return MedVLMProcessor(tokenizer, image_transform(cfg, vision_spec(cfg)), max_length=d.max_length,
                           prior_report=d.prior_report)


def model_config(cfg: RunConfig, tokenizer) -> MedVLMConfig:
    """The model section as the preset wrote it, completed from the data (image size, text
    positions) and the tokenizer (vocabulary, special ids)."""
    m = cfg.model
    settings = {k: v for k, v in m.values.items() if k not in ("vision", "text")}
    text = dict(m.values.get("text") or {})
    if text.get("pretrained_path"):
        text = {**text_spec_from_checkpoint(text["pretrained_path"]), **text}
    text = merged_text(text)
    if not text.get("pretrained_path"):  # a checkpoint's positions are its own
        text.setdefault("n_positions" if text.get("model_type") == "gpt2" else "max_position_embeddings",
                        max(cfg.data.max_length, 64))
    # a pretrained LM may carry more embedding rows than its tokenizer has tokens (padding rows),
    # or fewer (a separator token medvlm added): the model holds the larger of the two
    vocab_size = max(len(tokenizer), int(text.get("vocab_size") or 0)) if text.get("pretrained_path") else len(tokenizer)
    return MedVLMConfig(
        **settings,
        vision=vision_spec(cfg),
        text=text,
        vocab_size=vocab_size,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
        eos_token_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def chexnet_config(cfg: RunConfig, train_records: list[dict] | None) -> CheXNetConfig:
    """Labels in the dataset's order; class weights from the training records' positive shares."""
    from .tasks.classification import label_names_for, positive_fraction

    m = cfg.model
    names = label_names_for(cfg.data.dataset)
    labelled = [r for r in train_records or [] if r.get("labels") is not None]
    return CheXNetConfig(
        **{**m.values, "vision": {**m.vision, "img_size": cfg.data.image_size}},
        label_names=names,
        positive_fraction=positive_fraction(labelled, len(names), cfg.eval.uncertain) if labelled else None,
    )


def build_model(cfg: RunConfig, processor: MedVLMProcessor, train_records: list[dict] | None = None):
    """A MedVLMForConditionalGeneration, or with model.architecture=chexnet a
    CheXNetForImageClassification (its class weights need `train_records`)."""
    if cfg.model.architecture == "chexnet":
        if cfg.train.init_from:
            return CheXNetForImageClassification.from_pretrained(str(init_from_dir(cfg)))
        model = CheXNetForImageClassification(chexnet_config(cfg, train_records))
        model.load_pretrained_backbone()
        return model
    if cfg.train.init_from:
        model = MedVLMForConditionalGeneration.from_pretrained(str(init_from_dir(cfg)))
        # loss weights are training choices, not part of the pretrained model
        for key in TRAINING_CHOICES:
            setattr(model.config, key, getattr(cfg.model, key))
        _warn_contradictions(cfg, model.config)
        processor.limit_max_length(model.max_text_positions())
        return model
    model = MedVLMForConditionalGeneration(model_config(cfg, processor.tokenizer))
    model.load_pretrained_towers()
    processor.limit_max_length(model.max_text_positions())
    return model


def _warn_contradictions(cfg: RunConfig, loaded: MedVLMConfig) -> None:
    """With train.init_from the architecture is the checkpoint's: say which settings of the
    model section it overrules (those that agree with it are harmless)."""
    def agrees(key, value) -> bool:
        if isinstance(value, dict):  # vision / text: the keys the preset names
            return all(getattr(loaded, key).get(k) == v for k, v in value.items())
        return getattr(loaded, key, None) == value

    overruled = [k for k, v in cfg.model.values.items() if k not in TRAINING_CHOICES and not agrees(k, v)]
    if overruled:
        log.warning("train.init_from=%s: the model is the checkpoint's; the config's model.%s differ from it "
                    "and are not used", cfg.train.init_from, ", model.".join(sorted(overruled)))


def load_trained(path: str | Path) -> tuple[MedVLMForConditionalGeneration, MedVLMProcessor, RunConfig | None]:
    """A saved model directory: model (MedVLM or CheXNet, by the config's model_type), processor,
    and the run config it was trained with (if any). A directory training wrote is first checked
    against its COMPLETE manifest: a missing, truncated or damaged file is a UserError naming it
    (one saved with `save_pretrained` by hand has no manifest and is loaded as it is). Loading
    writes nothing into the directory."""
    import json

    from safetensors import SafetensorError

    from .checkpointing import check_model_dir
    from .config import load_config

    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a medvlm model directory (no config.json)")
    check_model_dir(path)
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    model_class = CheXNetForImageClassification if model_type == "chexnet" else MedVLMForConditionalGeneration
    try:
        model = model_class.from_pretrained(str(path))
    except SafetensorError as error:  # no manifest to say which file: the weights' reader says why
        raise UserError(f"model directory {path}: model.safetensors cannot be read ({error}); the directory is "
                        "damaged or was copied incompletely") from None
    model.eval()
    processor = MedVLMProcessor.from_pretrained(path)
    if model_type != "chexnet":
        processor.limit_max_length(model.max_text_positions())
    run_cfg = load_config(path / "run_config.yaml") if (path / "run_config.yaml").is_file() else None
    return model, processor, run_cfg


def training_hooks(cfg: RunConfig, processor: MedVLMProcessor, validation_records: list[dict] | None):
    """(evaluate_fn, collate) for the Trainer: CheXNet batches labels and reports AUROC; VQA data
    reports answer accuracy; report data (the default, collate None) generation metrics."""
    if cfg.model.architecture == "chexnet":
        from .tasks.classification import LabelCollator, classifier_training_evaluator, label_names_for

        collate = LabelCollator(len(label_names_for(cfg.data.dataset)), cfg.eval.uncertain)
        return classifier_training_evaluator(processor, cfg.eval.batch_size, cfg.eval.uncertain), collate
    if validation_records and validation_records[0].get("question"):
        from .tasks.vqa import vqa_training_evaluator

        return vqa_training_evaluator(processor, cfg.eval.batch_size), None
    from .tasks.report_generation import training_evaluator

    return training_evaluator(processor, cfg.eval), None


def fit_vocabulary(cfg: RunConfig, processor: MedVLMProcessor, model, train_records: list[dict],
                   resumed: bool) -> None:
    """Say how well the tokenizer covers the training text and, with `train.extend_vocabulary`,
    grow the vocabulary of a `train.init_from` checkpoint with pieces fitted on that text (a
    resumed run already has the grown tokenizer: the model only gets the rows its checkpoint holds)."""
    from .vocabulary import describe_coverage, extend_vocabulary, tokenizer_coverage

    if processor.tokenizer is None:
        return
    texts = [r["text"] for r in train_records if r.get("text")] + [r["question"] for r in train_records
                                                                   if r.get("question")]
    if cfg.train.extend_vocabulary and not resumed:
        tokenizer, summary = extend_vocabulary(model, processor.tokenizer, texts, Path(cfg.train.output_dir) / "tokenizer",
                                               cfg.train.extend_vocabulary)
        processor.tokenizer = tokenizer
        print(f"[medvlm] before extension, {describe_coverage(summary['coverage_before'])}")
        print(f"[medvlm] vocabulary extended by {summary['added_pieces']} pieces fitted on the training text "
              f"({summary['vocab_size_before']} -> {summary['vocab_size_after']})")
        print(f"[medvlm] {describe_coverage(summary['coverage_after'])}")
        return
    if cfg.train.extend_vocabulary:  # resumed: rows for the grown tokenizer, their weights from the checkpoint
        missing = len(processor.tokenizer) - model.config.vocab_size
        if missing > 0:
            unk = processor.tokenizer.unk_token_id or 0
            model.resize_vocabulary(len(processor.tokenizer), [[unk]] * missing)
    print(f"[medvlm] {describe_coverage(tokenizer_coverage(processor.tokenizer, texts))}")
