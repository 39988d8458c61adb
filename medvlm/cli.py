"""`medvlm` command line: prepare | tokenizer | train | finetune | eval | generate | label.

Every subcommand is `<name>_main(argv) -> int`, so train.py, eval.py and tests call the same code.
Run options are `section.key=value` overrides of the YAML preset (see medvlm/config.py).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import ConfigError, load_config

EPILOG = "Overrides: any config key as section.key=value, e.g. train.max_steps=200 data.image_size=96"


def _config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=EPILOG)
    parser.add_argument("--config", help="YAML preset (e.g. configs/demo.yaml); defaults apply when omitted")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser


def _load(args) -> "RunConfig":  # noqa: F821
    return load_config(args.config, args.overrides)


# ---------------------------------------------------------------- train

def train_main(argv: list[str] | None = None) -> int:
    parser = _config_parser("medvlm train", "Train a MedVLM model (contrastive + captioning) on the configured data.")
    parser.add_argument("--resume", help="'auto' (newest complete checkpoint in the output dir) or a checkpoint dir")
    parser.add_argument("--output-dir", help="shortcut for train.output_dir=...")
    args = parser.parse_args(argv)
    extra = []
    if args.resume:
        extra.append(f"train.resume={args.resume}")
    if args.output_dir:
        extra.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(args.config, args.overrides + extra)

    from .engine import Trainer, resolve_resume
    from .processing import MedVLMProcessor
    from .evaluation import training_evaluator
    from .finetuning import prepare_for_finetuning
    from .runs import build_model, build_processor, records_for

    import accelerate

    accelerate.utils.set_seed(cfg.train.seed)
    train_records = records_for(cfg, "train")
    validation_records = records_for(cfg, "validation")
    print(f"[medvlm] {cfg.data.dataset}: {len(train_records)} train / {len(validation_records)} validation records")
    resume_from = resolve_resume(cfg)
    if resume_from is not None:
        cfg.train.resume = str(resume_from)
        processor = MedVLMProcessor.from_pretrained(resume_from)  # the tokenizer the run started with
    else:
        processor = build_processor(cfg, train_records)
    model = prepare_for_finetuning(build_model(cfg, processor), cfg.train.freeze, cfg.train.lora)
    print(f"[medvlm] model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    trainer = Trainer(cfg, model, processor, train_records, validation_records,
                      evaluate_fn=training_evaluator(processor, cfg.eval))
    final = trainer.train()
    print(f"[medvlm] saved {final}")
    return 0


def finetune_main(argv: list[str] | None = None) -> int:
    """`train` that insists on a starting point: a medvlm checkpoint or pretrained tower files."""
    parser = _config_parser("medvlm finetune", "Fine-tune from model.init_from (a medvlm model directory) or from "
                                               "model.vision/text.pretrained_path; accepts every train option.")
    parser.add_argument("--init-from", help="shortcut for model.init_from=DIR")
    args, rest = parser.parse_known_args(argv)
    overrides = args.overrides + ([f"model.init_from={args.init_from}"] if args.init_from else [])
    cfg = load_config(args.config, overrides)
    m = cfg.model
    if not (m.init_from or m.vision.get("pretrained_path") or m.text.get("pretrained_path")):
        raise ConfigError("finetune needs model.init_from (or --init-from) or a tower's pretrained_path")
    return train_main((["--config", args.config] if args.config else []) + rest + overrides)


# ---------------------------------------------------------------- eval

def eval_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medvlm eval", epilog=EPILOG,
                                     description="Generate reports for a held-out split and score them against "
                                                 "references and baselines (metrics.json, results.md, charts).")
    parser.add_argument("--checkpoint", required=True, help="a saved model directory, e.g. runs/demo/final")
    parser.add_argument("--out", help="output directory (default: <checkpoint>/eval)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override eval.* or data.* of the run's config")
    args = parser.parse_args(argv)

    from .evaluation import evaluate_model
    from .model_card import write_model_card
    from .runs import load_trained, records_for

    model, processor, run_cfg = load_trained(args.checkpoint)
    base = run_cfg.to_dict() if run_cfg else {}
    cfg = load_config(None, _flatten(base) + args.overrides)
    test_records = records_for(cfg, cfg.eval.split)
    train_records = records_for(cfg, "train")
    out = Path(args.out) if args.out else Path(args.checkpoint) / "eval"
    metrics = evaluate_model(model, processor, test_records, train_records, cfg.eval, out)
    write_model_card(Path(args.checkpoint), cfg, metrics, split=cfg.eval.split)
    shown = ["bleu_1", "bleu_4", "meteor", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1"]
    print(json.dumps({k: metrics.get(k) for k in shown}, indent=1))
    print(f"[medvlm] wrote {out}/metrics.json and {out}/results.md")
    return 0


def _flatten(tree: dict, prefix: str = "") -> list[str]:
    """A config dict as `section.key=value` overrides (dict-valued settings kept whole)."""
    items = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            items += _flatten(value, f"{name}.")
        else:
            items.append(f"{name}={json.dumps(value)}")
    return items


# ---------------------------------------------------------------- generate

def generate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medvlm generate",
                                     description="Write a report for each image (PNG, JPEG or DICOM) as JSONL.")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", help="JSONL output file (default: stdout)")
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--do-sample", action="store_true")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    from .evaluation import generate_reports
    from .runs import load_trained

    model, processor, _ = load_trained(args.checkpoint)
    gen = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample}
    for key in ("no_repeat_ngram_size", "top_k", "top_p", "temperature"):
        if getattr(args, key):
            gen[key] = getattr(args, key)
    if args.repetition_penalty != 1.0:
        gen["repetition_penalty"] = args.repetition_penalty
    records = [{"image": path} for path in args.images]
    reports = generate_reports(model, processor, records, args.batch_size, **gen)
    lines = [json.dumps({"image": path, "report": report}) for path, report in zip(args.images, reports)]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"[medvlm] wrote {len(lines)} reports to {args.out}")
    else:
        print("\n".join(lines))
    return 0


# ---------------------------------------------------------------- tokenizer / prepare / label

def tokenizer_main(argv: list[str] | None = None) -> int:
    parser = _config_parser("medvlm tokenizer", "Train a sentencepiece tokenizer on the train split's report text.")
    parser.add_argument("--out", required=True, help="output directory (use it as data.tokenizer=...)")
    args = parser.parse_args(argv)
    cfg = _load(args)
    from .runs import records_for
    from .tokenization import train_report_tokenizer

    records = records_for(cfg, "train")
    corpus = [r["text"] for r in records] + [r["question"] for r in records if r.get("question")]
    tokenizer = train_report_tokenizer(corpus, args.out, cfg.data.tokenizer_vocab_size, cfg.data.max_length)
    print(f"[medvlm] tokenizer with {len(tokenizer)} tokens trained on {len(corpus)} texts -> {args.out}")
    return 0


def prepare_main(argv: list[str] | None = None) -> int:
    parser = _config_parser("medvlm prepare", "Decode and resize images once into an Arrow cache for fast training.")
    parser.add_argument("--out", required=True, help="cache directory (use it as data.cache_dir=...)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    cfg = _load(args)
    from .data.prepare import prepare_cache
    from .runs import records_for

    cfg.data.cache_dir = None
    for split in ("train", "validation", "test"):
        records = records_for(cfg, split)
        prepare_cache(records, Path(args.out) / split, cfg.data.image_size, resize_mode=cfg.data.resize_mode,
                      num_workers=args.workers, on_error=cfg.data.on_error)
        print(f"[medvlm] {split}: {len(records)} records -> {Path(args.out) / split}")
    return 0


def label_main(argv: list[str] | None = None) -> int:
    from .metrics.chexpert import label_main as run

    return run(argv)


COMMANDS = {
    "prepare": prepare_main,
    "tokenizer": tokenizer_main,
    "train": train_main,
    "finetune": finetune_main,
    "eval": eval_main,
    "generate": generate_main,
    "label": label_main,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: medvlm {" + ",".join(COMMANDS) + "} [--help] ...")
        print(__doc__.strip().splitlines()[0])
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.WARNING, format="[medvlm] %(levelname)s %(message)s")
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"medvlm {argv[0]}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
