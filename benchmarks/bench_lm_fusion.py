"""Decoding cost of the fusion: medvlm with a causal-LM text tower against that LM alone.

The text tower is a random-weight LM of Qwen2.5-0.5B's architecture (written to a temporary
folder in the real on-disk format by `medvlm.random_towers.save_random_lm`, then loaded the way a
run loads a pretrained LM: `model.text={pretrained_path: ...}`); ours adds a small timm ViT and 2
cross-attention fusion layers of the LM's width. The bare LM is the same folder loaded by
`AutoModelForCausalLM.from_pretrained`, decoded by transformers' own `generate`. Both decode
greedily exactly `new_tokens` tokens (60) per row from one start token, for 1 image and for 8
(batch rows; the bare LM gets as many rows), fp32, under `torch.inference_mode`.

Timing is interleaved: each round calls, per case, ours, the bare LM, both again with one new
token (prefill + first step: what is not per-token decoding) and our image encoding alone
(vision tower + cross-attention keys/values, once per image inside `generate`); medians over the
rounds, after one warm-up round whose calls also give the peak memory. Target: ours <= 1.15x the
bare LM's seconds per case. Ours' fusion layers and LM head go through `kernels.few_row_linear`,
which takes whichever product form this machine's BLAS reads fastest, while the LM's own layers
(in ours and in the bare LM) are plain `F.linear`: `--same-forms` also times ours with F.linear
throughout, so that the ratio shows the fusion's cost alone. JSON on stdout (and in
benchmarks/results/<machine>_lm_fusion.json, or --out); the table and the targets on stderr.

    python benchmarks/bench_lm_fusion.py              # Qwen2.5-0.5B size (~4 GB resident, ~6 GB while building)
    python benchmarks/bench_lm_fusion.py --same-forms          # also ours with F.linear throughout
    python benchmarks/bench_lm_fusion.py --build-only          # configs and parameter counts, no weights
    python benchmarks/bench_lm_fusion.py --text-size tiny --rounds 1 --new-tokens 4 --out x.json  # smoke
"""

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from medvlm.modeling import kernels  # noqa: E402

TARGET = 1.15  # ours / bare LM seconds, at most
RESULTS = Path(__file__).resolve().parent / "results"
# the random LM's tokenizer vocabulary (the LM's embedding rows are the size's vocab_size)
WORDS = ("no acute cardiopulmonary process . heart size is normal . there is a small left pleural effusion . "
         "mild cardiomegaly with right lower lobe opacity . lungs are clear . no pneumothorax").split()

# Qwen2.5-0.5B's architecture (its config.json), random weights; `tiny` for the smoke test
QWEN25_05B = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
SIZES = {
    "qwen2.5-0.5b": {
        "text": QWEN25_05B,
        "fusion_heads": 14,  # divides 896 (head_dim 64, as the LM's)
        "image_size": 224,
        "vision": {"model_name": "vit_tiny_patch16_224"},  # timm's ViT-Ti/16: 196 patches + CLS
    },
    "tiny": {
        "text": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=1024, max_position_embeddings=128,
                     rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
        "fusion_heads": 4,
        "image_size": 32,
        "vision": {"model_name": "vit_tiny_patch16_224", "timm_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}},
    },
}
FUSION_LAYERS = 2
LENGTH_RULES = {
    # both sides: EOS masked until the last step, so every row makes exactly max_new_tokens
    "min_new_tokens": lambda n: {"min_new_tokens": n},
    # both sides: no EOS id, nothing ends early (benchmarks/common.FIXED_LENGTH; saves the
    # min-length processor's vocabulary-wide mask at every step, the same on both sides)
    "no_eos": lambda n: {"eos_token_id": None},
}
MEMORY_METHOD = ("in-process, per (case, model): resident-memory growth at its peak during the warm-up call "
                 "(VmHWM after, with the mark reset by /proc/self/clear_refs, minus VmRSS before; ru_maxrss "
                 "delta when the mark cannot be reset, which sees only new highs); the weights, resident before, "
                 "are not counted")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text-size", choices=list(SIZES), default="qwen2.5-0.5b")
    p.add_argument("--images", type=int, nargs="+", default=[1, 8], help="cases: images (batch rows) per call")
    p.add_argument("--new-tokens", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3, help="timed interleaved rounds (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (>= 1: the first gives peak memory)")
    p.add_argument("--length-by", choices=list(LENGTH_RULES), default="min_new_tokens",
                   help="how both sides are held to exactly --new-tokens tokens")
    p.add_argument("--same-forms", action="store_true",
                   help="also time ours with every product as F.linear (MEDVLM_FEW_ROW_FORM=linear), the form the "
                        "bare LM uses: the fusion's own cost without the faster LM-head form ours may choose")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--build-only", action="store_true",
                   help="build the configs and meta-device models, print parameter counts; no weights, no timing")
    p.add_argument("--out", help="write the JSON here (default benchmarks/results/<machine>_lm_fusion.json; "
                                 "--build-only: nowhere)")
    args = p.parse_args(argv)
    if args.new_tokens < 1 or args.rounds < 1 or args.warmup < 1:
        p.error("--new-tokens, --rounds and --warmup must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------
# models


def write_lm_folder(folder: Path, text: dict, weights: bool) -> Path:
    """The random LM's folder: with `weights` as save_random_lm writes it; without, its config and
    tokenizer only (all that building the configs reads), made by the same rules."""
    if weights:
        from medvlm.random_towers import save_random_lm

        return save_random_lm(folder, text, WORDS)
    from transformers import AutoConfig

    from medvlm.random_towers import STYLE_OF, word_tokenizer

    fields = dict(text)
    model_type = fields.pop("model_type")
    tokenizer = word_tokenizer(WORDS, STYLE_OF.get(model_type, "llama"))
    for role in ("bos_token", "eos_token", "pad_token"):
        if getattr(tokenizer, role) is not None:
            fields.setdefault(role + "_id", tokenizer.convert_tokens_to_ids(getattr(tokenizer, role)))
    AutoConfig.for_model(model_type, **fields).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_overrides(size: dict, lm_folder: Path) -> list[str]:
    """The run-config overrides of ours: the LM folder as the text tower, the ViT, 2 fusion layers."""
    vision = size["vision"]
    out = [f"data.image_size={size['image_size']}", f"model.vision.model_name={vision['model_name']}",
           f"model.fusion_layers={FUSION_LAYERS}", f"model.fusion_heads={size['fusion_heads']}",
           f"model.text={{pretrained_path: {lm_folder}}}"]
    if vision.get("timm_kwargs"):
        fields = ", ".join(f"{k}: {v}" for k, v in vision["timm_kwargs"].items())
        out.append(f"model.vision.timm_kwargs={{{fields}}}")
    return out


def build_models(size: dict, lm_folder: Path, meta: bool, seed: int):
    """(ours, bare LM, ours' bos id): ours built from a run config as train.py builds it; on the
    meta device (no memory, no weights loaded) when `meta`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from medvlm.config import load_config
    from medvlm.modeling import MedVLMForConditionalGeneration
    from medvlm.runs import build_model, build_processor, model_config

    cfg = load_config(None, run_overrides(size, lm_folder))
    processor = build_processor(cfg, [])
    torch.manual_seed(seed)
    if meta:
        with torch.device("meta"):
            ours = MedVLMForConditionalGeneration(model_config(cfg, processor.tokenizer))
            bare = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(lm_folder)))
    else:
        ours = build_model(cfg, processor)
        bare = AutoModelForCausalLM.from_pretrained(str(lm_folder), dtype=torch.float32)
        in_own_memory(bare)
    return ours.eval(), bare.eval()


def in_own_memory(model) -> None:
    """Copy weights that `from_pretrained` left as views of the mmapped safetensors file into
    ordinary memory, as ours' are (its tower copies the checkpoint into its own parameters): the
    two then read their weights from the same kind of pages, and the folder may be deleted."""
    with torch.no_grad():
        for p in model.parameters():  # tied weights are one Parameter: copied once, still tied
            p.data = p.data.clone()


def count(modules) -> int:
    seen, total = set(), 0
    for m in modules:
        for p in ([m] if isinstance(m, torch.nn.Parameter) else m.parameters()):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def parameter_counts(ours, bare) -> dict:
    """Ours by part (LM = the text tower, its tied head included once; fusion = the fusion blocks,
    image-to-fusion projection, final norm, view and prior embeddings and LM-head bias; contrastive = the two embedding
    projections and the logit scale, unused by generation; vision = the timm ViT), and the bare LM."""
    inner = ours.model
    parts = {
        "lm": count([inner.text]),
        "fusion": count([inner.fusion, inner.image_to_fusion, inner.ln_final, ours.lm_bias, inner.view_embeddings,
                         inner.prior_embedding]
                        + ([inner.image_positions] if inner.image_positions is not None else [])),
        "contrastive": count([inner.image_projection, inner.text_projection, inner.logit_scale]),
        "vision": count([inner.vision]),
    }
    parts["total"] = count([ours])
    if sum(v for k, v in parts.items() if k != "total") != parts["total"]:
        raise RuntimeError(f"parameter parts {parts} do not add up")
    parts["bare_lm"] = count([bare])
    parts["fusion_share_of_lm"] = parts["fusion"] / parts["lm"]
    return parts


def model_facts(ours, bare) -> dict:
    text_cfg = ours.model.text.model.config
    return {
        "ours_text_tower": type(ours.model.text.model).__name__, "bare_lm": type(bare).__name__,
        "attention": {"ours_text_tower": text_cfg._attn_implementation, "bare_lm": bare.config._attn_implementation,
                      "fusion": "sdpa (torch.nn.functional.scaled_dot_product_attention)"},
        "vocab_rows": {"ours": ours.model.text.token_embeddings.num_embeddings,
                       "bare_lm": bare.get_input_embeddings().num_embeddings},
        "bos_token_id": ours.config.bos_token_id, "eos_token_id": ours.config.eos_token_id,
        "pad_token_id": ours.config.pad_token_id,
        "image_tokens_per_image": list(ours.model.vision.token_grid(ours.config.vision["img_size"])),
        "in_chans": ours.config.vision["in_chans"],
    }


def check_same_lm(ours, bare) -> None:
    """Ours' text tower holds the bare LM's weights (same folder), in fp32."""
    rows = bare.get_input_embeddings().weight
    if not torch.equal(ours.model.text.token_embeddings.weight[: rows.shape[0]], rows):
        raise RuntimeError("ours' token embeddings differ from the bare LM's: not the same LM")
    body = dict(bare.base_model.named_parameters())
    for name, p in ours.model.text.model.named_parameters():
        if name in body and p.shape == body[name].shape and not torch.equal(p, body[name]):
            raise RuntimeError(f"text tower weight {name} differs from the bare LM's")
    dtypes = {p.dtype for p in [*ours.parameters(), *bare.parameters()]}
    if dtypes != {torch.float32}:
        raise RuntimeError(f"expected fp32 weights, got {dtypes}")


# ---------------------------------------------------------------------------------------------
# calls and timing


def with_form(call, form: str):
    """`call` with few_row_linear held to `form` (kernels.FORM_ENV, read at every product)."""
    def run():
        before = os.environ.get(kernels.FORM_ENV)
        os.environ[kernels.FORM_ENV] = form
        try:
            return call()
        finally:
            if before is None:
                del os.environ[kernels.FORM_ENV]
            else:
                os.environ[kernels.FORM_ENV] = before
    return run


def case_calls(ours, bare, size: dict, images: int, new_tokens: int, length_by: str, seed: int,
               same_forms: bool = False) -> dict:
    """name -> call for one case: ours and bare with `new_tokens`, both with 1 (prefill + first
    step), and our image encoding alone; with `same_forms` also ours (both lengths) with every
    product as F.linear. Each returns its output (for the shape checks)."""
    g = torch.Generator().manual_seed(seed + images)
    s = size["image_size"]
    pixels = torch.randn(images, ours.config.vision["in_chans"], s, s, generator=g)
    bos = ours.config.bos_token_id
    start = torch.full((images, 1), bos, dtype=torch.long)  # the start token ours uses, one per row
    mask = torch.ones_like(start)

    def ours_call(n):
        return lambda: ours.generate(pixel_values=pixels, max_new_tokens=n, do_sample=False,
                                     **LENGTH_RULES[length_by](n))

    def bare_call(n):
        def call():
            with torch.inference_mode():
                return bare.generate(input_ids=start, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                     pad_token_id=ours.config.pad_token_id, **LENGTH_RULES[length_by](n))
        return call

    def encode():
        with torch.inference_mode():  # what ours.generate runs once per call before decoding
            return ours.model.image_keys_values(ours.model.encode_image(pixels)[0])

    calls = {"ours": ours_call(new_tokens), "bare": bare_call(new_tokens),
             "ours_first": ours_call(1), "bare_first": bare_call(1), "encode": encode}
    if same_forms:
        calls["ours_linear"] = with_form(ours_call(new_tokens), "linear")
        calls["ours_linear_first"] = with_form(ours_call(1), "linear")
    return calls


def check_output(name: str, out: torch.Tensor, images: int, new_tokens: int) -> None:
    if name == "encode":
        return
    n = 1 if name.endswith("_first") else new_tokens
    if tuple(out.shape) != (images, 1 + n):
        raise RuntimeError(f"{name} at {images} images: output {tuple(out.shape)}, expected (rows, start + {n})")


def measure(cases: dict[int, dict], args) -> tuple[dict, dict]:
    """(timing stats by "images/name", peak memory by the same keys): one measured warm-up call of
    each (its peak memory), further warm-up rounds, then the timed interleaved rounds."""
    keyed = {f"{images}/{name}": call for images, calls in cases.items() for name, call in calls.items()}
    peaks = {}
    for key, call in keyed.items():
        images, name = key.split("/")
        holder = {}
        peaks[key] = common.measure_peak(lambda: holder.setdefault("out", call()))
        check_output(name, holder.pop("out"), int(images), args.new_tokens)
    return common.timed_interleaved(keyed, args.warmup - 1, args.rounds), peaks


def summarise(images: int, times: dict, peaks: dict, new_tokens: int) -> dict:
    t = {key.split("/")[1]: v for key, v in times.items() if key.split("/")[0] == str(images)}

    def per_token_ms(side):  # the steps after the first: cached one-token decoding, per step (all rows)
        if new_tokens < 2:
            return None
        return (t[side]["median_s"] - t[f"{side}_first"]["median_s"]) / (new_tokens - 1) * 1e3

    ours_ms, bare_ms = per_token_ms("ours"), per_token_ms("bare")
    out = {
        "images": images,
        "ours_s": t["ours"]["median_s"], "bare_s": t["bare"]["median_s"],
        "ratio": common.ratio(t["ours"]["median_s"], t["bare"]["median_s"]),
        "ours_spread_s": [t["ours"]["min_s"], t["ours"]["max_s"]],
        "bare_spread_s": [t["bare"]["min_s"], t["bare"]["max_s"]],
        "ours_first_token_s": t["ours_first"]["median_s"], "bare_first_token_s": t["bare_first"]["median_s"],
        "encode_s": t["encode"]["median_s"],
        "ours_decode_ms_per_token": ours_ms, "bare_decode_ms_per_token": bare_ms,
        "decode_ratio": common.ratio(ours_ms, bare_ms),
        "ours_ms_per_token_overall": t["ours"]["median_s"] / new_tokens * 1e3,
        "bare_ms_per_token_overall": t["bare"]["median_s"] / new_tokens * 1e3,
        "ours_new_tokens_per_s": images * new_tokens / t["ours"]["median_s"],
        "bare_new_tokens_per_s": images * new_tokens / t["bare"]["median_s"],
        "peak_mib": {name: peaks[f"{images}/{name}"]["peak_mib"] for name in ("ours", "bare", "encode")},
        "rounds": t["ours"]["iters"],
    }
    if "ours_linear" in t:  # ours with the bare LM's product form throughout
        linear_ms = per_token_ms("ours_linear")
        out.update({
            "ours_linear_s": t["ours_linear"]["median_s"],
            "ratio_same_forms": common.ratio(t["ours_linear"]["median_s"], t["bare"]["median_s"]),
            "ours_linear_first_token_s": t["ours_linear_first"]["median_s"],
            "ours_linear_decode_ms_per_token": linear_ms,
            "decode_ratio_same_forms": common.ratio(linear_ms, bare_ms),
            "ours_linear_spread_s": [t["ours_linear"]["min_s"], t["ours_linear"]["max_s"]],
        })
        out["peak_mib"]["ours_linear"] = peaks[f"{images}/ours_linear"]["peak_mib"]
    return out


# ---------------------------------------------------------------------------------------------
# output


def machine_tag(info: dict) -> str:
    """e.g. "amd_epyc_2threads": the CPU model name (before the vendor id) and the thread count."""
    name = info["cpu"].split(" / ")[0].lower()
    name = re.sub(r"\b(processor|cpu|\d+-core)\b|\(r\)|\(tm\)|@.*", " ", name)
    slug = re.sub(r"[^a-z0-9]+", "_", name).strip("_")[:40].strip("_") or "machine"
    return f"{slug}_{info['threads']}threads"


def print_table(result: dict) -> None:
    n = result["settings"]["new_tokens"]
    head = (f"{'images':>6} {'ours s':>9} {'bare s':>9} {'ratio':>6} {'ours ms/tok':>11} {'bare ms/tok':>11} "
            f"{'dec ratio':>9} {'ours 1st s':>10} {'bare 1st s':>10} {'encode s':>9} {'ours MiB':>9} {'bare MiB':>9}")
    print(f"\n{result['size']}: greedy {n} new tokens, fp32, {result['machine']['threads']} threads "
          f"(ms/tok: per decoding step after the first, all rows; peak MiB: RSS growth in the warm-up call)",
          file=sys.stderr)
    print(head, file=sys.stderr)

    def f(v, fmt):
        return f"{v:{fmt}}" if v is not None else "n/a"

    for c in result["cases"].values():
        if "ours_linear_s" in c:
            print(f"{c['images']:>6} ours with F.linear throughout: {c['ours_linear_s']:.3f} s, ratio "
                  f"{c['ratio_same_forms']:.3f}, decode {f(c['ours_linear_decode_ms_per_token'], '.1f')} ms/tok "
                  f"(ratio {f(c['decode_ratio_same_forms'], '.3f')})", file=sys.stderr)
        print(f"{c['images']:>6} {c['ours_s']:>9.3f} {c['bare_s']:>9.3f} {c['ratio']:>6.3f} "
              f"{f(c['ours_decode_ms_per_token'], '.1f'):>11} {f(c['bare_decode_ms_per_token'], '.1f'):>11} "
              f"{f(c['decode_ratio'], '.3f'):>9} {c['ours_first_token_s']:>10.3f} {c['bare_first_token_s']:>10.3f} "
              f"{c['encode_s']:>9.3f} {f(c['peak_mib']['ours'], '.0f'):>9} {f(c['peak_mib']['bare'], '.0f'):>9}",
              file=sys.stderr)
    p = result["params"]
    print(f"params: LM {p['lm'] / 1e6:.1f} M, fusion + projections {p['fusion'] / 1e6:.2f} M, "
          f"contrastive {p['contrastive'] / 1e6:.2f} M, vision {p['vision'] / 1e6:.2f} M; "
          f"bare LM {p['bare_lm'] / 1e6:.1f} M",
          file=sys.stderr)
    for name, target in result["targets"].items():
        print(f"target: {name}: ratio {target['ratio']:.3f} "
              f"{'PASS' if target['met'] else 'MISS'}", file=sys.stderr)


def print_params(params: dict, stream=sys.stderr) -> None:
    for k, v in params.items():
        print(f"  {k:>20}: {v:,}" if isinstance(v, int) else f"  {k:>20}: {v:.4f}", file=stream)


def settings(args, threads: int) -> dict:
    """What was run and how it was timed, for the JSON."""
    return {
        "new_tokens": args.new_tokens, "images": args.images, "rounds": args.rounds, "warmup": args.warmup,
        "length_by": args.length_by, "precision": "fp32", "decoding": "greedy, KV cache (ours: its preallocated "
        "cache; bare: transformers' default), torch.inference_mode, from one start token per row (ours' BOS id)",
        "timing": "interleaved rounds: per case ours, bare, ours 1 token, bare 1 token, our image encoding "
                  "(and with --same-forms ours with F.linear throughout, both lengths); median over rounds",
        "same_forms": args.same_forms,
        "decode_ms_per_token": "(median with new_tokens - median with 1) / (new_tokens - 1): one cached decoding "
                               "step of all rows",
        "first_token_s": "generate with max_new_tokens=1: ours = image encoding + prefill + 1 step; bare = prefill",
        "threads": threads,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    size = SIZES[args.text_size]
    with tempfile.TemporaryDirectory(prefix="bench_lm_fusion_") as tmp:
        started = time.perf_counter()
        lm_folder = write_lm_folder(Path(tmp) / "lm", size["text"], weights=not args.build_only)
        ours, bare = build_models(size, lm_folder, meta=args.build_only, seed=args.seed)
        build_s = time.perf_counter() - started
    params = parameter_counts(ours, bare)
    result = {"benchmark": "lm_fusion", "size": args.text_size,
              "config": {"text": size["text"], "fusion_layers": FUSION_LAYERS, "fusion_heads": size["fusion_heads"],
                         "image_size": size["image_size"], "vision": size["vision"],
                         "medvlm_config": {k: getattr(ours.config, k) for k in (
                             "fusion_layers", "fusion_heads", "fusion_mlp_ratio", "fusion_null_slot",
                             "fusion_image_positions", "fusion_qk_norm", "vocab_size")}},
              "params": params, "models": model_facts(ours, bare)}
    if args.build_only:
        result["build_only"] = "meta-device models from the real configs; no weights, nothing timed"
        print(f"{args.text_size}: built on the meta device in {build_s:.1f} s; parameters:", file=sys.stderr)
        print_params(params)
        common.dump(result, args.out)
        return result

    result["machine"] = common.machine(threads)
    result["build_s"] = build_s
    check_same_lm(ours, bare)
    cases = {n: case_calls(ours, bare, size, n, args.new_tokens, args.length_by, args.seed, args.same_forms)
             for n in args.images}
    times, peaks = measure(cases, args)
    result["settings"] = settings(args, threads)
    result["memory_method"] = MEMORY_METHOD
    result["cases"] = {f"images_{n}": summarise(n, times, peaks, args.new_tokens) for n in args.images}
    # named as target_means.py reads them: "<case> s <= <limit>x <what>"
    result["targets"] = {f"greedy {key} s <= {TARGET}x bare LM": {"ratio": c["ratio"], "most": TARGET,
                                                                 "met": c["ratio"] <= TARGET}
                         for key, c in result["cases"].items()}
    # the decoding-step forms our fusion layers and LM head chose by timing (kernels.few_row_linear);
    # the LM's own layers (and the bare LM) use F.linear
    result["few_row_forms"] = {"fixed": os.environ.get(kernels.FORM_ENV), "chosen": kernels.form_choices()}
    common.finish_machine(result)
    out = args.out or str(RESULTS / f"{machine_tag(result['machine'])}_lm_fusion.json")
    common.dump(result, out)
    print_table(result)
    print(f"JSON: {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
