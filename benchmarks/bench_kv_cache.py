"""Cached vs uncached greedy generation of exactly 60 new tokens (prints JSON).

    python benchmarks/bench_kv_cache.py --checkpoint runs/demo/final
    python benchmarks/bench_kv_cache.py            # the demo architecture with random weights
"""

import argparse
import json
import statistics
import time

import torch


def demo_sized_model():
    from medvlm.config import load_config
    from medvlm.modeling import MedVLMForConditionalGeneration
    from medvlm.runs import model_config

    cfg = load_config("configs/demo.yaml")

    class Vocab:  # the demo tokenizer's size and special ids, without training one
        bos_token_id, eos_token_id, pad_token_id, cls_token_id, sep_token_id = 1, 2, 0, None, 4

        def __len__(self):
            return 600

    return MedVLMForConditionalGeneration(model_config(cfg, Vocab())), cfg.data.image_size


def time_generation(model, pixels, use_cache: bool, repeats: int) -> float:
    kwargs = dict(max_new_tokens=60, min_new_tokens=60, do_sample=False, use_cache=use_cache)
    model.generate(pixel_values=pixels, **kwargs)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.generate(pixel_values=pixels, **kwargs)
        times.append(time.perf_counter() - start)
    assert out.shape[1] == 61
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        from medvlm.runs import load_trained

        model, processor, _ = load_trained(args.checkpoint)
        size, chans = processor.image_size, processor.image_transform.in_chans
    else:
        (model, size), chans = demo_sized_model(), 1
    model.eval()
    results = {"checkpoint": args.checkpoint, "threads": args.threads, "new_tokens": 60, "repeats": args.repeats}
    with torch.inference_mode():
        for batch in (1, 8):
            pixels = torch.randn(batch, chans, size, size)
            cached = time_generation(model, pixels, True, args.repeats)
            uncached = time_generation(model, pixels, False, args.repeats)
            results[f"images_{batch}"] = {"cached_s": round(cached, 4), "uncached_s": round(uncached, 4),
                                          "speedup": round(uncached / cached, 2)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
