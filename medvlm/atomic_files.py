"""Files a reader never sees half-written: each is written to a temporary name in its own folder,
flushed to disk and renamed over the target, so a crash leaves the old file or the new one.
Checkpoints, evaluation results and `prepare`'s cache metadata all write through here."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def atomic_write_with(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` (e.g. a figure's savefig), fsync the result and rename it onto `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))
