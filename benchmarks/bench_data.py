"""Data-loading throughput: raw decode + transform versus the prepared Arrow cache.

Writes `--num-images` grayscale JPEGs at a realistic chest X-ray size (2048 x 2500, smooth
anatomy-like shading plus film-grain noise, quality 95) into a temporary folder (or, with
`--source covid`, uses the real images in ../shared/data/covid_cxr_sample), then measures images/s
through a torch DataLoader (batch 16, no shuffling) for each worker count:

  raw_full      load_image(path) (full-size decode) + ImageTransform(S): what a training loop
                on the original files does per step
  raw_draft     load_resized(path, S) (JPEG DCT-scaled decoding + resize) + ImageTransform(S):
                the fastest a per-step decoder gets
  cache         load_cache(...)[i]["image"] (uint8 S x S from memory-mapped Arrow) +
                ImageTransform(S)

plus the one-off prepare_cache time. Each figure is the best of `--repeats` timed passes after
one warm-up pass (worker start-up included in every pass). Prints one JSON object.

    python benchmarks/bench_data.py [--image-size 128] [--num-images 48] [--workers 16]
                                    [--source synthetic|covid] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medvlm.data.images import ImageTransform, load_image, load_resized  # noqa: E402
from medvlm.data.prepare import load_cache, prepare_cache  # noqa: E402
from medvlm.data.records import make_record  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def synthetic_radiograph(rng: np.random.Generator, height=2500, width=2048) -> np.ndarray:
    """A smooth, radiograph-like uint8 image: bright mediastinum and ribs cage, dark lungs, grain."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y /= height
    x /= width
    body = np.exp(-(((x - 0.5) / 0.42) ** 6 + ((y - 0.55) / 0.5) ** 6))
    lungs = sum(np.exp(-(((x - cx) / 0.16) ** 2 + ((y - 0.45) / 0.28) ** 2)) for cx in (0.3, 0.7))
    mediastinum = np.exp(-(((x - 0.5) / 0.07) ** 2)) * (y > 0.15)
    ribs = 0.08 * (np.sin(y * 60 + np.abs(x - 0.5) * 12) > 0.6) * lungs
    img = 0.15 + 0.6 * body - 0.35 * lungs + 0.3 * mediastinum + ribs
    img += rng.normal(0, 0.015, img.shape).astype(np.float32) + 0.05 * rng.random()
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    base = synthetic_radiograph(rng)
    paths = []
    for i in range(n):
        shifted = np.roll(base, (int(rng.integers(-40, 40)), int(rng.integers(-40, 40))), axis=(0, 1))
        noise = rng.normal(0, 3, shifted.shape)
        img = np.clip(shifted.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        path = folder / f"cxr_{i:04d}.jpg"
        Image.fromarray(img).save(path, quality=95)
        paths.append(path)
    return paths


class RawDataset(torch.utils.data.Dataset):
    def __init__(self, paths, transform, draft: bool):
        self.paths, self.transform, self.draft = paths, transform, draft

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        if self.draft:
            return self.transform(load_resized(self.paths[i], self.transform.image_size))
        return self.transform(load_image(self.paths[i]))


class CacheDataset(torch.utils.data.Dataset):
    """The cache repeated `repeat` times, so a pass lasts long enough to time."""

    def __init__(self, cache, transform, repeat: int):
        self.cache, self.transform, self.repeat = cache, transform, repeat

    def __len__(self):
        return len(self.cache) * self.repeat

    def __getitem__(self, i):
        return self.transform(self.cache[i % len(self.cache)]["image"])


def images_per_second(dataset, workers: int, batch_size: int, repeats: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         shuffle=False, persistent_workers=False)
    best = float("inf")
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        n = sum(batch.shape[0] for batch in loader)
        elapsed = time.perf_counter() - start
        if attempt > 0:  # the first pass warms the page cache
            best = min(best, elapsed)
    return n / best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--num-images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="*", default=[],
                        help="extra worker counts beyond 0, 1, 2 (e.g. --workers 16)")
    parser.add_argument("--source", choices=("synthetic", "covid"), default="synthetic")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache-repeat", type=int, default=20,
                        help="passes over the cache per timed epoch (it is fast)")
    args = parser.parse_args(argv)
    worker_counts = sorted({0, 1, 2, *args.workers})

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.source == "covid":
            folder = SHARED / "covid_cxr_sample" / "images"
            if not folder.is_dir():
                raise SystemExit(f"{folder} not found; use --source synthetic")
            paths = sorted(folder.iterdir())[: args.num_images]
        else:
            paths = write_images(tmp, args.num_images)
        shapes = {Image.open(p).size for p in paths}
        records = [make_record(image=str(p), text="", study_id=str(i), split="train") for i, p in enumerate(paths)]

        start = time.perf_counter()
        prepare_cache(records, tmp / "cache", args.image_size, num_workers=2, progress=False)
        prepare_s = time.perf_counter() - start
        cache = load_cache(tmp / "cache", image_size=args.image_size)

        transform = ImageTransform(args.image_size)
        results = {}
        for workers in worker_counts:
            raw_full = images_per_second(RawDataset(paths, transform, False), workers, args.batch_size, args.repeats)
            raw_draft = images_per_second(RawDataset(paths, transform, True), workers,
                                          args.batch_size, args.repeats)
            cached = images_per_second(CacheDataset(cache, transform, args.cache_repeat), workers,
                                       args.batch_size, args.repeats)
            results[str(workers)] = {
                "raw_full_images_per_s": round(raw_full, 1),
                "raw_draft_images_per_s": round(raw_draft, 1),
                "cache_images_per_s": round(cached, 1),
                "speedup_vs_raw_full": round(cached / raw_full, 1),
                "speedup_vs_raw_draft": round(cached / raw_draft, 1),
            }
    speedups = [r["speedup_vs_raw_full"] for r in results.values()]
    report = {
        "benchmark": "bench_data",
        "source": args.source,
        "num_images": len(paths),
        "image_sizes_wxh": sorted(shapes)[:3] if args.source == "covid" else sorted(shapes),
        "format": "JPEG q95 grayscale" if args.source == "synthetic" else "mixed PNG/JPEG",
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "prepare_cache_images_per_s_2_workers": round(len(paths) / prepare_s, 1),
        "workers": results,
        "min_speedup_vs_raw_full": min(speedups),
        "target_cache_5x_faster_met": min(speedups) >= 5.0,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
