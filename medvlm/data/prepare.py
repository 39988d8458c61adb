"""Decode and resize images once into an Arrow cache (`datasets`), so training never decodes a
3000-pixel JPEG per step.

Cache layout (a folder)::

    cache_info.json          format version, image_size, resize_mode, record count, shard names,
                             skipped counts by reason (while loading + while decoding) and their
                             total, each image that failed to decode, fingerprint
    shard-00000/ ...         datasets saved with save_to_disk; one row per record:
                             image  uint8 (S, S) Array2D   the resized pixels of the first image
                             image_path  str               its source path ("" for in-memory images)
                             image_views, image_paths  list of str   every image of the study
                             other_pixels  list of binary  images 2.. of the study, S*S bytes each
                             prior_info  str | None        the prior study without pixels (JSON:
                                                           study_id, text, findings, impression,
                                                           views, image_paths, any other field)
                             prior_pixels  list of binary  the prior's images, S*S bytes each
                             labels  list of float32 | None, and every other record field

A record read back has its ``images`` and ``prior`` as the loader gave them, pixels in place of
paths (a cache written before studies had several images reads as one image and no prior).

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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic_files import atomic_write_text
from medvlm.data.images import DEFAULT_MAX_PIXELS, RESIZE_MODES, load_resized
from medvlm.data.records import DataError, SkipLog, make_image, study_images
from medvlm.errors import UserError

logger = logging.getLogger("medvlm.data")

CACHE_INFO = "cache_info.json"
SHARD_INFO = "shard.json"
FORMAT_VERSION = 1
_STRING_FIELDS = ("image_path", "text", "findings", "impression", "study_id", "subject_id", "view",
                  "split", "question", "answer", "answer_type", "qid")
# the study's images and its prior are stored in these columns, and rebuilt from them on reading
_STUDY_COLUMNS = ("image_views", "image_paths", "other_pixels", "prior_info", "prior_pixels")
_STUDY_FIELDS = ("images", "prior")


@dataclass
class CacheSummary:
    """What `prepare_cache` did. `num_records` records are in the cache; `skipped` counts by
    reason every record left out (by the loader, `skipped_while_loading`, and images that failed
    to decode, each one in `failed` as {"item", "reason", "message"})."""

    path: Path
    num_records: int
    image_size: int
    resize_mode: str
    skipped: dict = field(default_factory=dict)
    built_shards: int = 0
    reused_shards: int = 0
    failed: list = field(default_factory=list)
    skipped_while_loading: dict = field(default_factory=dict)

    def line(self) -> str:
        """'13 cached, 2 skipped (missing_file: 1, unreadable_file: 1)'."""
        total = sum(self.skipped.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        return f"{self.num_records} cached, {total} skipped" + (f" ({reasons})" if total else "")


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


def _sources(record: dict) -> list:
    """Every image a record's cache row holds: the study's (the first is `image`), then its prior's."""
    prior = record.get("prior")
    return [i["image"] for i in study_images(record)] + ([i["image"] for i in prior["images"]] if prior else [])


def _fingerprint(records, settings: dict) -> str:
    h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    for record in records:
        rest = {k: v for k, v in record.items() if k not in ("image", *_STUDY_FIELDS)}
        rest["views"] = [i["view"] for i in study_images(record)]
        rest["prior"] = _prior_info(record.get("prior"))
        h.update("|".join(_image_key(image) for image in _sources(record)).encode())
        h.update(json.dumps(rest, sort_keys=True, default=_json_default, allow_nan=True).encode())
    return h.hexdigest()


def _prior_info(prior: dict | None) -> str | None:
    """The prior study as JSON text without its pixels (views and paths of its images kept)."""
    if prior is None:
        return None
    info = {k: v for k, v in prior.items() if k != "images"}
    info["views"] = [i["view"] for i in prior["images"]]
    info["image_paths"] = [i["image"] if isinstance(i["image"], str) else "" for i in prior["images"]]
    return json.dumps(info, sort_keys=True, default=_json_default)


def _features(records, image_size: int):
    """One `datasets.Features` for every shard (types of extra fields inferred from all records)."""
    import datasets
    import pyarrow as pa

    keys = list(dict.fromkeys(k for r in records for k in r))
    features = {"image": datasets.Array2D(shape=(image_size, image_size), dtype="uint8"),
                "image_path": datasets.Value("string"),
                "image_views": datasets.List(datasets.Value("string")),
                "image_paths": datasets.List(datasets.Value("string")),
                "other_pixels": datasets.List(datasets.Value("binary")),
                "prior_info": datasets.Value("string"),
                "prior_pixels": datasets.List(datasets.Value("binary"))}
    for key in keys:
        if key in features or key in _STUDY_FIELDS:
            continue
        if key == "labels":
            features[key] = datasets.List(datasets.Value("float32"))
        elif key in _STRING_FIELDS:
            features[key] = datasets.Value("string")
        else:
            try:
                arrow_type = pa.array([r.get(key) for r in records]).type
            except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                raise UserError(f"record field {key!r} has values of mixed types ({err})") from None
            features[key] = datasets.Features.from_arrow_schema(pa.schema([(key, arrow_type)]))[key]
    return datasets.Features(features)


def _columns(records, pixels, features) -> dict:
    """The shard's columns; `pixels[k]`: the decoded images of record k, its study's then its prior's."""
    columns = {name: [] for name in features}
    for record, images in zip(records, pixels):
        study, prior = study_images(record), record.get("prior")
        columns["image"].append(images[0])
        columns["image_path"].append(record["image"] if isinstance(record["image"], str) else
                                     record.get("image_path", ""))
        columns["image_views"].append([i["view"] for i in study])
        columns["image_paths"].append([i["image"] if isinstance(i["image"], str) else "" for i in study])
        columns["other_pixels"].append([p.tobytes() for p in images[1:len(study)]])
        columns["prior_info"].append(_prior_info(prior))
        columns["prior_pixels"].append([p.tobytes() for p in images[len(study):]])
        for name in features:
            if name in ("image", "image_path", *_STUDY_COLUMNS):
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
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


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
      finished shards are kept for a rerun); "skip" leaves it out, counts it by reason, keeps
      its name and message (`CacheSummary.failed`, cache_info.json) and logs a summary. The
      records a loader already left out (a `RecordList`'s `skipped`) are counted in as well.
    shard_size: records per shard, the unit of resumption.
    overwrite: replace an existing cache built with other settings or records (otherwise that is
      a DataError); an existing cache built from the same records and settings is reused as is.
    """
    settings = _job_settings(image_size, resize_mode, shard_size, max_pixels)
    while_loading = {str(k): int(n) for k, n in sorted(dict(getattr(records, "skipped", None) or {}).items()) if n}
    records = list(records)
    out = Path(out_dir)
    size = settings["shard_size"]
    shards = [records[i:i + size] for i in range(0, len(records), size)]
    fingerprints = [_fingerprint(shard, settings) for shard in shards]
    total_fingerprint = hashlib.sha1("".join(fingerprints).encode() + str(len(records)).encode()).hexdigest()
    if out.exists():
        summary = _reuse_existing(out, total_fingerprint, settings, overwrite)
        if summary is not None:
            return summary

    work = _open_work_dir(out, settings)
    log = SkipLog(on_error, source=f"prepare_cache({out})")
    summary = CacheSummary(out, 0, settings["image_size"], resize_mode, skipped_while_loading=while_loading)
    features = _features(records, settings["image_size"]) if records else None
    names = _build_shards(work, shards, fingerprints, settings, features, log, summary, num_workers, progress)
    summary.skipped = dict(sorted((Counter(log.skipped) + Counter(while_loading)).items()))
    _write_json(work / CACHE_INFO, {
        "version": FORMAT_VERSION, "image_size": summary.image_size, "resize_mode": resize_mode,
        "num_records": summary.num_records, "shards": names, "skipped": summary.skipped,
        "skipped_total": sum(summary.skipped.values()), "skipped_while_loading": while_loading,
        "failed": summary.failed, "fingerprint": total_fingerprint,
    })
    (work / "job.json").unlink()
    _move_into_place(work, out)
    level = logging.WARNING if summary.skipped else logging.INFO
    logger.log(level, "prepare_cache: %s: %s (%d shards built, %d reused)", out, summary.line(),
               summary.built_shards, summary.reused_shards)
    return summary


def _job_settings(image_size, resize_mode: str, shard_size, max_pixels) -> dict:
    """The settings a cache (and each of its shards) is fingerprinted with; bad values are a UserError."""
    if resize_mode not in RESIZE_MODES:
        raise UserError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    image_size = int(image_size)
    if image_size < 1 or shard_size < 1:
        raise UserError(f"image_size and shard_size must be positive, got image_size={image_size}, "
                        f"shard_size={shard_size}")
    return {"version": FORMAT_VERSION, "image_size": image_size, "resize_mode": resize_mode,
            "shard_size": int(shard_size), "max_pixels": max_pixels}


def _reuse_existing(out: Path, fingerprint: str, settings: dict, overwrite: bool) -> CacheSummary | None:
    """The summary of the cache at `out` when it was built from the same records and settings;
    None when it may be replaced (overwrite=True); otherwise a DataError saying how it differs."""
    image_size, resize_mode = settings["image_size"], settings["resize_mode"]
    info = _read_json(out / CACHE_INFO)
    if info is not None and info.get("fingerprint") == fingerprint:
        logger.info("prepare_cache: %s is up to date; reusing it", out)
        return CacheSummary(out, info["num_records"], image_size, resize_mode, info.get("skipped", {}), 0,
                            len(info.get("shards", [])), info.get("failed", []), info.get("skipped_while_loading", {}))
    if overwrite:
        return None
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


def _open_work_dir(out: Path, settings: dict) -> Path:
    """The hidden sibling folder the cache is built in; a partial build with the same settings is kept."""
    work = out.parent / f".{out.name}.partial"
    job = _read_json(work / "job.json")
    if job is not None and job != settings:
        shutil.rmtree(work)  # a partial build with other settings: nothing to reuse
    work.mkdir(parents=True, exist_ok=True)
    _write_json(work / "job.json", settings)
    return work


def _build_shards(work: Path, shards, fingerprints, settings: dict, features, log: SkipLog,
                  summary: CacheSummary, num_workers: int, progress: bool) -> list[str]:
    """Reuse or build every shard under `work`, counting into `log` and `summary`; the shard names."""
    import datasets
    from tqdm.auto import tqdm

    names = []
    pool = None
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one bar (ours) per prepare, not one per shard save
    bar = tqdm(total=sum(map(len, shards)), desc=f"prepare {summary.path.name}", unit="img", disable=not progress)
    try:
        for k, (shard, fingerprint) in enumerate(zip(shards, fingerprints)):
            name = f"shard-{k:05d}"
            names.append(name)
            if _reuse_shard(work / name, fingerprint, log, summary):
                bar.update(len(shard))
                continue
            if pool is None and num_workers > 0:
                pool = multiprocessing.get_context().Pool(num_workers)
            shard_log = SkipLog(log.on_error, source=log.source)
            kept, pixels, failed = _decode_shard(shard, settings, pool, shard_log, bar)
            _save_shard(work, name, datasets.Dataset.from_dict(_columns(kept, pixels, features), features=features),
                        {"fingerprint": fingerprint, "count": len(kept), "skipped": dict(shard_log.skipped),
                         "failed": failed})
            log.merge(shard_log)
            summary.failed.extend(failed)
            summary.num_records += len(kept)
            summary.built_shards += 1
    finally:
        bar.close()
        if bars_were_on:
            datasets.enable_progress_bars()
        if pool is not None:
            pool.terminate()
            pool.join()
    return names


def _reuse_shard(shard_dir: Path, fingerprint: str, log: SkipLog, summary: CacheSummary) -> bool:
    """Count a finished shard of an interrupted build with the same fingerprint; False if there is none."""
    shard_info = _read_json(shard_dir / SHARD_INFO)
    if shard_info is None or shard_info.get("fingerprint") != fingerprint:
        return False
    summary.reused_shards += 1
    for reason, n in shard_info.get("skipped", {}).items():
        log.skipped[reason] += n
    summary.failed.extend(shard_info.get("failed", []))
    summary.num_records += shard_info["count"]
    return True


def _decode_shard(shard, settings: dict, pool, shard_log: SkipLog, bar) -> tuple[list, list, list]:
    """(records kept, the uint8 pixels of each: its study's images then its prior's, the failed
    images as {"item", "reason", "message"}). An image that fails is skipped into `shard_log` (or
    raises) and left out of its study or prior; a record whose study has no image left goes, a
    prior with none left becomes None."""
    sources = [_sources(r) for r in shard]
    tasks = [((i, k), source, settings["image_size"], settings["resize_mode"], settings["max_pixels"])
             for i, record_sources in enumerate(sources) for k, source in enumerate(record_sources)]
    results = pool.imap(_decode, tasks, chunksize=4) if pool else map(_decode, tasks)
    decoded: list[dict] = [{} for _ in shard]
    failed = []
    for (i, k), result in results:
        if k == 0:
            bar.update(1)
        if isinstance(result, DataError):
            shard_log.skip(result)  # raises under on_error="raise"
            name = sources[i][k] if isinstance(sources[i][k], str) else f"study {shard[i].get('study_id')}"
            failed.append({"item": name, "reason": result.reason, "message": str(result)})
            continue
        decoded[i][k] = result
    kept, pixels = [], []
    for record, done in zip(shard, decoded):
        record, images = _without_failed(record, done)
        if record is not None:
            kept.append(record)
            pixels.append(images)
    return kept, pixels, failed


def _without_failed(record: dict, done: dict) -> tuple[dict | None, list]:
    """The record without the images that failed to decode (`done`: source index -> pixels) and
    its pixels in `_sources` order; (None, []) when none of its study's images is left."""
    study, prior = study_images(record), record.get("prior")
    n = len(study)
    if len(done) == len(_sources(record)):
        return record, [done[k] for k in range(len(done))]
    kept = [image for k, image in enumerate(study) if k in done]
    if not kept:
        return None, []
    pixels = [done[k] for k in range(n) if k in done]
    if prior is not None:
        prior_kept = [image for k, image in enumerate(prior["images"]) if n + k in done]
        pixels += [done[n + k] for k in range(len(prior["images"])) if n + k in done]
        prior = {**prior, "images": prior_kept} if prior_kept else None
    return {**record, "images": kept, "prior": prior, "image": kept[0]["image"], "view": kept[0]["view"]}, pixels


def _save_shard(work: Path, name: str, dataset, shard_info: dict) -> None:
    """Save a shard to a temporary folder with its SHARD_INFO, then rename it into place."""
    tmp = work / f"{name}.tmp"
    shard_dir = work / name
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(shard_dir, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    _write_json(tmp / SHARD_INFO, shard_info)
    os.replace(tmp, shard_dir)


def _move_into_place(work: Path, out: Path) -> None:
    """Rename the finished build to `out` (an old cache there, overwrite=True, is moved aside first)."""
    if out.exists():
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out)


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
        return _study_from_columns(record, self.image_size)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def _study_from_columns(record: dict, size: int) -> dict:
    """A cache row -> the record with its ``images`` and ``prior`` rebuilt (pixels in place of
    paths, which stay in ``image_paths`` of the record and of the prior); a row of a cache
    without study columns is a one-image study with no prior."""
    def unpack(data: bytes) -> np.ndarray:
        return np.frombuffer(data, np.uint8).reshape(size, size).copy()

    if "image_views" not in record:
        record.setdefault("images", [make_image(record["image"], record.get("view", ""))])
        record.setdefault("prior", None)
        return record
    views, others = record.pop("image_views"), record.pop("other_pixels")
    record["images"] = [make_image(pixels, view) for pixels, view in
                        zip([record["image"]] + [unpack(p) for p in others], views)]
    info, prior_pixels = record.pop("prior_info"), record.pop("prior_pixels")
    record["prior"] = None
    if info is not None:
        info = json.loads(info)
        views = info.pop("views")
        record["prior"] = {**info, "images": [make_image(unpack(p), v) for p, v in zip(prior_pixels, views)]}
    return record


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
