"""Uploaded files -> (H, W) float32 images, within the limits a server sets.

Everything a client can get wrong is an `UploadError` carrying the HTTP status it deserves
(400 unreadable, 413 too large): the API answers it as JSON, the page shows it, nothing is a 500.
Messages name the upload by the file name the client sent, never by anything read from inside
the file (a DICOM header holds the patient's name, ids and dates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.images import DEFAULT_MAX_PIXELS, load_image
from ..data.records import DataError
from ..errors import UserError


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_upload_bytes: int = 32 * 2**20   # one file; a 16-bit 4k x 4k DICOM is ~32 MiB
    max_pixels: int = DEFAULT_MAX_PIXELS  # the image reader's own decompression-bomb limit
    max_files: int = 8                   # views + prior images of one study
    timeout_s: float = 120.0             # one request, queueing included
    max_queue: int = 4                   # requests waiting behind the one running; more are told "busy"


class UploadError(UserError):
    """An upload the server will not read: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, reason: str = "bad_upload"):
        super().__init__(message)
        self.status, self.reason = status, reason


def read_upload(data: bytes, name: str, limits: Limits) -> np.ndarray:
    """Decode one uploaded PNG, JPEG or DICOM (told apart by content) -> float32 (H, W) in [0, 1]."""
    name = name or "upload"
    if not data:
        raise UploadError(f"{name}: the file is empty (0 bytes); expected a PNG, JPEG or DICOM image",
                          reason="empty_file")
    if len(data) > limits.max_upload_bytes:
        raise UploadError(f"{name}: {len(data)} bytes is more than the {limits.max_upload_bytes} a file may have",
                          status=413, reason="too_large")
    try:
        return load_image(data, max_pixels=limits.max_pixels)
    except DataError as error:
        # the reader names the source "<bytes>"; say the client's name for it instead
        message = str(error).replace("<bytes>", name)
        status = 413 if error.reason == "too_many_pixels" else 400
        raise UploadError(message, status=status, reason=error.reason) from None
