"""few_row_linear's measured form choice against each fixed form, in one process on one model.

Greedy decoding at 1 image and beam 3 at a batch, at the reference dimensions, with the form
left to measurement (the default) or fixed through MEDVLM_FEW_ROW_FORM, timed interleaved
(one call of every setting in turn, repeated); medians. Prints one JSON.

    python benchmarks/bench_forms.py            # reference dims
    python benchmarks/bench_forms.py --tiny     # seconds; what the smoke test runs
"""

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from medvlm.modeling import kernels  # noqa: E402

BEAMS = 3


def with_form(form: str | None, work):
    """`work` run with the form fixed (or, for None, chosen by measurement)."""
    def run():
        previous = os.environ.pop(kernels.FORM_ENV, None)
        if form:
            os.environ[kernels.FORM_ENV] = form
        try:
            work()
        finally:
            os.environ.pop(kernels.FORM_ENV, None)
            if previous is not None:
                os.environ[kernels.FORM_ENV] = previous
    return run


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny dims, 1 timed iteration (smoke test)")
    p.add_argument("--iters", type=int, default=None, help="timed rounds (default 5; tiny 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args(argv)
    args.dims = common.TINY if args.tiny else common.REFERENCE
    iters = args.iters or (1 if args.tiny else 5)
    d = args.dims
    result = common.result_header("forms", args)
    torch.set_num_threads(args.threads)
    runner = common.build("medvlm", d)
    runner.model.eval()
    settings = {"measured": None, **{f"always {name}": name for name in kernels.FEW_ROW_FORMS}}
    figures = {}
    for images, beams in ((1, 1), (d.batch_size, BEAMS)):
        pixels = common.synthetic_batch(d, images, seed=images)["pixel_values"]
        work = lambda: runner.generate(pixels, d.new_tokens, beams)  # noqa: E731
        times = common.timed_interleaved({label: with_form(form, work) for label, form in settings.items()},
                                         warmup=1, iters=iters)
        figures[f"{'greedy' if beams == 1 else f'beam{beams}'}_{images}"] = {
            label: t["median_s"] for label, t in times.items()}
    result.update(settings={"new_tokens": d.new_tokens, "iters": iters, "precision": "fp32"}, figures=figures,
                  few_row_forms=kernels.form_choices())
    common.finish_machine(result)
    common.dump(result, args.out)
    return result


if __name__ == "__main__":
    main()
