"""`medvlm` command line: prepare | tokenizer | train | finetune | eval | generate | vqa | retrieve | explain | label.

Every subcommand is `<name>_main(argv) -> int`, so train.py, eval.py and tests call the same code;
`run(name, argv)` runs one the way the command line does: a `UserError` (bad config key or value,
missing file, bad data) is one line on stderr and exit status 2, anything else is a bug and keeps
its traceback. Run options are `section.key=value` overrides of the YAML preset (see medvlm/config.py).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import ConfigError, load_config
from .errors import UserError

EPILOG = "Overrides: any config key as section.key=value, e.g. train.max_steps=200 data.image_size=96"


def _config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=EPILOG)
    parser.add_argument("--config", help="YAML preset (e.g. configs/demo.yaml); defaults apply when omitted")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser


def _load(args) -> "RunConfig":  # noqa: F821
    return load_config(args.config, args.overrides)


def _model_dir(path: str, option: str = "--checkpoint") -> Path:
    """A saved medvlm model directory given on the command line, or a UserError naming it."""
    path = Path(path)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "is not a medvlm model directory (no config.json)"
        raise UserError(f"{option} {path}: {what}; expected a directory written by training, e.g. runs/demo/final")
    return path


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

    from .checkpointing import resolve_resume
    from .engine import Trainer
    from .processing import MedVLMProcessor
    from .finetuning import prepare_for_finetuning
    from .runs import build_model, build_processor, records_for, training_hooks

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
    model = prepare_for_finetuning(build_model(cfg, processor, train_records), cfg.train.freeze, cfg.train.lora)
    print(f"[medvlm] model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    evaluate_fn, collate = training_hooks(cfg, processor, validation_records)  # per architecture / task
    trainer = Trainer(cfg, model, processor, train_records, validation_records,
                      evaluate_fn=evaluate_fn, collate=collate)
    final = trainer.train()
    print(f"[medvlm] saved {final}")
    return 0


def finetune_main(argv: list[str] | None = None) -> int:
    """`train` that insists on a starting point: a medvlm checkpoint or pretrained tower files."""
    parser = _config_parser("medvlm finetune", "Fine-tune from train.init_from (a medvlm model directory) or from "
                                               "model.vision/text.pretrained_path; accepts every train option.")
    parser.add_argument("--init-from", help="shortcut for train.init_from=DIR")
    args, rest = parser.parse_known_args(argv)
    overrides = args.overrides + ([f"train.init_from={args.init_from}"] if args.init_from else [])
    cfg = load_config(args.config, overrides)
    towers = [getattr(cfg.model, name, None) or {} for name in ("vision", "text")]
    if not (cfg.train.init_from or any(tower.get("pretrained_path") for tower in towers)):
        raise ConfigError("finetune needs train.init_from (or --init-from) or a tower's pretrained_path")
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

    from .model_card import write_model_card
    from .runs import load_trained, records_for
    from .tasks.evaluate import evaluate_checkpoint

    model, processor, run_cfg = load_trained(_model_dir(args.checkpoint))
    base = run_cfg.to_dict() if run_cfg else {}
    cfg = load_config(None, _flatten(base) + args.overrides)
    test_records = records_for(cfg, cfg.eval.split)
    train_records = records_for(cfg, "train")
    out = Path(args.out) if args.out else Path(args.checkpoint) / "eval"
    # report model: generation + retrieval + zero-shot (+ localisation); VQA data: answer accuracy;
    # CheXNet: AUROC (+ Grad-CAM localisation) -- see medvlm.tasks.evaluate
    metrics, shown = evaluate_checkpoint(model, processor, cfg, test_records, train_records, out)
    write_model_card(Path(args.checkpoint), cfg, metrics, split=cfg.eval.split)
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

    from .runs import load_trained
    from .tasks.report_generation import generate_reports, generation_settings

    model, processor, _ = load_trained(_model_dir(args.checkpoint))
    gen = generation_settings(args.max_new_tokens, args.num_beams, args.no_repeat_ngram_size, args.repetition_penalty,
                              args.do_sample, args.top_k, args.top_p, args.temperature)
    records = [{"image": path} for path in args.images]
    reports = generate_reports(model, processor, records, args.batch_size, **gen)
    lines = [json.dumps({"image": path, "report": report}) for path, report in zip(args.images, reports)]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"[medvlm] wrote {len(lines)} reports to {args.out}")
    else:
        print("\n".join(lines))
    return 0


# ---------------------------------------------------------------- vqa / retrieve / explain

def vqa_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medvlm vqa", description="Answer questions about an image with a "
                                                                     "(VQA-fine-tuned) medvlm model; prints JSONL.")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image", required=True, help="PNG, JPEG or DICOM")
    parser.add_argument("--question", required=True, action="append", help="repeat for several questions")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)

    from .runs import load_trained
    from .tasks.vqa import answer_questions

    model, processor, _ = load_trained(_model_dir(args.checkpoint))
    answers = answer_questions(model, processor, [args.image] * len(args.question), args.question,
                               max_new_tokens=args.max_new_tokens)
    for question, answer in zip(args.question, answers):
        print(json.dumps({"image": args.image, "question": question, "answer": answer}))
    return 0


def retrieve_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="medvlm retrieve", epilog="Recall@K on a test split is part of `medvlm eval` (i2t_r1 ... t2i_r10).",
        description="Image -> report: the closest distinct reports of a gallery for each image. With --text: "
                    "report -> image, the given images ranked by similarity to the text. Prints JSONL.")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image", required=True, nargs="+")
    parser.add_argument("--text", help="rank the images by similarity to this report text")
    parser.add_argument("--gallery", help="a text file with one report per line (default: the reports of "
                                          "--gallery-split of the data the model was trained on)")
    parser.add_argument("--gallery-split", default="train")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)

    import numpy as np

    from .runs import load_trained, records_for
    from .tasks.embeddings import image_embeddings, text_embeddings
    from .tasks.retrieval import rank_reports

    model, processor, run_cfg = load_trained(_model_dir(args.checkpoint))
    images = image_embeddings(model, processor, [{"image": path} for path in args.image])
    if args.text:
        scores = images @ text_embeddings(model, processor, [args.text])[0]
        for rank, i in enumerate(np.argsort(-scores, kind="stable")[: args.top_k], start=1):
            print(json.dumps({"rank": rank, "image": args.image[i], "score": round(float(scores[i]), 4)}))
        return 0
    if args.gallery:
        gallery = [line.strip() for line in _read_text(args.gallery, "--gallery").splitlines() if line.strip()]
    elif run_cfg is not None:
        gallery = [r["text"] for r in records_for(run_cfg, args.gallery_split) if r.get("text")]
    else:
        raise UserError(f"no --gallery given and {args.checkpoint} has no run_config.yaml to find its data; "
                        "pass --gallery FILE (one report per line)")
    ranked = rank_reports(images, gallery, text_embeddings(model, processor, gallery), args.top_k)
    for path, hits in zip(args.image, ranked):
        print(json.dumps({"image": path, "reports": [{"text": t, "score": round(s, 4)} for t, s in hits]}))
    return 0


def explain_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="medvlm explain",
        description="Write explanation overlays (PNG) for images: cross-attention per generated word or Grad-CAM "
                    "of the image-text similarity (medvlm models), Grad-CAM per label (CheXNet).")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", default="explain", help="output folder (default: ./explain)")
    parser.add_argument("--method", choices=("attention", "gradcam"), default="attention",
                        help="medvlm models; CheXNet always uses Grad-CAM")
    parser.add_argument("--question", help="explain the answer to this question instead of a report")
    parser.add_argument("--target", help="Grad-CAM target: a text (medvlm; default the generated report) or "
                                         "comma-separated labels (CheXNet; default the most probable)")
    parser.add_argument("--layers", type=int, nargs="+", help="fusion layers to average (default all)")
    parser.add_argument("--heads", type=int, nargs="+", help="attention heads to average (default all)")
    parser.add_argument("--weighting", choices=("raw", "gradient"), default="raw",
                        help="attention maps as they are, or weighted by their gradient (Chefer et al., 2021)")
    parser.add_argument("--negative", help="Grad-CAM (medvlm): subtract the similarity to this text, e.g. "
                                           "'No pleural effusion.' (the zero-shot score)")
    parser.add_argument("--layer", help="Grad-CAM layer name (default the vision backbone's last stage of "
                                        "stride <= 16)")
    parser.add_argument("--hires", action="store_true", help="HiResCAM: weight each position by its own gradient")
    parser.add_argument("--words", nargs="+", help="only these words' panels (attention)")
    parser.add_argument("--max-words", type=int, default=24)
    args = parser.parse_args(argv)

    from .explain.image import explain_image
    from .runs import load_trained

    model, processor, _ = load_trained(_model_dir(args.checkpoint))
    for image in args.images:
        summary = explain_image(model, processor, image, args.out, args.method, args.question, args.target,
                                args.layers, args.heads, args.layer, args.words, args.max_words, args.negative,
                                args.hires, args.weighting)
        print(json.dumps({"image": image, "files": summary["files"], "text": summary.get("text"),
                          "targets": summary.get("targets")}))
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


def _read_text(path: str, option: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{option} {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{option} {path}: cannot read it as UTF-8 text ({error})") from None


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
    "vqa": vqa_main,
    "retrieve": retrieve_main,
    "explain": explain_main,
    "label": label_main,
}


def run(command: str, argv: list[str] | None = None) -> int:
    """Run one subcommand as the command line does: a UserError becomes `medvlm <command>: error:
    <message>` on stderr and exit status 2; every other exception propagates with its traceback."""
    logging.basicConfig(level=logging.WARNING, format="[medvlm] %(levelname)s %(message)s")
    try:
        return COMMANDS[command](list(sys.argv[1:] if argv is None else argv))
    except UserError as error:
        print(f"medvlm {command}: error: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: medvlm {" + ",".join(COMMANDS) + "} [--help] ...")
        print(__doc__.strip().splitlines()[0])
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
