"""Generation benchmark: medvlm against open_clip CoCa and HF VisionEncoderDecoder at equal size.

Every model produces exactly `new_tokens` (60) tokens per image from random weights (the two
decoded by transformers' generate have no EOS id, see common.FIXED_LENGTH; CoCa keeps EOS away with
its min_seq_len), greedy and with beam search (3 beams), for 1 image and for a batch. Figures are
timed interleaved (one call of every model in turn, repeated); medians. Prints one JSON.

    python benchmarks/bench_generate.py              # reference dims (see common.Dims)
    python benchmarks/bench_generate.py --variants bf16_weights bf16   # also ours in bf16 (weights cast / autocast)
    python benchmarks/bench_generate.py --variants compile   # also ours with a static cache, compiled decode step
    python benchmarks/bench_generate.py --tiny       # seconds; what the smoke test runs
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from medvlm.modeling import kernels  # noqa: E402

BEAMS = 3
# greedy decoding of one image: the most our seconds may be, as a multiple of a peer's seconds
# and of the weight-read floor measured in the same run
PEER_TARGETS = {"hf_vision_encoder_decoder": 0.6, "open_clip_coca": 0.25}
FLOOR_TARGET = 1.5


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny dims, 1 timed iteration (smoke test)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per figure (default 5; tiny 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=list(common.MODELS), help="subset of " + ", ".join(common.MODELS))
    p.add_argument("--variants", nargs="*", default=[],
                   choices=["bf16", "bf16_weights", "int8_weights", "compile", "bf16_weights+compile"],
                   help="also time medvlm with these options, each as its own entry (medvlm+bf16, ...)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child-memory", nargs=2, metavar=("MODEL", "FIGURE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.dims = common.TINY if args.tiny else common.REFERENCE
    args.iters = args.iters or (1 if args.tiny else 5)
    return args


def figures(d: common.Dims) -> dict[str, tuple[int, int]]:
    """figure name -> (images, beams)"""
    out = {}
    for images in (1, d.batch_size):
        out[f"greedy_{images}"] = (images, 1)
        out[f"beam{BEAMS}_{images}"] = (images, BEAMS)
    return out


def generation_call(runner, d: common.Dims, images: int, beams: int):
    pixels = common.synthetic_batch(d, images, seed=images)["pixel_values"]
    return lambda: runner.generate(pixels, d.new_tokens, beams)


def decode_weights(model) -> list[torch.Tensor]:
    """The weight matrices one greedy step of ours multiplies by a vector: text tower and fusion
    layers, and the LM head (the token embedding), without the lookup tables (position
    embeddings) and the cross-attention key/value projections (applied once per image)."""
    text, fusion = model.model.text.model, model.model.fusion
    lookups = {id(m.weight) for m in text.modules() if isinstance(m, torch.nn.Embedding)}
    once_per_image = {id(b.cross_attn.kv.weight) for b in fusion}
    skipped = lookups | once_per_image
    weights = [p for p in [*text.parameters(), *fusion.parameters()] if p.ndim == 2 and id(p) not in skipped]
    return weights + [model.model.text.token_embeddings.weight]


def floor_products(model, new_tokens: int) -> dict:
    """name -> call doing nothing but the matrix-vector products of `new_tokens` greedy steps at
    one image, in one form: what no implementation at these dimensions and this dtype goes below
    on this machine, since each step must read every decode weight once. BLAS reads the same
    bytes at different speeds depending on the form of the product (see `few_row_linear`), so
    three forms are timed and the floor is the fastest: a vector times the matrix, the matrix
    times a vector, and the matrix times two columns (the vector repeated). They are timed in
    the same interleaved rounds as the models, so that the floor and the figures see the same
    memory bandwidth (on a shared VM it varies from minute to minute)."""
    matrices = [w.detach().contiguous() for w in decode_weights(model)]  # each (rows, cols)
    row_vectors = [torch.randn(1, m.shape[0], dtype=m.dtype) for m in matrices]
    column_vectors = [torch.randn(m.shape[1], dtype=m.dtype) for m in matrices]
    two_rows = [torch.stack([v, v]) for v in column_vectors]  # (2, cols); used transposed, as few_row_linear does
    products = {
        "vector_times_matrix": lambda: [torch.mm(v, m) for m, v in zip(matrices, row_vectors)],  # (1, cols)
        "matrix_times_vector": lambda: [torch.mv(m, v) for m, v in zip(matrices, column_vectors)],  # (rows,)
        "matrix_times_two_columns": lambda: [torch.mm(m, r.T) for m, r in zip(matrices, two_rows)],  # (rows, 2)
    }

    def steps(product):
        def run():
            with torch.inference_mode():
                for _ in range(new_tokens):
                    product()
        return run

    return {name: steps(product) for name, product in products.items()}


def weight_read_floor(model, seconds_per_form: dict[str, float], new_tokens: int) -> dict:
    """The floor from the timed `floor_products` (median seconds per form)."""
    megabytes = sum(w.numel() * w.element_size() for w in decode_weights(model)) / 1e6
    floor = min(seconds_per_form.values())
    return {"s": floor, "weights_mb_per_step": megabytes, "read_gb_per_s": megabytes * new_tokens / floor / 1e3,
            "s_per_form": seconds_per_form}


def child_memory(args) -> None:
    torch.set_num_threads(args.threads)
    name, figure = args.child_memory
    runner = common.build(name, args.dims)
    runner.model.eval()
    call = generation_call(runner, args.dims, *figures(args.dims)[figure])
    print(json.dumps(common.measure_peak(call)))


def memory(args, calls: dict) -> dict:
    """Peak memory per (model, figure), each in its own process; --tiny probes one figure only."""
    if args.no_memory:
        return {}
    largest = f"greedy_{args.dims.batch_size}"
    common_args = ["--threads", str(args.threads)] + (["--tiny"] if args.tiny else [])
    # a compiled variant's first call in a fresh process is mostly the compiler: not measured
    probes = {key: ["--child-memory", *key.split("/"), *common_args]
              for key in calls if (not args.tiny or key.endswith("/" + largest)) and "compile" not in key}
    return common.peaks_in_subprocesses(__file__, probes)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child_memory:
        child_memory(args)
        return {}
    d = args.dims
    result = common.result_header("generate", args)
    torch.set_num_threads(args.threads)

    names, skipped = common.models_to_run(args)
    runners = {name: common.build(name, d) for name in names}
    models = {name: {"params": getattr(r, "params", None) or common.num_parameters(r.model), "notes": r.notes,
                     "figures": {}}
              for name, r in runners.items()}

    calls = {}  # "model/figure" -> call, for the figures the model can produce
    for figure, (images, beams) in figures(d).items():
        for name, runner in runners.items():
            runner.model.eval()
            call = generation_call(runner, d, images, beams)
            try:
                out = call()  # also the first warm-up
            except common.Unavailable as e:
                models[name]["figures"][figure] = {"s": None, "unavailable": str(e)}
                continue
            if out.shape != (images, d.new_tokens + 1):
                raise RuntimeError(f"{name} {figure}: output {tuple(out.shape)}, expected start + {d.new_tokens}")
            calls[f"{name}/{figure}"] = call
    if "medvlm" in runners:
        calls.update({f"floor/{name}": call for name, call in floor_products(runners["medvlm"].model,
                                                                                 d.new_tokens).items()})
    times = common.timed_interleaved(calls, args.warmup - 1 if args.warmup else 0, args.iters)
    floor_times = {key.split("/")[1]: times.pop(key)["median_s"] for key in list(times) if key.startswith("floor/")}
    peaks = memory(args, {key: call for key, call in calls.items() if not key.startswith("floor/")})

    for key, t in times.items():
        name, figure = key.split("/")
        images = figures(d)[figure][0]
        entry = {"s": t["median_s"], "min_s": t["min_s"], "max_s": t["max_s"],
                 "new_tokens_per_s": images * d.new_tokens / t["median_s"],
                 "peak_mib": peaks.get(key, {}).get("peak_mib")}
        if "error" in peaks.get(key, {}):
            entry["peak_error"] = peaks[key]["error"]
        models[name]["figures"][figure] = entry

    if "medvlm" in runners:
        models["medvlm"]["greedy_1_weight_read_floor"] = weight_read_floor(runners["medvlm"].model, floor_times,
                                                                           d.new_tokens)
    # the decoding-step forms chosen by timing in the warm-up calls (kernels.few_row_linear)
    result["few_row_forms"] = {"fixed": os.environ.get(kernels.FORM_ENV), "chosen": kernels.form_choices()}
    result.update(
        settings={"new_tokens": d.new_tokens, "beams": BEAMS, "warmup": args.warmup, "iters": args.iters,
                  "precision": "fp32", "decoding": "exactly new_tokens per sequence (HF generate: no EOS id; "
                  "CoCa: its min_seq_len), from random weights; VisionEncoderDecoder with its KV cache",
                  "timing": "interleaved: each round runs every (model, figure) and each form of the weight-read "
                  "floor in turn; median over rounds"},
        memory_method=None if args.no_memory else common.MEMORY_METHOD
        + ("; --tiny: greedy at the batch size only" if args.tiny else ""),
        models=models, skipped=skipped,
    )
    result["ratios"], result["targets"] = ratios_and_targets(models, d)
    common.finish_machine(result)
    common.dump(result, args.out)
    print_targets(result["targets"])
    return result


def print_targets(targets: dict) -> None:
    """The targets, one line each, on stderr (stdout is the JSON)."""
    for name, target in targets.items():
        value = target.get("ratio")
        met = {True: "met", False: "NOT met", None: "n/a"}[target["met"]]
        print(f"{name}: {'n/a' if value is None else f'{value:.2f}'} ({met})", file=sys.stderr)


def ratios_and_targets(models: dict, d: common.Dims) -> tuple[dict, dict]:
    """ratios: ours/peer seconds and peak memory per figure (< 1 is better for us);
    targets: greedy decoding of one image against the peers and the weight-read floor, and peak
    memory, each with its ratio and whether it is met."""
    ratios, targets = {}, {}
    for name in ("medvlm", "medvlm+compile"):  # our fp32 entries, which the targets are about
        if name not in models:
            continue
        ours, prefix = models[name]["figures"], "" if name == "medvlm" else f"{name}: "
        floor = models["medvlm"].get("greedy_1_weight_read_floor")
        if floor:
            r = common.ratio(ours["greedy_1"]["s"], floor["s"])
            targets[f"{prefix}greedy_1 s <= {FLOOR_TARGET}x weight-read floor"] = {"ratio": r, "met": r <= FLOOR_TARGET}
        for peer in common.MODELS[1:]:
            if peer not in models:
                continue
            theirs = models[peer]["figures"]
            for figure in figures(d):
                ratios[f"{figure} s {name}/{peer}"] = common.ratio(ours[figure]["s"], theirs[figure]["s"])
                r = common.ratio(ours[figure].get("peak_mib"), theirs[figure].get("peak_mib"))
                if r is not None:
                    ratios[f"{figure} peak_mib {name}/{peer}"] = r
                    targets[f"{prefix}{figure} peak memory <= {peer}"] = {"ratio": r, "met": r <= 1.0}
            r, most = ratios[f"greedy_1 s {name}/{peer}"], PEER_TARGETS[peer]
            targets[f"{prefix}greedy_1 s <= {most}x {peer}"] = {"ratio": r, "met": None if r is None else r <= most}
    return ratios, targets


if __name__ == "__main__":
    main()
