"""`medvlm` command line: prepare | tokenizer | train | finetune | eval | generate | vqa | retrieve | explain | label | serve | federate.

Every subcommand is `<name>_main(argv) -> int`, so train.py, eval.py and tests call the same code;
`run(name, argv)` runs one the way the command line does: a `UserError` (bad config key or value,
missing file, bad data) is one line on stderr and exit status 2, anything else is a bug and keeps
its traceback. Run options are `section.key=value` overrides of the YAML preset (see medvlm/config.py).
"""

import argparse
import json
import logging
import math
import sys
import typing
from pathlib import Path

from .config import ConfigError, WeightFormat, as_overrides, load_config
from .errors import UserError

EPILOG = "Overrides: any config key as section.key=value, e.g. train.max_steps=200 data.image_size=96"


# ---------------------------------------------------------------- option types
# The `type=` of every numeric option: a value out of range stops argparse with
# "argument --num-beams: must be an integer >= 1, got 0" and exit status 2, before anything loads.

def _number_type(kind: type, allowed, words: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {words}, got {text!r}") from None
        if not (math.isfinite(value) and allowed(value)):
            raise argparse.ArgumentTypeError(f"must be {words}, got {text}")
        return value

    parse.__name__ = words
    return parse


positive_int = _number_type(int, lambda v: v >= 1, "an integer >= 1")
nonnegative_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number_type(float, lambda v: v > 0, "a number > 0")
probability = _number_type(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


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
    from .finetuning import cast_weights, prepare_for_finetuning
    from .runs import build_model, build_processor, fit_vocabulary, records_for, training_hooks

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
    model = build_model(cfg, processor, train_records)
    fit_vocabulary(cfg, processor, model, train_records, resumed=resume_from is not None)
    model = cast_weights(prepare_for_finetuning(model, cfg.train.freeze, cfg.train.lora), cfg.train.dtype)
    print(f"[medvlm] model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    evaluate_fn, collate = training_hooks(cfg, processor, validation_records)  # per architecture / task
    trainer = Trainer(cfg, model, processor, train_records, validation_records,
                      evaluate_fn=evaluate_fn, collate=collate, resume_path=resume_from)
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
    parser.add_argument("--out", help="output directory (default: beside the checkpoint, <checkpoint>-eval; never "
                                      "inside it)")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image (default: name it, "
                                                              "leave it out, count it in metrics.json, exit 1)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override eval.* or data.* of the run's config")
    args = parser.parse_args(argv)

    from .batch import BadItems
    from .model_card import write_model_card
    from .runs import load_trained, records_for
    from .tasks.evaluate import evaluate_checkpoint

    # Reading a checkpoint never changes it (its COMPLETE manifest must keep matching, or resume
    # skips it as damaged): the outputs go beside it, runs/demo/final -> runs/demo/final-eval/.
    checkpoint = _model_dir(args.checkpoint)
    checkpoint = checkpoint.resolve() if checkpoint.name in ("", ".", "..") else checkpoint
    default_out = checkpoint.parent / f"{checkpoint.name}-eval"
    out = Path(args.out) if args.out else default_out
    if out.resolve().is_relative_to(checkpoint.resolve()):
        raise UserError(f"--out {out} is inside the model directory {checkpoint}, which only training writes into "
                        f"(its COMPLETE manifest would no longer match); give a folder outside it, e.g. {default_out}")
    model, processor, run_cfg = load_trained(checkpoint)
    base = run_cfg.to_dict() if run_cfg else {}
    cfg = load_config(None, as_overrides(base) + args.overrides)
    test_records = records_for(cfg, cfg.eval.split)
    train_records = records_for(cfg, "train")
    # report model: generation + retrieval + zero-shot (+ localisation); VQA data: answer accuracy;
    # CheXNet: AUROC (+ Grad-CAM localisation) -- see medvlm.tasks.evaluate
    bad = BadItems("eval", args.strict)
    metrics, shown = evaluate_checkpoint(model, processor, cfg, test_records, train_records, out, bad)
    write_model_card(out, cfg, metrics, split=cfg.eval.split, name="model_card.md")  # a copy with these metrics
    print(json.dumps({k: metrics.get(k) for k in shown}, indent=1))
    if (checkpoint / "federation_state.json").is_file():  # a federated model: beside centralised and local-only
        from .federated.comparison import write_comparison

        print(write_comparison(cfg, checkpoint, test_records, out))
        print(f"[medvlm] wrote {out}/federated_comparison.md and .json")
    print(f"[medvlm] wrote {out}/metrics.json, {out}/results.md and {out}/model_card.md")
    return bad.finish(metrics.get("num_samples", 0))


# ---------------------------------------------------------------- generate

def generate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medvlm generate",
                                     description="Write a report for each image (PNG, JPEG or DICOM), or for "
                                                 "each study (--study, --prior, --studies), as JSONL.")
    parser.add_argument("images", nargs="*", help="images, one report each; with --study or --prior the views of "
                                                  "one study, frontal first")
    parser.add_argument("--study", action="store_true", help="the images are the views of one study: one report")
    parser.add_argument("--views", nargs="+", help="view of each study image (default: frontal, then lateral)")
    parser.add_argument("--prior", nargs="+", metavar="PRIOR_IMAGE", help="the prior study's images (implies --study)")
    parser.add_argument("--prior-views", nargs="+", help="view of each prior image (default: frontal, then lateral)")
    parser.add_argument("--prior-report", help="the prior study's report (its impression), for a model trained with "
                                               "data.prior_report")
    parser.add_argument("--studies", help="a JSONL file, one study per line: {\"images\": [...], \"views\": [...], "
                                          "\"prior\": [...], \"prior_views\": [...], \"prior_report\": ..., \"id\": ...}")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", help="JSONL output file (default: stdout)")
    parser.add_argument("--num-beams", type=positive_int, default=1)
    parser.add_argument("--max-new-tokens", type=positive_int, default=96)
    parser.add_argument("--no-repeat-ngram-size", type=nonnegative_int, default=0, help="0 = off")
    parser.add_argument("--repetition-penalty", type=positive_float, default=1.0, help="1 = off")
    parser.add_argument("--do-sample", action="store_true")
    parser.add_argument("--top-k", type=positive_int)
    parser.add_argument("--top-p", type=probability)
    parser.add_argument("--temperature", type=positive_float)
    parser.add_argument("--rerank-samples", type=nonnegative_int, default=0,
                        help="best of the report and this many sampled ones by the model's image-text score (0 = off)")
    parser.add_argument("--rerank-temperature", type=positive_float, default=1.0)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--weights", choices=typing.get_args(WeightFormat), default="fp32",
                        help="CPU generation with bf16 weights or int8 linear maps (faster; README 'Performance')")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image (default: name it, "
                                                              "skip it, write the others, exit 1 at the end)")
    args = parser.parse_args(argv)

    from .batch import BadItems, JsonlStream
    from .modeling.inference_weights import for_generation
    from .runs import load_trained
    from .tasks.embeddings import readable_images
    from .tasks.report_generation import generation_settings, reports_for_pixels

    studies = _studies_of(parser, args)
    model, processor, _ = load_trained(_model_dir(args.checkpoint))
    model = for_generation(model, args.weights)
    gen = generation_settings(args.max_new_tokens, args.num_beams, args.no_repeat_ngram_size, args.repetition_penalty,
                              args.do_sample, args.top_k, args.top_p, args.temperature,
                              rerank_samples=args.rerank_samples, rerank_temperature=args.rerank_temperature)
    bad = BadItems("generate", args.strict)
    if studies is not None:
        return _generate_studies(model, processor, studies, gen, args, bad)
    with JsonlStream(args.out) as out:  # each batch's reports are on disk before the next starts
        for start in range(0, len(args.images), args.batch_size):
            paths, pixels = readable_images(processor, args.images[start:start + args.batch_size], bad)
            for path, report in zip(paths, reports_for_pixels(model, processor, pixels, **gen) if paths else []):
                out.write({"image": path, "report": report})
    if args.out:
        print(f"[medvlm] wrote {out.count} reports to {args.out}")
    return bad.finish(out.count)


def _studies_of(parser, args) -> list[dict] | None:
    """The studies `generate` was asked for (None: one report per image, as without study options)."""
    from .data.study_list import command_line_study, read_study_list

    if args.studies:
        if args.images or args.prior:
            parser.error("--studies reads the studies from its file: give no images or --prior beside it")
        return read_study_list(args.studies)
    if not args.images:
        parser.error("give images (or --studies FILE)")
    if args.study or args.prior or args.prior_report:
        return [command_line_study(args.images, args.views, args.prior, args.prior_views, args.prior_report)]
    if args.views or args.prior_views:
        parser.error("--views and --prior-views describe a study: add --study (or --prior)")
    return None


def _generate_studies(model, processor, studies: list[dict], gen: dict, args, bad) -> int:
    """One report per study, batch by batch, each on disk before the next batch; a study whose
    images cannot be read is named and left out."""
    from .batch import JsonlStream
    from .processing import stack_images
    from .tasks.report_generation import reports_for_pixels

    if not processor.prior_report and any(s["prior_report"] for s in studies):
        raise UserError(f"--prior-report: the model at {args.checkpoint} was not trained to read a prior report "
                        "(data.prior_report: true); leave it out")
    with JsonlStream(args.out) as out:
        for start in range(0, len(studies), args.batch_size):
            kept, items = [], []
            for study in studies[start:start + args.batch_size]:
                ok, inputs = bad.attempt(f"study {study['id']}", lambda s=study: processor.study(
                    s["images"], s["views"], s["prior"], s["prior_views"]))
                if ok:
                    kept.append(study)
                    items.append({k: v[0] for k, v in inputs.items()})
            prompts = [s["prior_report"] for s in kept] if processor.prior_report else None
            reports = reports_for_pixels(model, processor, stack_images(items), prompts, **gen) if items else []
            for study, report in zip(kept, reports):
                out.write({"id": study["id"], "images": study["images"], "prior": study["prior"], "report": report})
    if args.out:
        print(f"[medvlm] wrote {out.count} reports to {args.out}")
    return bad.finish(out.count)


# ---------------------------------------------------------------- vqa / retrieve / explain

def vqa_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medvlm vqa", description="Answer questions about an image with a "
                                                                     "(VQA-fine-tuned) medvlm model; prints JSONL.")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image", required=True, help="PNG, JPEG or DICOM")
    parser.add_argument("--question", required=True, action="append", help="repeat for several questions")
    parser.add_argument("--max-new-tokens", type=positive_int, default=16)
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
    parser.add_argument("--gallery-split", default="train", choices=("train", "validation", "test"))
    parser.add_argument("--top-k", type=positive_int, default=5)
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image (default: name it, "
                                                              "skip it, rank the others, exit 1 at the end)")
    args = parser.parse_args(argv)

    import numpy as np

    from .batch import BadItems
    from .runs import load_trained, records_for
    from .tasks.embeddings import image_embeddings, readable_images, text_embeddings
    from .tasks.retrieval import rank_reports

    model, processor, run_cfg = load_trained(_model_dir(args.checkpoint))
    bad = BadItems("retrieve", args.strict)
    paths = readable_images(processor, args.image, bad)[0]
    images = image_embeddings(model, processor, [{"image": path} for path in paths]) if paths else None
    if args.text:
        scores = images @ text_embeddings(model, processor, [args.text])[0] if paths else []
        for rank, i in enumerate(np.argsort(-np.asarray(scores), kind="stable")[: args.top_k], start=1):
            print(json.dumps({"rank": rank, "image": paths[i], "score": round(float(scores[i]), 4)}))
        return bad.finish(len(paths))
    if args.gallery:
        from .data.tables import read_text

        gallery = [line.strip() for line in read_text(args.gallery).splitlines() if line.strip()]
    elif run_cfg is not None:
        gallery = [r["text"] for r in records_for(run_cfg, args.gallery_split) if r.get("text")]
    else:
        raise UserError(f"no --gallery given and {args.checkpoint} has no run_config.yaml to find its data; "
                        "pass --gallery FILE (one report per line)")
    ranked = rank_reports(images, gallery, text_embeddings(model, processor, gallery), args.top_k) if paths else []
    for path, hits in zip(paths, ranked):
        print(json.dumps({"image": path, "reports": [{"text": t, "score": round(s, 4)} for t, s in hits]}), flush=True)
    return bad.finish(len(paths))


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
    parser.add_argument("--layers", type=nonnegative_int, nargs="+", help="fusion layers to average (default all)")
    parser.add_argument("--heads", type=nonnegative_int, nargs="+", help="attention heads to average (default all)")
    parser.add_argument("--weighting", choices=("raw", "gradient"), default="raw",
                        help="attention maps as they are, or weighted by their gradient (Chefer et al., 2021)")
    parser.add_argument("--negative", help="Grad-CAM (medvlm): subtract the similarity to this text, e.g. "
                                           "'No pleural effusion.' (the zero-shot score)")
    parser.add_argument("--layer", help="Grad-CAM layer name (default the vision backbone's last stage of "
                                        "stride <= 16)")
    parser.add_argument("--hires", action="store_true", help="HiResCAM: weight each position by its own gradient")
    parser.add_argument("--words", nargs="+", help="only these words' panels (attention)")
    parser.add_argument("--max-words", type=positive_int, default=24)
    parser.add_argument("--study", action="store_true", help="the images are the views of one study (frontal first): "
                                                             "attention per word over each view")
    parser.add_argument("--views", nargs="+", help="view of each study image (default: frontal, then lateral)")
    parser.add_argument("--prior", nargs="+", metavar="PRIOR_IMAGE", help="the prior study's images (implies --study)")
    parser.add_argument("--prior-views", nargs="+", help="view of each prior image")
    parser.add_argument("--prior-report", help="the prior study's report, for a model trained with data.prior_report")
    args = parser.parse_args(argv)

    from .explain.image import explain_image, explain_study
    from .runs import load_trained

    model, processor, _ = load_trained(_model_dir(args.checkpoint))
    if args.study or args.prior or args.prior_report:
        from .data.study_list import command_line_study
        from .explain.targets import is_classifier

        if args.method != "attention" or args.question or is_classifier(model):
            parser.error("a study (--study, --prior) is explained by the report's cross-attention: use a medvlm "
                         "report model with --method attention and no --question")
        study = command_line_study(args.images, args.views, args.prior, args.prior_views, args.prior_report)
        if study["prior_report"] and not processor.prior_report:
            raise UserError(f"--prior-report: the model at {args.checkpoint} was not trained to read a prior report "
                            "(data.prior_report: true); leave it out")
        summary = explain_study(model, processor, study["images"], args.out, study["views"], study["prior"],
                                study["prior_views"], args.layers, args.heads, args.words, args.max_words,
                                prior_report=study["prior_report"])
        print(json.dumps({"images": study["images"], "prior": study["prior"], "files": summary["files"],
                          "text": summary["text"]}))
        return 0
    for image in args.images:
        summary = explain_image(model, processor, image, args.out, args.method, args.question, args.target,
                                args.layers, args.heads, args.layer, args.words, args.max_words, args.negative,
                                args.hires, args.weighting)
        print(json.dumps({"image": image, "files": summary["files"], "text": summary.get("text"),
                          "targets": summary.get("targets")}))
    return 0


def serve_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="medvlm serve", description="A local web app and JSON API (/healthz, /v1/report, /v1/vqa) over a "
                                         "trained model; needs the serve extra: pip install -e \".[serve]\"")
    parser.add_argument("--checkpoint", required=True, help="a saved model directory, e.g. runs/demo/final")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=positive_int, default=7860)
    parser.add_argument("--examples", help="a folder of studies to offer as examples (one subfolder per study, or "
                                           "files named <study>_<view>.png)")
    parser.add_argument("--gallery", default="auto", help="report gallery for 'similar reports': 'auto' (the "
                                                          "training reports of the run), a text file with one "
                                                          "report per line, or 'none'")
    parser.add_argument("--weights", choices=typing.get_args(WeightFormat), default="fp32")
    parser.add_argument("--max-upload-mb", type=positive_float, default=32.0, help="largest file accepted")
    parser.add_argument("--max-pixels", type=positive_int, default=50_000_000, help="largest image accepted")
    parser.add_argument("--timeout", type=positive_float, default=120.0, help="seconds one request may take")
    parser.add_argument("--max-queue", type=nonnegative_int, default=4, help="requests that may wait; more are "
                                                                              "answered 503 busy")
    args = parser.parse_args(argv)

    from .serve.server import serve
    from .serve.uploads import Limits

    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                    timeout_s=args.timeout, max_queue=args.max_queue)
    serve(str(_model_dir(args.checkpoint)), args.host, args.port, args.examples,
          None if args.gallery == "none" else args.gallery, args.weights, limits)
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
    parser.add_argument("--workers", type=nonnegative_int, default=2, help="decoding processes (0: in this process)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad item (default: name it, leave "
                                                              "it out, prepare the others, exit 1 at the end)")
    args = parser.parse_args(argv)
    cfg = _load(args)
    from collections import Counter

    from .batch import EXIT_SOME_FAILED, BadItems
    from .data.prepare import prepare_cache
    from .runs import records_for

    # A batch command: bad items are left out (as data.on_error=skip), each image that fails to
    # decode is named with its reason, every one is counted; --strict stops at the first instead.
    cfg.data.cache_dir, cfg.data.on_error = None, "raise" if args.strict else "skip"
    bad, skipped, cached = BadItems("prepare", args.strict), Counter(), 0
    for split in ("train", "validation", "test"):
        summary = prepare_cache(records_for(cfg, split), Path(args.out) / split, cfg.data.image_size,
                                resize_mode=cfg.data.resize_mode, num_workers=args.workers, on_error=cfg.data.on_error)
        for failure in summary.failed:
            bad.add(failure["item"], failure["message"].removeprefix(f"{failure['item']}: "), failure["reason"])
        if summary.skipped_while_loading:
            print(f"medvlm prepare: {split}: {sum(summary.skipped_while_loading.values())} record(s) left out while "
                  "loading (named in the loader's warning above)", file=sys.stderr)
        skipped.update(summary.skipped)
        cached += summary.num_records
        print(f"[medvlm] {split}: {summary.line()} -> {summary.path}")
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items()))
    print(f"medvlm prepare: {cached} cached, {sum(skipped.values())} skipped" + (f" ({reasons})" if skipped else ""),
          file=sys.stderr)
    return EXIT_SOME_FAILED if skipped else 0


def label_main(argv: list[str] | None = None) -> int:
    from .data.tables import read_reports  # the one reader of user files; metrics import no data code
    from .metrics.chexpert import label_main as run

    return run(argv, read_reports)


# ---------------------------------------------------------------- federate

def federate_main(argv: list[str] | None = None) -> int:
    parser = _config_parser("medvlm federate", "Train across sites with Flower (the [federated] extra): a "
                                               "simulation of federated.sites sites on this machine, resuming after "
                                               "the newest round checkpoint in train.output_dir.")
    parser.add_argument("--baselines", action="store_true",
                        help="then train the comparisons eval.py sets beside it: centralised training on the pooled "
                             "data with the same total steps, and each site alone")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    try:
        from .federated.simulation import simulate
    except ImportError as error:
        raise UserError(f"medvlm federate needs Flower: pip install 'medvlm[federated]' ({error})") from None
    from .federated.sites import describe_sites

    describe_sites(cfg)
    simulate(cfg)
    if args.baselines:
        from .federated.comparison import train_baselines

        train_baselines(cfg)
    return 0


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
    "serve": serve_main,
    "federate": federate_main,
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
