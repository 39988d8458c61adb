"""Decode and resize images once into an Arrow cache (`datasets`), so training never decodes a
3000-pixel JPEG per step.

Cache layout (a folder)::

    cache_info.json          format version, image_size, resize_mode, record count, shard names,
                             skipped counts, fingerprint
    shard-00000/ ...         datasets saved with save_to_disk; one row per record:
                             image  uint8 (S, S) Array2D   the resized pixels
                             image_path  str               the source path ("" for in-memory images)
                             labels  list of float32 | None, and every other record field

`prepare_cache` works in shards of `shard_size` records inside a hidden sibling folder
``.<name>.partial``; each finished shard is written to a temporary folder and renamed, with a
fingerprint of its records and settings. A rerun after an interruption reuses every finished
shard whose fingerprint still matches and rebuilds the rest. The finished cache appears under
`out_dir` by one rename, so a reader never sees a half-written cache.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medvlm.data.images import DEFAULT_MAX_PIXELS, RESIZE_MODES, load_resized
from medvlm.data.records import DataError, SkipLog

logger = logging.getLogger("medvlm.data")

CACHE_INFO = "cache_info.json"
SHARD_INFO = "shard.json"
FORMAT_VERSION = 1
_STRING_FIELDS = ("image_path", "text", "findings", "impression", "study_id", "subject_id", "view",
                  "split", "question", "answer", "answer_type", "qid")


@dataclass
class CacheSummary:
    """What `prepare_cache` did."""

    path: Path
    num_records: int
    image_size: int
    resize_mode: str
    skipped: dict = field(default_factory=dict)
    built_shards: int = 0
    reused_shards: int = 0


# --------------------------------------------------------------------------- helpers


def _decode(task):
    """Worker: (index, image source, size, mode, max_pixels) -> (index, uint8 (S, S) or DataError)."""
    index, source, size, mode, max_pixels = task
    try:
        return index, load_resized(source, size, mode, max_pixels=max_pixels)
    except DataError as err:
        return index, err


def _image_key(image) -> str:
    if isinstance(image, np.ndarray):
        return f"array:{image.dtype}:{image.shape}:{hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()}"
    return f"path:{image}"


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    return str(value)


def _fingerprint(records, settings: dict) -> str:
    h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    for record in records:
        rest = {k: v for k, v in record.items() if k != "image"}
        h.update(_image_key(record["image"]).encode())
        h.update(json.dumps(rest, sort_keys=True, default=_json_default, allow_nan=True).encode())
    return h.hexdigest()


def _features(records, image_size: int):
    """One `datasets.Features` for every shard (types of extra fields inferred from all records)."""
    import datasets
    import pyarrow as pa

    keys = list(dict.fromkeys(k for r in records for k in r))
    features = {"image": datasets.Array2D(shape=(image_size, image_size), dtype="uint8"),
                "image_path": datasets.Value("string")}
    for key in keys:
        if key in ("image", "image_path"):
            continue
        if key == "labels":
            features[key] = datasets.List(datasets.Value("float32"))
        elif key in _STRING_FIELDS:
            features[key] = datasets.Value("string")
        else:
            try:
                arrow_type = pa.array([r.get(key) for r in records]).type
            except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                raise ValueError(f"record field {key!r} has values of mixed types ({err})") from None
            features[key] = datasets.Features.from_arrow_schema(pa.schema([(key, arrow_type)]))[key]
    return datasets.Features(features)


def _columns(records, pixels, features) -> dict:
    columns = {name: [] for name in features}
    for record, image in zip(records, pixels):
        columns["image"].append(image)
        columns["image_path"].append(record["image"] if isinstance(record["image"], str) else
                                     record.get("image_path", ""))
        for name in features:
            if name in ("image", "image_path"):
                continue
            value = record.get(name)
            if name == "labels" and value is not None:
                value = [float(v) for v in value]
            columns[name].append(value)
    return columns


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- prepare


def prepare_cache(
    records,
    out_dir,
    image_size: int,
    resize_mode: str = "pad",
    num_workers: int = 0,
    on_error: str = "raise",
    *,
    shard_size: int = 1000,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    progress: bool = True,
) -> CacheSummary:
    """Decode + resize every record's image once into an Arrow cache at `out_dir`.

    records: common-schema records (`image` a path or an array); all other fields are stored.
    image_size, resize_mode: as `resize_keep_aspect` ("pad" or "crop"); stored in the cache
      metadata, and `load_cache` refuses a mismatch.
    num_workers: decoding processes (0: in this process).
    on_error: "raise" stops at the first image that fails to decode (DataError naming the file;
      finished shards are kept for a rerun); "skip" leaves it out, counts it, and logs a summary.
    shard_size: records per shard, the unit of resumption.
    overwrite: replace an existing cache built with other settings or records (otherwise that is
      a DataError); an existing cache built from the same records and settings is reused as is.
    """
    import datasets
    from tqdm.auto import tqdm

    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    image_size = int(image_size)
    if image_size < 1 or shard_size < 1:
        raise ValueError("image_size and shard_size must be positive")
    records = list(records)
    out = Path(out_dir)
    settings = {"version": FORMAT_VERSION, "image_size": image_size, "resize_mode": resize_mode,
                "shard_size": int(shard_size), "max_pixels": max_pixels}
    shards = [records[i:i + shard_size] for i in range(0, len(records), shard_size)]
    fingerprints = [_fingerprint(shard, settings) for shard in shards]
    total_fingerprint = hashlib.sha1("".join(fingerprints).encode() + str(len(records)).encode()).hexdigest()

    if out.exists():
        info = _read_json(out / CACHE_INFO)
        if info is not None and info.get("fingerprint") == total_fingerprint:
            logger.info("prepare_cache: %s is up to date; reusing it", out)
            return CacheSummary(out, info["num_records"], image_size, resize_mode,
                                info.get("skipped", {}), 0, len(info.get("shards", [])))
        if not overwrite:
            if info is None:
                what = "exists and is not a prepared cache"
            elif (info.get("image_size"), info.get("resize_mode")) != (image_size, resize_mode):
                what = "was built with image_size={image_size}, resize_mode={resize_mode!r}".format(**info)
            else:
                what = ("was built with the same image_size and resize_mode but from other records "
                        "(or another shard_size/max_pixels)")
            raise DataError(f"{out}: {what}; asked for image_size={image_size}, resize_mode="
                            f"{resize_mode!r}. Pass overwrite=True or another out_dir",
                            path=out, reason="cache_mismatch")

    work = out.parent / f".{out.name}.partial"
    job = _read_json(work / "job.json")
    if job is not None and job != settings:
        shutil.rmtree(work)  # a partial build with other settings: nothing to reuse
    work.mkdir(parents=True, exist_ok=True)
    _write_json(work / "job.json", settings)

    features = _features(records, image_size) if records else None
    log = SkipLog(on_error, source=f"prepare_cache({out})")
    summary = CacheSummary(out, 0, image_size, resize_mode)
    names = []
    pool = None
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one bar (ours) per prepare, not one per shard save
    bar = tqdm(total=len(records), desc=f"prepare {out.name}", unit="img", disable=not progress)
    try:
        for k, (shard, fingerprint) in enumerate(zip(shards, fingerprints)):
            name = f"shard-{k:05d}"
            names.append(name)
            shard_dir = work / name
            shard_info = _read_json(shard_dir / SHARD_INFO)
            if shard_info is not None and shard_info.get("fingerprint") == fingerprint:
                summary.reused_shards += 1
                for reason, n in shard_info.get("skipped", {}).items():
                    log.skipped[reason] += n
                summary.num_records += shard_info["count"]
                bar.update(len(shard))
                continue
            if pool is None and num_workers > 0:
                pool = multiprocessing.get_context().Pool(num_workers)
            shard_log = SkipLog(on_error, source=log.source)
            tasks = [(i, r["image"], image_size, resize_mode, max_pixels) for i, r in enumerate(shard)]
            results = pool.imap(_decode, tasks, chunksize=4) if pool else map(_decode, tasks)
            kept, pixels = [], []
            for i, result in results:
                bar.update(1)
                if isinstance(result, DataError):
                    shard_log.skip(result)  # raises under on_error="raise"
                    continue
                kept.append(shard[i])
                pixels.append(result)
            ds = datasets.Dataset.from_dict(_columns(kept, pixels, features), features=features)
            tmp = work / f"{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(shard_dir, ignore_errors=True)
            ds.save_to_disk(str(tmp))
            _write_json(tmp / SHARD_INFO, {"fingerprint": fingerprint, "count": len(kept),
                                           "skipped": dict(shard_log.skipped)})
            os.replace(tmp, shard_dir)
            log.merge(shard_log)
            summary.num_records += len(kept)
            summary.built_shards += 1
    finally:
        bar.close()
        if bars_were_on:
            datasets.enable_progress_bars()
        if pool is not None:
            pool.terminate()
            pool.join()

    summary.skipped = dict(log.skipped)
    _write_json(work / CACHE_INFO, {
        "version": FORMAT_VERSION, "image_size": image_size, "resize_mode": resize_mode,
        "num_records": summary.num_records, "shards": names, "skipped": summary.skipped,
        "fingerprint": total_fingerprint,
    })
    (work / "job.json").unlink()
    if out.exists():  # overwrite=True: move the old cache aside, swap, then delete it
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out)
    log.finish([])  # logs the skip summary, if any
    logger.info("prepare_cache: %s: %d records (%d shards built, %d reused)", out,
                summary.num_records, summary.built_shards, summary.reused_shards)
    return summary


# --------------------------------------------------------------------------- load


class CachedRecords:
    """The records of a prepared cache: ``len()``, ``[i]`` -> record dict whose "image" is a uint8
    (S, S) np.ndarray (a copy out of the memory-mapped Arrow data) and "labels" a list of floats
    or None.

    Reads straight from the memory-mapped Arrow record batches (pixels through a zero-copy numpy
    view), without per-row `datasets` formatting, which makes a lookup cost microseconds; nothing
    is loaded into RAM up front, and it is safe to use in forked DataLoader workers.
    `dataset` is the underlying `datasets.Dataset`; `info` the cache metadata.
    """

    def __init__(self, dataset, info: dict):
        self.dataset = dataset
        self.info = info
        self.image_size = int(info["image_size"])
        self.resize_mode = info["resize_mode"]
        self._starts, self._batches = [], []
        start = 0
        for batch in dataset.data.table.to_batches():
            if batch.num_rows == 0:
                continue
            pixels = _pixels(batch.column(batch.schema.get_field_index("image")), self.image_size)
            columns = {name: batch.column(k) for k, name in enumerate(batch.schema.names) if name != "image"}
            self._starts.append(start)
            self._batches.append((pixels, columns))
            start += batch.num_rows
        self._length = start

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):  # e.g. the first N records for evaluation
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for a cache of {self._length} records")
        k = bisect.bisect_right(self._starts, index) - 1
        pixels, columns = self._batches[k]
        row = index - self._starts[k]
        record = {"image": pixels[row].copy()}
        for name, column in columns.items():
            value = column[row].as_py()
            if name == "labels" and value is not None:
                value = [float(v) for v in value]
            record[name] = value
        return record

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def _pixels(column, size: int) -> np.ndarray:
    """An Array2D column (nested lists of uint8) -> a zero-copy (N, S, S) numpy view."""
    storage = column.storage if hasattr(column, "storage") else column  # extension -> storage
    values = storage.flatten().flatten()  # flatten() honours the slice offset
    return values.to_numpy(zero_copy_only=True).reshape(len(storage), size, size)


def load_cache(out_dir, *, image_size: int | None = None, resize_mode: str | None = None) -> CachedRecords:
    """Open a cache written by `prepare_cache`.

    With `image_size` / `resize_mode` given, a cache built with other values is refused (a
    DataError saying what it holds and what was asked for), rather than silently training on
    images of the wrong size or framing.
    """
    import datasets

    out = Path(out_dir)
    info = _read_json(out / CACHE_INFO)
    if info is None:
        partial = out.parent / f".{out.name}.partial"
        hint = (" (an unfinished build is in " f"{partial}; rerun prepare_cache to finish it)"
                if partial.exists() else "")
        raise DataError(f"{out}: not a prepared cache: no {CACHE_INFO}{hint}", path=out,
                        reason="missing_file")
    if info.get("version") != FORMAT_VERSION:
        raise DataError(f"{out}: cache format version {info.get('version')}, this medvlm reads "
                        f"{FORMAT_VERSION}; prepare it again", path=out, reason="cache_mismatch")
    asked = {"image_size": image_size, "resize_mode": resize_mode}
    wrong = {k: v for k, v in asked.items() if v is not None and info[k] != v}
    if wrong:
        raise DataError(
            f"{out}: cache holds image_size={info['image_size']}, resize_mode={info['resize_mode']!r} "
            f"but {', '.join(f'{k}={v!r}' for k, v in wrong.items())} was asked for; prepare a cache "
            "with these settings (another out_dir) or change the config", path=out,
            reason="cache_mismatch")
    parts = [datasets.load_from_disk(str(out / name)) for name in info["shards"]]
    dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0] if parts else \
        datasets.Dataset.from_dict({})
    return CachedRecords(dataset, info)
