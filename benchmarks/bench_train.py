"""Train-step benchmark: medvlm against open_clip CoCa and HF VisionEncoderDecoder at equal size.

One step = forward + backward + AdamW (both losses where the model has them). The models are
timed interleaved (one step of each in turn, repeated), so background load hits all of them
alike; the figures are medians. Prints one JSON document.

    python benchmarks/bench_train.py                 # reference dims (see common.Dims)
    python benchmarks/bench_train.py --variants bf16 ckpt   # also ours with bf16 autocast / checkpointing
    python benchmarks/bench_train.py --tiny          # seconds; what the smoke test runs
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

OPTIMIZER = "AdamW(lr=1e-4, weight_decay=0.05), same for every model"
PEER_OF_TARGET = "open_clip_coca"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny dims, 1 timed iteration (smoke test)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per model (default 7; tiny 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 2; tiny 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=list(common.MODELS), help="subset of " + ", ".join(common.MODELS))
    p.add_argument("--variants", nargs="*", default=[], choices=["bf16", "ckpt", "compile", "no_dropout"],
                   help="also time medvlm with these options, each as its own entry (medvlm+bf16, ...)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child-memory", metavar="MODEL", help=argparse.SUPPRESS)  # internal: one memory probe
    args = p.parse_args(argv)
    args.dims = common.TINY if args.tiny else common.REFERENCE
    args.iters = args.iters or (1 if args.tiny else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    return args


class TrainStep:
    def __init__(self, runner, batch: dict):
        self.runner, self.batch = runner, batch
        runner.model.train()
        self.opt = torch.optim.AdamW(runner.model.parameters(), lr=1e-4, weight_decay=0.05)

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.runner.loss(self.batch).backward()
        self.opt.step()

    def flops(self) -> int:
        """Forward + backward FLOPs of one step (matmuls, convolutions, attention), counted by torch."""
        counter = FlopCounterMode(display=False)
        with counter:
            self.runner.loss(self.batch).backward()
        self.opt.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def child_memory(args) -> None:
    torch.set_num_threads(args.threads)
    step = TrainStep(common.build(args.child_memory, args.dims), common.synthetic_batch(args.dims))

    def two_steps():  # the first allocates AdamW's state, which the second keeps
        step()
        step()

    print(json.dumps(common.measure_peak(two_steps)))


def memory(args, names: list[str]) -> dict[str, dict]:
    if args.no_memory:
        return {name: {"peak_mib": None} for name in names}
    common_args = ["--threads", str(args.threads)] + (["--tiny"] if args.tiny else [])
    probes = {name: ["--child-memory", name, *common_args] for name in names}
    return common.peaks_in_subprocesses(__file__, probes)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child_memory:
        child_memory(args)
        return {}
    d = args.dims
    result = common.result_header("train_step", args)
    result["matmul_fp32"] = common.matmul_rate(args.threads, n=256 if args.tiny else 2048)
    torch.set_num_threads(args.threads)

    names, skipped = common.models_to_run(args)
    batch = common.synthetic_batch(d)
    steps = {name: TrainStep(common.build(name, d), batch) for name in names}
    flops = {name: step.flops() for name, step in steps.items()}
    times = common.timed_interleaved(steps, args.warmup, args.iters)
    peaks = memory(args, names)  # after the timings: the probes would load the machine

    rate = result["matmul_fp32"]["gflops"] * 1e9
    models = {}
    for name, step in steps.items():
        t = times[name]
        models[name] = {
            "params": common.num_parameters(step.runner.model),
            "notes": step.runner.notes,
            "step_s": t["median_s"], "step_min_s": t["min_s"], "step_max_s": t["max_s"],
            "samples_per_s": d.batch_size / t["median_s"],
            "flops_per_step": flops[name],
            "achieved_gflops": flops[name] / t["median_s"] / 1e9,
            "fraction_of_matmul_rate": flops[name] / t["median_s"] / rate,
            "peak_mib": peaks[name]["peak_mib"],
            **({"peak_error": peaks[name]["error"]} if "error" in peaks[name] else {}),
        }
    result.update(
        settings={"warmup": args.warmup, "iters": args.iters, "optimizer": OPTIMIZER, "precision": "fp32",
                  "timing": "interleaved: each round runs one step of every model in turn; median over rounds",
                  "flops": "torch.utils.flop_counter.FlopCounterMode over forward + backward"},
        memory_method=None if args.no_memory else common.MEMORY_METHOD,
        models=models, skipped=skipped,
    )
    result["ratios"], result["targets"] = ratios_and_targets(models)
    common.finish_machine(result)
    common.dump(result, args.out)
    return result


def ratios_and_targets(models: dict) -> tuple[dict, dict]:
    ratios, targets = {}, {}
    if "medvlm" not in models:
        return ratios, targets
    ours = models["medvlm"]
    for peer in common.MODELS[1:]:
        if peer not in models:
            continue
        ratios[f"step_s medvlm/{peer}"] = common.ratio(ours["step_s"], models[peer]["step_s"])
        ratios[f"peak_mib medvlm/{peer}"] = common.ratio(ours["peak_mib"], models[peer]["peak_mib"])
        r = ratios[f"peak_mib medvlm/{peer}"]
        targets[f"peak memory <= {peer}"] = {"ratio": r, "met": None if r is None else r <= 1.0}
    if PEER_OF_TARGET in models:
        r = ratios[f"step_s medvlm/{PEER_OF_TARGET}"]
        targets[f"train step <= 0.75x {PEER_OF_TARGET}"] = {"ratio": r, "met": r <= 0.75}
    return ratios, targets


if __name__ == "__main__":
    main()
