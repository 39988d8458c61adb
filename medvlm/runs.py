"""From a RunConfig to the things a run needs: records, processor, model.

This is the one place where configuration values become constructor arguments.
"""

import logging
from pathlib import Path

from .config import RunConfig
from .data.images import ImageTransform
from .data.sources import load_split
from .modeling import MedVLMConfig, MedVLMForConditionalGeneration
from .modeling.text import text_spec_from_checkpoint
from .processing import MedVLMProcessor
from .tokenization import load_tokenizer, train_report_tokenizer

log = logging.getLogger(__name__)


def records_for(cfg: RunConfig, split: str) -> list[dict]:
    d = cfg.data
    if d.cache_dir:
        from .data.prepare import load_cache

        return load_cache(Path(d.cache_dir) / split, image_size=d.image_size, resize_mode=d.resize_mode)
    return load_split(d.dataset, split, root=d.root, image_size=d.image_size, on_error=d.on_error, options=d.options)


def build_processor(cfg: RunConfig, train_records: list[dict]) -> MedVLMProcessor:
    """The tokenizer comes from `model.init_from`, `data.tokenizer`, or is trained on the
    training reports (saved under the run directory)."""
    d = cfg.data
    if cfg.model.init_from:
        return MedVLMProcessor.from_pretrained(cfg.model.init_from)
    if d.tokenizer:
        tokenizer = load_tokenizer(d.tokenizer)
    else:
        corpus = [r["text"] for r in train_records] + [r["question"] for r in train_records if r.get("question")]
        tokenizer = train_report_tokenizer(corpus, Path(cfg.train.output_dir) / "tokenizer",
                                           vocab_size=d.tokenizer_vocab_size, model_max_length=d.max_length)
    transform = ImageTransform(d.image_size, resize_mode=d.resize_mode, in_chans=cfg.model.vision.get("in_chans", 1))
    return MedVLMProcessor(tokenizer, transform, max_length=d.max_length)


def model_config(cfg: RunConfig, tokenizer) -> MedVLMConfig:
    m = cfg.model
    text = dict(m.text)
    if text.get("pretrained_path"):
        text = {**text_spec_from_checkpoint(text["pretrained_path"]), **text}
    text.setdefault("n_positions" if text.get("model_type") == "gpt2" else "max_position_embeddings",
                    max(cfg.data.max_length, 64))
    return MedVLMConfig(
        vision={**m.vision, "img_size": cfg.data.image_size},
        text=text,
        fusion_layers=m.fusion_layers,
        fusion_heads=m.fusion_heads,
        fusion_mlp_ratio=m.fusion_mlp_ratio,
        dropout=m.dropout,
        embed_dim=m.embed_dim,
        init_temperature=m.init_temperature,
        contrastive_weight=m.contrastive_weight,
        caption_weight=m.caption_weight,
        label_smoothing=m.label_smoothing,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
        eos_token_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(cfg: RunConfig, processor: MedVLMProcessor) -> MedVLMForConditionalGeneration:
    if cfg.model.init_from:
        model = MedVLMForConditionalGeneration.from_pretrained(cfg.model.init_from)
        # loss weights are training choices, not part of the pretrained model
        for key in ("contrastive_weight", "caption_weight", "label_smoothing"):
            setattr(model.config, key, getattr(cfg.model, key))
        return model
    model = MedVLMForConditionalGeneration(model_config(cfg, processor.tokenizer))
    model.model.load_pretrained_towers()
    return model


def load_trained(path: str | Path) -> tuple[MedVLMForConditionalGeneration, MedVLMProcessor, RunConfig | None]:
    """A saved model directory: model, processor, and the run config it was trained with (if any)."""
    from .config import load_config

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a medvlm model directory (no config.json)")
    model = MedVLMForConditionalGeneration.from_pretrained(str(path))
    model.eval()
    processor = MedVLMProcessor.from_pretrained(path)
    run_cfg = load_config(path / "run_config.yaml") if (path / "run_config.yaml").is_file() else None
    return model, processor, run_cfg
