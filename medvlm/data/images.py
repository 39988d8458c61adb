"""Image decoding (PNG 8/16-bit, JPEG, DICOM, in-memory arrays) and the training transform.

`load_image` turns any supported source into one float32 (H, W) array in [0, 1]; every failure
is a `DataError` that names the file. `resize_keep_aspect` makes the fixed-size uint8 square the
prepared cache stores, and `ImageTransform` makes the normalised tensor a model takes.

For the training-time case (a file that was fine when the records were loaded but is gone or
broken when a batch is built), call `load_image` in the Dataset's ``__getitem__`` and catch
`DataError` there: it is the only exception `load_image` raises for bad input, so the Dataset can
decide whether to re-raise, substitute another index, or count the failure.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from medvlm.data.records import DataError
from medvlm.errors import UserError

# A chest radiograph is at most ~4300 x 3500 (15 MP); 50 MP leaves room for large detectors
# and still stops a decompression bomb long before it is decoded.
DEFAULT_MAX_PIXELS = 50_000_000

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
RESIZE_MODES = ("pad", "crop")


# --------------------------------------------------------------------------- decoding


def load_image(source, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft_size: int | None = None):
    """Decode `source` into a float32 (H, W) array in [0, 1].

    `source`: a path (PNG, JPEG or DICOM, told apart by content, not only by suffix), encoded
    bytes, a PIL image, or an np.ndarray (H, W) / (H, W, 1|3|4) of uint8 (/255), uint16
    (/65535), bool, or float already in [0, 1].

    Colour (RGB, RGBA, palette, ...) becomes grayscale (ITU-R 601 luma; alpha is ignored).
    DICOM: modality LUT (rescale) first, then the VOI LUT or window (pydicom's
    `apply_modality_lut` / `apply_voi_lut`), scaled by the output range those define (by the
    image's own min/max when the file has neither); MONOCHROME1 is inverted so bone is bright.

    `max_pixels`: an image with more pixels is refused before its pixels are decoded (a
    `DataError`; None disables the check). PIL's `Image.open` itself refuses images over twice
    `PIL.Image.MAX_IMAGE_PIXELS` (~179 MP); that also becomes a DataError, and PIL's warning
    below that is silenced (our limit applies instead; no global setting is changed).

    `draft_size`: optional hint that the caller will shrink the image to about this many pixels
    on the short side; a JPEG is then decoded at a reduced DCT scale (1/2, 1/4 or 1/8) that
    keeps at least twice that. The result is smaller than the file's size: use `load_resized`
    when the geometry must match a full-size decode exactly.

    Raises DataError for a missing, empty, truncated, corrupt, oversized or multi-frame file,
    or a DICOM without pixel data.
    """
    return _decode(source, max_pixels, draft_size)[0]


def load_resized(source, size: int, mode: str = "pad", *, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Decode and keep-aspect resize in one step -> uint8 (size, size).

    The same as ``resize_keep_aspect(load_image(source), size, mode)`` with the same geometry
    (the scaled size and padding come from the full-size dimensions), but a large JPEG is
    decoded at a reduced DCT scale (still at least twice `size`), about twice as fast for a
    2048 x 2500 radiograph at 128 px; pixel values agree within about one grey level on
    average (up to a few tens at sharp edges such as burned-in text). `prepare_cache` uses it.
    """
    image, full_shape = _decode(source, max_pixels, size)
    return resize_keep_aspect(image, size, mode, full_shape=full_shape)


def _decode(source, max_pixels, draft_size) -> tuple[np.ndarray, tuple[int, int]]:
    """-> (float32 (H, W) image, (H, W) of the full-size image; larger when JPEG draft was used)."""
    if isinstance(source, np.ndarray):
        return _whole(_from_array(source, name="<array>", max_pixels=max_pixels))
    if isinstance(source, Image.Image):
        return _from_pil(source, name="<PIL image>", max_pixels=max_pixels, draft_size=None)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise DataError("<bytes>: image data is empty (0 bytes)", reason="empty_file")
        if data[128:132] == b"DICM":
            return _whole(_load_dicom(io.BytesIO(data), "<bytes>", max_pixels))
        return _load_pil(io.BytesIO(data), "<bytes>", max_pixels, draft_size)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_image: unsupported source type {type(source).__name__}")

    path = Path(source)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found", path=path, reason="missing_file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read image file ({err})", path=path, reason="unreadable_file") from None
    if not path.is_file():
        raise DataError(f"{path}: expected an image file, found a directory", path=path, reason="missing_file")
    if size == 0:
        raise DataError(f"{path}: image file is empty (0 bytes)", path=path, reason="empty_file")
    if _is_dicom(path):
        return _whole(_load_dicom(path, str(path), max_pixels))
    return _load_pil(path, str(path), max_pixels, draft_size)


def _whole(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    return image, image.shape


def check_image_file(path, *, decode: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Loader-time check of an image path: it exists and is not empty (one stat call).

    With ``decode=True`` the image is also fully decoded by `load_image` (slow, but finds
    truncated and corrupt files before training). Raises DataError.
    """
    path = Path(path)
    if decode:
        load_image(path, max_pixels=max_pixels)
        return
    try:
        size = path.stat().st_size
    except OSError:
        raise DataError(f"{path}: image file not found", path=path, reason="missing_file") from None
    if size == 0:
        raise DataError(f"{path}: image file is empty (0 bytes)", path=path, reason="empty_file")


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def _check_pixels(name: str, width: int, height: int, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise DataError(f"{name}: image has no pixels ({width}x{height})", path=name, reason="corrupt_image")
    if max_pixels is not None and width * height > max_pixels:
        raise DataError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (max_pixels); refusing to decode it",
            path=name, reason="too_many_pixels",
        )


def _load_pil(fp, name: str, max_pixels: int | None, draft_size: int | None):
    try:
        with warnings.catch_warnings():
            # We apply our own limit (max_pixels) before decoding; PIL's global warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                return _from_pil(im, name=name, max_pixels=max_pixels, draft_size=draft_size)
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        # Image.open refuses sizes over twice PIL's own limit (~179 MP) before we see the size.
        raise DataError(f"{name}: image is over the pixel limit, refusing to decode it ({err})",
                        path=name, reason="too_many_pixels") from None
    except UnidentifiedImageError:
        raise DataError(f"{name}: not a readable image (expected PNG, JPEG or DICOM; the file is "
                        "corrupt or of another format)", path=name, reason="corrupt_image") from None
    except Exception as err:  # noqa: BLE001 - PIL plugins raise many types on broken files;
        # load_image promises DataError (and only DataError) for bad input.
        detail = str(err) if isinstance(err, OSError) else f"{type(err).__name__}: {err}"
        raise DataError(f"{name}: image is truncated or corrupt ({detail})", path=name,
                        reason="corrupt_image") from None


def _from_pil(im: Image.Image, *, name: str, max_pixels: int | None, draft_size: int | None):
    """-> (float32 (H, W) in [0, 1], (H, W) at full size)."""
    _check_pixels(name, im.width, im.height, max_pixels)
    if getattr(im, "n_frames", 1) > 1 and im.format not in ("PNG", "JPEG", "MPO"):
        raise DataError(f"{name}: multi-frame image ({im.n_frames} frames); expected a single "
                        "2-D radiograph", path=name, reason="multi_frame")
    full_shape = (im.height, im.width)
    if _exif_orientation(im) in (5, 6, 7, 8):  # transposed: width and height swap
        full_shape = full_shape[::-1]
    return _pil_pixels(im, draft_size), full_shape


def _exif_orientation(im: Image.Image) -> int:
    if im.format not in ("JPEG", "MPO", "TIFF"):
        return 1
    return int(im.getexif().get(0x0112, 1) or 1)


def _pil_pixels(im: Image.Image, draft_size: int | None) -> np.ndarray:
    if im.format == "JPEG" and im.mode in ("L", "RGB", "YCbCr", "CMYK"):
        # Decode straight to grayscale (and at a reduced DCT scale when the caller will shrink it).
        target = im.size
        if draft_size:
            short = min(im.size)
            scale = max(1.0, short / (2 * draft_size))  # keep 2x: the final resize antialiases
            target = (max(1, math.ceil(im.width / scale)), max(1, math.ceil(im.height / scale)))
        if im.mode != "CMYK":
            im.draft("L", target)
    im.load()
    if _exif_orientation(im) != 1:
        im = ImageOps.exif_transpose(im)  # photographed films carry an EXIF orientation
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.float32) / 65535.0
    if mode == "I":  # 32-bit int; 16-bit PNGs open this way in older Pillow
        arr = np.asarray(im, dtype=np.float64)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return (arr / 65535.0).astype(np.float32)
        return _minmax(arr)
    if mode == "F":
        return _minmax(np.asarray(im, dtype=np.float64))
    if mode == "LA":
        im = im.getchannel("L")
    elif mode != "L":
        im = im.convert("L")  # RGB/RGBA/P/PA/CMYK/1 -> luma; alpha ignored
    return np.asarray(im, dtype=np.float32) * (1.0 / 255.0)


def _from_array(arr: np.ndarray, *, name: str, max_pixels: int | None) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        else:
            rgb = arr[..., :3].astype(np.float32)
            arr_gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            arr = arr_gray.astype(arr.dtype) if arr.dtype.kind in "ui" else arr_gray
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-D (H, W) image array, got shape {arr.shape}",
                        reason="bad_array")
    _check_pixels(name, arr.shape[1], arr.shape[0], max_pixels)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * (1.0 / 255.0)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) * (1.0 / 65535.0)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype.kind == "f":
        out = arr.astype(np.float32, copy=False)
        if not np.isfinite(out).all():
            raise DataError(f"{name}: float image contains NaN or inf", reason="bad_array")
        lo, hi = float(out.min()), float(out.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise DataError(f"{name}: float image values span [{lo:.3g}, {hi:.3g}]; expected [0, 1]",
                            reason="bad_array")
        return np.clip(out, 0.0, 1.0)
    raise DataError(f"{name}: unsupported image dtype {arr.dtype}; expected uint8, uint16, bool "
                    "or float in [0, 1]", reason="bad_array")


def _minmax(arr: np.ndarray, lo=None, hi=None) -> np.ndarray:
    lo = float(arr.min()) if lo is None else float(lo)
    hi = float(arr.max()) if hi is None else float(hi)
    if not hi > lo:
        return np.zeros(arr.shape, dtype=np.float32)
    out = (np.asarray(arr, dtype=np.float32) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _load_dicom(fp, name: str, max_pixels: int | None) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(fp)
    except InvalidDicomError as err:
        raise DataError(f"{name}: not a valid DICOM file ({err})", path=name, reason="corrupt_image") from None
    except Exception as err:  # pydicom raises a variety of errors on truncated headers
        raise DataError(f"{name}: DICOM file is truncated or corrupt ({type(err).__name__}: {err})",
                        path=name, reason="corrupt_image") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(f"{name}: DICOM file has no pixel data (no PixelData element); expected an "
                        "image object, not e.g. a structured report", path=name, reason="no_pixel_data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"{name}: multi-frame DICOM ({frames} frames) is not supported; expected a "
                        "single-frame radiograph", path=name, reason="multi_frame")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_pixels(name, cols, rows, max_pixels)
    try:
        arr = ds.pixel_array
    except Exception as err:  # missing decoder plugin, truncated pixel data, bad header values
        raise DataError(f"{name}: cannot decode DICOM pixel data ({type(err).__name__}: {err})",
                        path=name, reason="corrupt_image") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour DICOM (pydicom converts YBR to RGB)
        gray = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return _minmax(gray, 0.0, float(2 ** int(ds.get("BitsStored", 8) or 8) - 1))
    if arr.ndim != 2:
        raise DataError(f"{name}: DICOM pixel array has shape {arr.shape}; expected (rows, columns)",
                        path=name, reason="corrupt_image")

    try:
        out, lo, hi = _apply_luts(arr, ds, apply_modality_lut, apply_voi_lut)
    except Exception as err:  # noqa: BLE001 - malformed LUT / window elements
        raise DataError(f"{name}: cannot apply the DICOM modality/VOI LUT ({type(err).__name__}: {err})",
                        path=name, reason="corrupt_image") from None
    image = _minmax(np.asarray(out, dtype=np.float64), lo, hi)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image.astype(np.float32, copy=False)


def _apply_luts(arr, ds, apply_modality_lut, apply_voi_lut):
    """Modality LUT, then VOI LUT or window -> (values, low, high) of the output range."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on VOI LUT over a float (rescaled) array
        arr = apply_modality_lut(arr, ds)
        voi_seq = ds.get("VOILUTSequence")
        if voi_seq and voi_seq[0].get("LUTDescriptor") is not None and voi_seq[0].get("LUTData") is not None:
            depth = int(voi_seq[0].LUTDescriptor[2])
            out, lo, hi = apply_voi_lut(arr, ds), 0.0, float(2**depth - 1)
        elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            out = apply_voi_lut(arr, ds)
            # The window's output range, found by windowing two far-out values the same way.
            lo, hi = apply_voi_lut(np.array([-1e15, 1e15]), ds)
        else:
            out, lo, hi = arr, None, None
    return out, lo, hi


# --------------------------------------------------------------------------- resizing


def _scaled_size(height: int, width: int, size: int, mode: str) -> tuple[int, int]:
    if mode == "pad":
        scale = size / max(height, width)
    else:
        scale = size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _to_pil(array: np.ndarray) -> Image.Image:
    if array.dtype == np.uint8:
        return Image.fromarray(array, mode="L")
    return Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), mode="F")


def _fit(im: Image.Image, size: int, mode: str, fill: float, full_shape=None) -> Image.Image:
    """Resize `im` keeping its aspect ratio (that of `full_shape` when given), then pad
    (centred) or centre-crop to size x size."""
    if mode not in RESIZE_MODES:
        raise UserError(f"resize_mode must be one of {RESIZE_MODES}, got {mode!r}")
    h, w = _scaled_size(*(full_shape or (im.height, im.width)), size, mode)
    if (h, w) != (im.height, im.width):
        # reducing_gap: box-reduce by an integer factor first, then a proper antialiased resize.
        im = im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if (h, w) == (size, size):
        return im
    if mode == "pad":
        canvas = Image.new(im.mode, (size, size), fill)
        canvas.paste(im, ((size - w) // 2, (size - h) // 2))
        return canvas
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def resize_keep_aspect(array: np.ndarray, size: int, mode: str = "pad", *, full_shape=None) -> np.ndarray:
    """(H, W) float in [0, 1] or uint8 -> uint8 (size, size), aspect ratio kept.

    ``mode="pad"``: the long side becomes `size` and the short side is padded with black,
    centred. ``mode="crop"``: the short side becomes `size` and the long side is centre-cropped.
    `full_shape`: (H, W) of the original when `array` is a reduced decode of it (see
    `load_resized`); the scaled size is computed from it so the geometry does not depend on
    the decode scale.
    """
    if array.ndim != 2:
        raise ValueError(f"resize_keep_aspect expects an (H, W) array, got shape {array.shape}")
    if array.dtype != np.uint8:
        # Quantise first: uint8 resizing in PIL is several times faster than float.
        array = np.clip(np.asarray(array, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(_fit(_to_pil(array), size, mode, 0, full_shape), dtype=np.uint8)


# --------------------------------------------------------------------------- transform


class ImageTransform:
    """(H, W) float in [0, 1] or uint8 -> torch.FloatTensor (in_chans, S, S), normalised.

    Steps: keep-aspect resize to S x S (`resize_mode` "pad" or "crop", see `resize_keep_aspect`);
    with ``augment=True`` a random affine (rotation in +-rotation_deg, isotropic scale drawn from
    `scale`, about the centre, black fill), random brightness (x * (1 + b), b in +-brightness)
    and contrast (around the image mean, factor 1 + c, c in +-contrast), and a horizontal flip
    with probability 0.5 only when ``hflip=True`` (off by default: a flip swaps laterality and
    reports name sides); clamp to [0, 1]; ``(x - mean) / std``; repeat to `in_chans` channels.

    `mean` / `std`: one float for every channel, or a list of `in_chans` floats: channel c is then
    ``(x - mean[c]) / std[c]`` of the one grayscale image, the per-channel normalisation an RGB
    encoder was trained with (its preprocessor's image_mean / image_std).

    Randomness: with ``seed=None`` it draws from torch's global RNG, which a DataLoader seeds
    differently in each worker. With a seed it uses its own generator seeded with
    ``seed + worker_id`` (so workers do not repeat each other), reproducible run to run.
    """

    def __init__(
        self,
        image_size: int,
        resize_mode: str = "pad",
        in_chans: int = 1,
        mean: float | list[float] = 0.5,
        std: float | list[float] = 0.5,
        augment: bool = False,
        hflip: bool = False,
        rotation_deg: float = 5.0,
        scale: tuple[float, float] = (0.95, 1.05),
        brightness: float = 0.1,
        contrast: float = 0.1,
        seed: int | None = None,
    ):
        if resize_mode not in RESIZE_MODES:
            raise UserError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if in_chans not in (1, 3):
            raise UserError(f"in_chans must be 1 or 3, got {in_chans}")
        if int(image_size) < 1:
            raise UserError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.resize_mode = resize_mode
        self.in_chans = int(in_chans)
        self.mean = _channel_values("mean", mean, self.in_chans)
        self.std = _channel_values("std", std, self.in_chans)
        if any(v <= 0 for v in (self.std if isinstance(self.std, list) else [self.std])):
            raise UserError(f"std must be positive, got {std}")
        self.augment = bool(augment)
        self.hflip = bool(hflip)
        self.rotation_deg = float(rotation_deg)
        self.scale = (float(scale[0]), float(scale[1]))
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.seed = seed
        self._generator = None
        self._generator_key = None

    def to_dict(self) -> dict:
        """Constructor arguments, for saving with a processor (``ImageTransform(**d)`` rebuilds it)."""
        keys = ("image_size", "resize_mode", "in_chans", "mean", "std", "augment", "hflip",
                "rotation_deg", "scale", "brightness", "contrast", "seed")
        d = {k: getattr(self, k) for k in keys}
        d["scale"] = list(d["scale"])
        for k in ("mean", "std"):  # a copy: a float stays a float, a per-channel list a list
            if isinstance(d[k], list):
                d[k] = list(d[k])
        return d

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({args})"

    def _rand(self, n: int) -> torch.Tensor:
        """n uniform numbers in [0, 1)."""
        if self.seed is None:
            return torch.rand(n)
        info = torch.utils.data.get_worker_info()
        key = (os.getpid(), None if info is None else info.id)
        if self._generator is None or self._generator_key != key:
            self._generator = torch.Generator().manual_seed(int(self.seed) + (0 if info is None else info.id))
            self._generator_key = key
        return torch.rand(n, generator=self._generator)

    def __call__(self, image) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            image = image.numpy()
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim != 2:
            raise ValueError(f"ImageTransform expects an (H, W) image, got shape {image.shape}")
        if image.dtype != np.uint8:
            image = image.astype(np.float32, copy=False)
        S = self.image_size
        im = _fit(_to_pil(image), S, self.resize_mode, 0)

        if self.augment:
            r = self._rand(5).tolist()
            angle = (2 * r[0] - 1) * self.rotation_deg
            zoom = self.scale[0] + r[1] * (self.scale[1] - self.scale[0])
            if angle != 0.0 or zoom != 1.0:
                im = im.transform((S, S), Image.Transform.AFFINE, _affine_coeffs(angle, zoom, S),
                                  resample=Image.Resampling.BILINEAR, fillcolor=0)
            if self.hflip and r[2] < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

        x = torch.from_numpy(np.array(im, dtype=np.float32))  # (S, S), a writable copy
        if im.mode == "L":
            x = x * (1.0 / 255.0)
        if self.augment:
            b = 1.0 + (2 * r[3] - 1) * self.brightness
            c = 1.0 + (2 * r[4] - 1) * self.contrast
            mu = x.mean()
            x = (x - mu) * c + mu
            x = x * b
        x = x.clamp_(0.0, 1.0)
        if isinstance(self.mean, list) or isinstance(self.std, list):  # per channel
            mean = torch.tensor(self.mean, dtype=torch.float32).expand(self.in_chans)[:, None, None]  # (C, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).expand(self.in_chans)[:, None, None]
            return (x.unsqueeze(0) - mean) / std  # (C, S, S)
        x = (x - self.mean) / self.std
        return x.unsqueeze(0).expand(self.in_chans, S, S).contiguous()  # (C, S, S)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _channel_values(name: str, value, in_chans: int) -> float | list[float]:
    """`mean` / `std` as a float (every channel) or a list of `in_chans` floats."""
    if isinstance(value, (list, tuple)):
        if len(value) != in_chans or not all(_is_number(v) for v in value):
            raise UserError(f"{name} must be a number or a list of in_chans={in_chans} numbers, got {list(value)!r}")
        return [float(v) for v in value]
    if not _is_number(value):
        raise UserError(f"{name} must be a number or a list of in_chans={in_chans} numbers, got {value!r}")
    return float(value)


def _affine_coeffs(angle_deg: float, zoom: float, size: int) -> tuple:
    """Inverse map (output -> input pixel) for a rotation by angle and a zoom about the centre."""
    a = math.radians(angle_deg)
    cos, sin = math.cos(a) / zoom, math.sin(a) / zoom
    c = (size - 1) / 2.0
    # input = R^-1 / zoom (output - c) + c
    return (cos, sin, c - cos * c - sin * c, -sin, cos, c + sin * c - cos * c)
