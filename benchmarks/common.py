"""Shared pieces of the two benchmarks: equal-size models (ours and two peers), synthetic data,
timing, the machine's matmul rate and peak memory measured in a fresh subprocess.

The peers are benchmark-only extras (`pip install -e .[bench]`): open_clip's CoCa and
transformers' VisionEncoderDecoderModel (ViT encoder + GPT-2 decoder with cross-attention).
All three are built from the same `Dims` with random weights.
"""

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

BOS, EOS, PAD = 1, 2, 0
# How the two models decoded by transformers' `generate` make exactly max_new_tokens tokens: with no
# EOS id nothing ends early. (min_new_tokens would do it too, but its processor masks EOS with an
# arange/isin/where over the whole 30522-token vocabulary at every step: about 0.5 ms a step here,
# a cost no real report generation has.) open_clip's CoCa loop always runs its own min-length
# processor; there it is under 1% of a step.
FIXED_LENGTH = {"eos_token_id": None}
MODELS = ("medvlm", "open_clip_coca", "hf_vision_encoder_decoder")


@dataclass(frozen=True)
class Dims:
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 384
    vision_layers: int = 6
    vision_heads: int = 6
    text_width: int = 384
    text_layers: int = 6
    text_heads: int = 6
    fusion_layers: int = 3
    vocab_size: int = 30522
    text_len: int = 128
    batch_size: int = 8
    new_tokens: int = 60


REFERENCE = Dims()
TINY = Dims(image_size=32, vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
            text_heads=2, fusion_layers=1, vocab_size=64, text_len=16, batch_size=2, new_tokens=4)


class Unavailable(Exception):
    """A figure the model cannot produce (the reason goes into the JSON)."""


# ---------------------------------------------------------------------------------------------
# models: one small adapter per model with the same three methods


class MedVLMRunner:
    """Ours; `options` are the optional speed paths: "bf16" (CPU autocast; for training),
    "bf16_weights" (the model cast to bfloat16; for generation, where autocast would re-cast
    every weight at every step), "int8_weights" (int8 linear maps; generation only), "ckpt" (activation
    checkpointing through HF's `activation_checkpointing_enable`), "compile" (torch.compile of the
    training step; in generation a static KV cache and a compiled decode step),
    "no_dropout" (the GPT-2 tower without its default 0.1 dropouts, as open_clip's CoCa)."""

    name = "medvlm"

    def __init__(self, d: Dims, options: tuple[str, ...] = ()):
        from medvlm.modeling import MedVLMConfig, MedVLMForConditionalGeneration

        cfg = MedVLMConfig(
            vision={"model_name": "vit_small_patch16_224", "img_size": d.image_size, "in_chans": 3,
                    "timm_kwargs": {"embed_dim": d.vision_width, "depth": d.vision_layers,
                                    "num_heads": d.vision_heads, "patch_size": d.patch_size}},
            text={"model_type": "gpt2", "n_embd": d.text_width, "n_layer": d.text_layers,
                  "n_head": d.text_heads, "n_positions": d.text_len,
                  **({"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0} if "no_dropout" in options else {})},
            fusion_layers=d.fusion_layers, fusion_heads=d.text_heads, embed_dim=d.text_width,
            vocab_size=d.vocab_size, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        )
        self.model = MedVLMForConditionalGeneration(cfg)
        self.notes = ["both losses: contrastive + caption (weights 1 and 2)",
                      "GPT-2 text tower with its default dropout 0.1 (CoCa has none; see option no_dropout)"]
        unknown = set(options) - {"bf16", "bf16_weights", "int8_weights", "ckpt", "compile", "no_dropout"}
        if unknown:
            raise ValueError(f"unknown medvlm options {sorted(unknown)}")
        self.autocast = "bf16" in options
        self.dtype = torch.bfloat16 if "bf16_weights" in options else torch.float32
        self.model.to(self.dtype)
        if "int8_weights" in options:  # generation only: int8 linear maps (medvlm.modeling.inference_weights)
            from medvlm.modeling.inference_weights import quantized_int8

            self.params = num_parameters(self.model)  # int8 weights are packed buffers, not parameters
            self.model = quantized_int8(self.model)
        if "ckpt" in options:
            self.model.activation_checkpointing_enable()
        compiled = "compile" in options
        self.forward = torch.compile(self.model) if compiled else self.model
        self.decoding = {}  # extra generate() arguments
        self.notes += [f"option {o}" for o in options]
        if compiled:
            from medvlm.modeling import compile_on_any_device

            self.decoding = {"cache_implementation": "static", "compile_config": compile_on_any_device()}
            self.notes.append("compile: training compiles the model; generation uses a static KV cache and "
                              "generate's compiled decode step (compiled in the warm-up call; the peak-memory "
                              "probe is skipped, since its first call is mostly the compiler)")

    def loss(self, batch: dict) -> torch.Tensor:
        ids = batch["input_ids"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            return self.forward(ids, batch["pixel_values"], batch["attention_mask"], labels=ids).loss

    def generate(self, pixels: torch.Tensor, new_tokens: int, num_beams: int) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            return self.model.generate(pixel_values=pixels.to(self.dtype), max_new_tokens=new_tokens,
                                       do_sample=False, num_beams=num_beams, **FIXED_LENGTH, **self.decoding)


class CocaRunner:
    name = "open_clip_coca"

    def __init__(self, d: Dims):
        import open_clip
        from open_clip.loss import CoCaLoss

        self.model = open_clip.CoCa(
            embed_dim=d.text_width,  # the attentional pooler needs embed_dim == decoder width
            multimodal_cfg={"context_length": d.text_len, "vocab_size": d.vocab_size, "width": d.text_width,
                            "heads": d.text_heads, "layers": d.fusion_layers},
            text_cfg={"context_length": d.text_len, "vocab_size": d.vocab_size, "width": d.text_width,
                      "heads": d.text_heads, "layers": d.text_layers, "embed_cls": True,
                      "output_tokens": True, "pad_id": PAD},
            vision_cfg={"image_size": d.image_size, "patch_size": d.patch_size, "width": d.vision_width,
                        "layers": d.vision_layers, "head_width": d.vision_width // d.vision_heads,
                        "attentional_pool": True, "attn_pooler_heads": d.text_heads, "output_tokens": True},
            pad_id=PAD,
        )
        # open_clip 3.3 never initialises the decoder's output projection (torch.empty, its
        # init_parameters is dead code); give it the init that code intends, so logits are finite
        torch.nn.init.normal_(self.model.text_decoder.text_projection, std=d.text_width**-0.5)
        self.criterion = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=PAD)
        self.new_tokens_cap = d.text_len
        self.notes = [
            "both losses: open_clip CoCaLoss (clip 1, caption 2)",
            "generate(): open_clip 3.3 refuses to run under transformers 5.x (BeamSearchScorer was removed); "
            "the benchmark bypasses that check for greedy decoding (generation_type='top_k', top_k=1); "
            "beam search stays unavailable",
            "generate() has no KV cache: every step re-runs the text tower and decoder over the whole prefix",
            "text_decoder.text_projection initialised by the benchmark (open_clip leaves it uninitialised)",
        ]

    def loss(self, batch: dict) -> torch.Tensor:
        out = self.model(batch["pixel_values"], batch["input_ids"])
        clip_loss, caption_loss = self.criterion(out["image_features"], out["text_features"], out["logits"],
                                                 out["labels"], out["logit_scale"])  # already weighted
        return clip_loss + caption_loss

    def generate(self, pixels: torch.Tensor, new_tokens: int, num_beams: int) -> torch.Tensor:
        if num_beams > 1:
            raise Unavailable("open_clip 3.3 beam search needs transformers' BeamSearchScorer, removed in 5.x")
        from open_clip import coca_model
        from transformers import TopKLogitsWarper

        coca_model._has_transformers = True  # the bypass named in self.notes
        coca_model.GENERATION_TYPES["top_k"] = TopKLogitsWarper
        # seq_len counts the start token; min_seq_len keeps EOS away until the last (forced) token
        return self.model.generate(
            pixels, seq_len=new_tokens + 1, max_seq_len=self.new_tokens_cap, generation_type="top_k", top_k=1,
            sot_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, min_seq_len=new_tokens,
            fixed_output_length=True,
        )


class VisionEncoderDecoderRunner:
    name = "hf_vision_encoder_decoder"

    def __init__(self, d: Dims):
        from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

        encoder = ViTConfig(image_size=d.image_size, patch_size=d.patch_size, num_channels=3,
                            hidden_size=d.vision_width, num_hidden_layers=d.vision_layers,
                            num_attention_heads=d.vision_heads, intermediate_size=4 * d.vision_width)
        # decoder depth = our text layers + fusion layers; GPT-2 puts cross-attention in every layer
        decoder = GPT2Config(vocab_size=d.vocab_size, n_positions=d.text_len, n_embd=d.text_width,
                             n_layer=d.text_layers + d.fusion_layers, n_head=d.text_heads,
                             add_cross_attention=True, is_decoder=True,
                             bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
        cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
        cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = BOS, PAD, EOS
        self.model = VisionEncoderDecoderModel(cfg)
        self.notes = [
            f"decoder: GPT-2 with {d.text_layers + d.fusion_layers} layers, cross-attention in each",
            "caption loss only (the model has no contrastive head)",
            f"attention: encoder {self.model.encoder.config._attn_implementation}, "
            f"decoder {self.model.decoder.config._attn_implementation}",
        ]

    def loss(self, batch: dict) -> torch.Tensor:
        # VED shifts `labels` right into decoder_input_ids itself
        return self.model(pixel_values=batch["pixel_values"], labels=batch["input_ids"]).loss

    def generate(self, pixels: torch.Tensor, new_tokens: int, num_beams: int) -> torch.Tensor:
        return self.model.generate(pixel_values=pixels, max_new_tokens=new_tokens, do_sample=False,
                                   num_beams=num_beams, use_cache=True, **FIXED_LENGTH)


RUNNERS = {r.name: r for r in (MedVLMRunner, CocaRunner, VisionEncoderDecoderRunner)}


def models_to_run(args) -> tuple[list[str], dict[str, str]]:
    """The requested models that can run (ours also with each `--variants` option), and the
    skipped ones with the reason."""
    names, skipped = available_models(args.models)
    if "medvlm" in names:
        names += [f"medvlm+{v}" for v in args.variants]
    return names, skipped


def available_models(requested: list[str]) -> tuple[list[str], dict[str, str]]:
    """The requested models whose packages import; the others with the reason."""
    skipped = {}
    try:
        import open_clip  # noqa: F401
    except ImportError:
        skipped["open_clip_coca"] = "open_clip not installed (pip install -e .[bench])"
    return [m for m in requested if m not in skipped], {m: r for m, r in skipped.items() if m in requested}


def build(name: str, d: Dims, seed: int = 0):
    """A runner by name; ours takes options after '+', e.g. "medvlm+bf16" or "medvlm+ckpt"."""
    torch.manual_seed(seed)
    base, *options = name.split("+")
    runner = RUNNERS[base](d, tuple(options)) if options else RUNNERS[base](d)
    runner.name = name
    return runner


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# data, timing, machine


def synthetic_batch(d: Dims, batch_size: int | None = None, seed: int = 0) -> dict:
    """Full-length reports (BOS ... EOS, no padding) and RGB images, equal work for every model."""
    g = torch.Generator().manual_seed(seed)
    B = batch_size or d.batch_size
    ids = torch.randint(3, d.vocab_size, (B, d.text_len), generator=g)
    ids[:, 0], ids[:, -1] = BOS, EOS
    return {
        "pixel_values": torch.randn(B, 3, d.image_size, d.image_size, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
    }


def _stats(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "iters": len(times)}


def timed(fn, warmup: int, iters: int) -> dict:
    """Median (and spread) of `iters` calls after `warmup` untimed ones."""
    return timed_interleaved({"fn": fn}, warmup, iters)["fn"]


def timed_interleaved(fns: dict, warmup: int, iters: int) -> dict[str, dict]:
    """Like `timed` for several functions, called in turn within each round, so that load from
    other processes on the machine falls on all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: _stats(t) for name, t in times.items()}


def matmul_rate(threads: int, n: int = 2048, iters: int = 10) -> dict:
    """Achieved fp32 FLOP/s of an n x n sgemm: the yardstick for the models' 'fraction' figures."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = timed(lambda: a @ b, warmup=3, iters=iters)
    return {"n": n, "threads": threads, "median_s": t["median_s"], "gflops": 2 * n**3 / t["median_s"] / 1e9}


def result_header(benchmark: str, args) -> dict:
    """The opening keys of a benchmark's JSON: what ran, at which dims, on which machine."""
    return {"benchmark": benchmark, "dims": dims_json(args.dims), "machine": machine(args.threads)}


def machine(threads: int) -> dict:
    """The machine a figure belongs to: CPU, BLAS, versions, threads and the load at the start.
    A start load above the thread count means other processes were competing for the cores: the
    figures are marked (`overloaded_at_start`) and a warning goes to stderr."""
    load = list(os.getloadavg())
    info = {
        "cpu": cpu_name(),
        "blas": blas_library(),
        "torch": torch.__version__,
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "loadavg_start": load,
        "overloaded_at_start": load[0] > threads,
    }
    if info["overloaded_at_start"]:
        print(f"WARNING: load average {load[0]:.2f} at the start exceeds the {threads} threads this benchmark "
              "uses: other processes compete for the cores and the figures will be slow (marked in the JSON)",
              file=sys.stderr)
    return info


def finish_machine(result: dict) -> None:
    """Record the load average at the end beside the one at the start."""
    result["machine"]["loadavg_end"] = list(os.getloadavg())


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (with the vendor id when the name alone, as
    in some VMs, says little), else what the platform module knows."""
    import platform

    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        return " / ".join(filter(None, [fields.get("model name"), fields.get("vendor_id")]))
    except OSError:
        return platform.processor() or platform.machine()


def blas_library() -> dict:
    """torch's BLAS (`BLAS_INFO`) and the version line of its library from `torch.__config__.show()`."""
    config = torch.__config__.show()
    info = re.search(r"BLAS_INFO=(\w+)", config)
    version = next((line.strip(" -") for line in config.splitlines()
                    if re.search(r"Math Kernel Library|OpenBLAS|BLIS|Accelerate|Arm Performance", line)), None)
    return {"name": info.group(1) if info else None, "version": version}


def ratio(ours: float | None, peer: float | None) -> float | None:
    return None if ours is None or peer is None or peer == 0 else ours / peer


# ---------------------------------------------------------------------------------------------
# peak memory: one fresh subprocess per (model, figure), so peaks never mix

MEMORY_METHOD = (
    "fresh subprocess per (model, figure): model, optimizer and inputs built, then the peak-RSS mark "
    "is reset (/proc/self/clear_refs 5) and the figure's work run; value = VmHWM after minus VmRSS "
    "before (falls back to ru_maxrss when the mark cannot be reset)"
)


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure_peak(work) -> dict:
    """Run `work()` and return the resident-memory growth it caused at its peak (MiB)."""
    import gc

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before, reset = _status_kib("VmRSS"), True
    except OSError:
        before, reset = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, False
    work()
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": (peak - before) / 1024, "hwm_reset": reset}


def peaks_in_subprocesses(script: str, probes: dict[str, list[str]], parallel: int = 3,
                          timeout: float = 900) -> dict[str, dict]:
    """Run `script <args>` for each probe (name -> args) and read the JSON line each prints last.

    Probes run a few at a time: each measures its own process, so running side by side changes
    their speed but not their peaks. Call this outside the timed sections."""
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    results, pending = {}, list(probes.items())
    while pending:
        batch, pending = pending[:parallel], pending[parallel:]
        procs = {name: subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env)
                 for name, args in batch}
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                results[name] = {"peak_mib": None, "error": err.strip().splitlines()[-1:]}
            else:
                results[name] = json.loads(out.strip().splitlines()[-1])
    return results


def _pythonpath() -> str:
    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def dims_json(d: Dims) -> dict:
    return asdict(d)


def dump(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
