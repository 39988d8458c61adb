"""Image decoding (PNG 8/16-bit, JPEG, DICOM, arrays), keep-aspect resizing and the transform."""

import numpy as np
import pytest
import torch
from PIL import Image

from medvlm.data.images import ImageTransform, load_image, load_resized, resize_keep_aspect
from medvlm.data.records import DataError
from tiny import write_dicom


def ramp(h=20, w=30, dtype=np.uint8, top=255):
    return (np.linspace(0, 1, h * w).reshape(h, w) * top).round().astype(dtype)


# --------------------------------------------------------------------------- files


def test_png_8bit_gray(tmp_path):
    a = ramp()
    Image.fromarray(a).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == (20, 30)
    np.testing.assert_allclose(out, a / 255.0, atol=1e-6)


def test_png_16bit_uses_full_range(tmp_path):
    a = ramp(dtype=np.uint16, top=65535)
    Image.fromarray(a).save(tmp_path / "a16.png")
    assert Image.open(tmp_path / "a16.png").mode.startswith("I")
    out = load_image(tmp_path / "a16.png")
    np.testing.assert_allclose(out, a / 65535.0, atol=1e-6)
    assert out.max() == pytest.approx(1.0)


def test_jpeg_gray_and_rgb(tmp_path):
    a = ramp(64, 80)
    Image.fromarray(a).save(tmp_path / "g.jpg", quality=95)
    Image.fromarray(np.stack([a] * 3, -1)).save(tmp_path / "c.jpeg", quality=95)
    for name in ("g.jpg", "c.jpeg"):
        out = load_image(tmp_path / name)
        assert out.shape == (64, 80) and out.dtype == np.float32
        assert np.abs(out - a / 255.0).mean() < 0.02


def test_jpeg_draft_decodes_smaller(tmp_path):
    a = ramp(800, 1000)
    Image.fromarray(a).save(tmp_path / "big.jpg")
    assert load_image(tmp_path / "big.jpg").shape == (800, 1000)
    small = load_image(tmp_path / "big.jpg", draft_size=128)
    assert 128 <= min(small.shape) < 800


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_load_resized_matches_full_decode_geometry(tmp_path, mode):
    rng = np.random.default_rng(0)
    a = (np.add.outer(np.linspace(0, 200, 655), np.linspace(0, 50, 533)) + rng.normal(0, 3, (655, 533)))
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(tmp_path / "odd.jpg", quality=95)
    full = resize_keep_aspect(load_image(tmp_path / "odd.jpg"), 64, mode)
    fast = load_resized(tmp_path / "odd.jpg", 64, mode)
    assert fast.shape == full.shape == (64, 64) and fast.dtype == np.uint8
    assert ((fast == 0) == (full == 0)).mean() > 0.99  # same padding
    assert np.abs(fast.astype(float) - full).mean() < 2.0


def test_rgba_and_palette_become_gray(tmp_path):
    a = ramp()
    rgba = np.stack([a, a, a, np.full_like(a, 255)], -1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(a).convert("P").save(tmp_path / "p.png")
    np.testing.assert_allclose(load_image(tmp_path / "rgba.png"), a / 255.0, atol=1 / 255)
    assert load_image(tmp_path / "p.png").shape == (20, 30)
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")
    assert load_image(tmp_path / "red.png")[0, 0] == pytest.approx(76 / 255, abs=1 / 255)  # ITU-R 601 luma


def test_format_told_by_content_not_suffix(tmp_path):
    Image.fromarray(ramp()).save(tmp_path / "really_png.jpg", format="PNG")
    assert load_image(tmp_path / "really_png.jpg").shape == (20, 30)


# --------------------------------------------------------------------------- DICOM


def test_dicom_window_and_rescale(tmp_path):
    raw = np.array([[0, 1000, 2000, 3000, 4000]], dtype=np.uint16)
    # value = raw * 1 - 1000 -> [-1000, 0, 1000, 2000, 3000]; window 1000 +- 1000 -> [0, 2000]
    path = write_dicom(tmp_path / "w.dcm", raw, RescaleSlope=1, RescaleIntercept=-1000,
                       WindowCenter=1000, WindowWidth=2000)
    out = load_image(path)
    assert out.shape == (1, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-3)


def test_dicom_without_window_is_min_max(tmp_path):
    raw = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    out = load_image(write_dicom(tmp_path / "n.dcm", raw))
    np.testing.assert_allclose(out, (raw - 100) / 400.0, atol=1e-6)


def test_dicom_monochrome1_inverted(tmp_path):
    raw = np.array([[0, 4095]], dtype=np.uint16)
    m2 = load_image(write_dicom(tmp_path / "m2.dcm", raw))
    m1 = load_image(write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1"))
    np.testing.assert_allclose(m1, 1.0 - m2)
    assert m1[0, 0] == 1.0  # low stored value is bright in MONOCHROME1


def test_dicom_voi_lut_sequence(tmp_path):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 8])  # LUTDescriptor: 4 entries, first 0, 8 bits/entry
    item.add_new(0x00283006, "US", [0, 50, 200, 255])  # LUTData
    raw = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    out = load_image(write_dicom(tmp_path / "lut.dcm", raw, bits_stored=8, VOILUTSequence=[item]))
    np.testing.assert_allclose(out[0], np.array([0, 50, 200, 255]) / 255.0, atol=1e-6)


def test_dicom_found_without_suffix(tmp_path):
    path = write_dicom(tmp_path / "image_without_suffix", np.array([[0, 10]], dtype=np.uint16))
    assert load_image(path).shape == (1, 2)


# --------------------------------------------------------------------------- arrays


def test_array_inputs():
    np.testing.assert_allclose(load_image(np.array([[0, 255]], np.uint8)), [[0, 1]])
    np.testing.assert_allclose(load_image(np.array([[0, 65535]], np.uint16)), [[0, 1]])
    np.testing.assert_allclose(load_image(np.array([[0.25, 0.75]])), [[0.25, 0.75]])
    assert load_image(np.zeros((5, 6, 3), np.uint8)).shape == (5, 6)
    with pytest.raises(DataError, match=r"expected \[0, 1\]"):
        load_image(np.array([[0.0, 2.0]]))
    with pytest.raises(DataError, match="2-D"):
        load_image(np.zeros((2, 3, 4, 5)))


def test_pil_and_bytes_inputs(tmp_path):
    a = ramp()
    Image.fromarray(a).save(tmp_path / "a.png")
    np.testing.assert_allclose(load_image(Image.fromarray(a)), a / 255.0, atol=1e-6)
    np.testing.assert_allclose(load_image((tmp_path / "a.png").read_bytes()), a / 255.0, atol=1e-6)


# --------------------------------------------------------------------------- resizing


def test_resize_pad_keeps_aspect_with_black_bars():
    a = np.ones((50, 100), np.float32)
    out = resize_keep_aspect(a, 32, "pad")
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert (out[:8] == 0).all() and (out[-8:] == 0).all()  # 16 rows of image, centred
    assert (out[9:23] == 255).all()


def test_resize_crop_fills_square_from_centre():
    a = np.zeros((50, 100), np.uint8)
    a[:, 25:75] = 255  # the centre half
    out = resize_keep_aspect(a, 32, "crop")
    assert out.shape == (32, 32)
    assert (out[:, 4:28] == 255).all()  # centre 50 of 64 scaled columns -> cropped 32 window mostly bright
    with pytest.raises(ValueError, match="pad"):
        resize_keep_aspect(a, 32, "stretch")


# --------------------------------------------------------------------------- transform


def test_transform_shape_and_normalisation():
    t = ImageTransform(16, in_chans=3)
    x = t(np.full((40, 20), 0.5, np.float32))
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x[:, :, 5:11], torch.zeros(3, 16, 6), atol=1e-6)  # 0.5 -> 0 after (x-0.5)/0.5
    assert torch.allclose(x[:, :, 0], torch.full((3, 16), -1.0))  # black padding
    assert ImageTransform(16)(np.zeros((16, 16), np.uint8)).shape == (1, 16, 16)


def test_transform_uint8_and_float_agree():
    a = ramp(64, 64)
    t = ImageTransform(32)
    assert torch.allclose(t(a), t(a / 255.0), atol=2 / 255 / 0.5)


def test_transform_no_flip_by_default():
    a = np.zeros((32, 32), np.float32)
    a[:, :8] = 1.0  # bright left edge
    t = ImageTransform(32, augment=True, rotation_deg=0, scale=(1, 1), brightness=0, contrast=0, seed=0)
    for _ in range(20):
        x = t(a)
        assert x[0, :, :8].mean() > 0.9 and x[0, :, -8:].mean() < -0.9


def test_transform_hflip_when_asked():
    a = np.zeros((32, 32), np.float32)
    a[:, :8] = 1.0
    t = ImageTransform(32, augment=True, hflip=True, rotation_deg=0, scale=(1, 1), brightness=0,
                       contrast=0, seed=0)
    flipped = [bool(t(a)[0, :, -8:].mean() > 0.9) for _ in range(40)]
    assert 5 < sum(flipped) < 35


def test_transform_augment_is_seeded_and_small():
    a = ramp(64, 64).astype(np.float32) / 255
    t1, t2 = ImageTransform(32, augment=True, seed=3), ImageTransform(32, augment=True, seed=3)
    x1, x2 = t1(a), t2(a)
    assert torch.equal(x1, x2)
    plain = ImageTransform(32)(a)
    assert not torch.equal(x1, plain)
    assert (x1 - plain).abs().mean() < 0.2  # a small perturbation, not a different image


def test_transform_to_dict_round_trip():
    t = ImageTransform(24, resize_mode="crop", in_chans=3, augment=True, seed=1)
    again = ImageTransform(**t.to_dict())
    assert again.to_dict() == t.to_dict()
    with pytest.raises(ValueError):
        ImageTransform(24, resize_mode="squash")
