"""What the tests share that is not a fixture: tiny model configs (random weights, built in
milliseconds), the tiny-run overrides for the demo preset, the way to drive the entry scripts, and
a DICOM writer.
The fixtures built on these live in conftest.py."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

from medvlm.modeling import MedVLMConfig

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 64


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"medvlm_script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = [
    "data.options={num_train: 24, num_validation: 8, num_test: 8, seed: 3}",
    "data.image_size=32",
    "data.max_length=96",
    "data.tokenizer_vocab_size=200",
    "model.vision.model_name=vit_tiny_patch16_224", "model.vision.timm_kwargs={embed_dim: 32, depth: 1, num_heads: 2}",
    "model.vision.token_reduction=null",  # the demo reads a CNN stage; the tiny tower is a ViT
    "model.text={model_type: gpt2, n_embd: 32, n_layer: 1, n_head: 2}",
    "model.fusion_layers=1", "model.fusion_heads=2", "model.embed_dim=16",
    "train.batch_size=8", "train.log_every=1", "train.eval_every=2", "train.eval_samples=4",
    "train.warmup_steps=1", "eval.max_new_tokens=12", "eval.batch_size=8", "eval.bootstrap_resamples=20",
]

RUN = [*TINY, "data.augment=true", "train.eval_every=0", "train.log_every=1", "train.save_every=3",
       "train.keep_last=3", "train.max_steps=24", "train.tensorboard=false"]


def train_command(out: Path, *extra: str) -> list[str]:
    """`python train.py` on the demo preset with the RUN overrides, as a subprocess argv."""
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/demo.yaml"),
            f"train.output_dir={out}", *RUN, *extra]


def tiny_config(text_type: str = "gpt2", vision: str = "vit", **overrides) -> MedVLMConfig:
    if vision == "vit":
        vision_spec = {"model_name": "vit_tiny_patch16_224", "img_size": 32, "in_chans": 1,
                       "timm_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}}
    else:
        vision_spec = {"model_name": vision, "img_size": 32, "in_chans": 1, "timm_kwargs": {}}
    if text_type == "gpt2":
        text = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}
    else:
        text = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64, "max_position_embeddings": 64}
    kwargs = dict(vision=vision_spec, text=text, fusion_layers=2, fusion_heads=2, embed_dim=16, vocab_size=VOCAB,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kwargs.update(overrides)
    return MedVLMConfig(**kwargs)


SPATIAL = dict(vision="regnetx_002", fusion_null_slot=True, fusion_image_positions=True, fusion_qk_norm=True)


def spatial_config() -> MedVLMConfig:
    """A tiny CNN model whose cross-attention reads the stride-16 stage, with a null slot, token
    positions and cosine attention: the settings attention maps depend on."""
    config = tiny_config(**SPATIAL)
    config.vision["token_reduction"] = 16
    return MedVLMConfig(**config.to_dict())


def write_dicom(path, pixels, *, photometric="MONOCHROME2", bits_stored=12, frames=1,
                pixel_data=True, **elements):
    """A minimal single- (or multi-) frame uncompressed DICOM written with pydicom itself."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    pixels = np.asarray(pixels, dtype=np.uint16)
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in elements.items():
        setattr(ds, key, value)
    if pixel_data:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def as_studies(batch: dict) -> dict:
    """A batch of single images as studies of two slots: the image, and its mirror as a frontal
    prior, so that the view and prior embeddings are on the gradient's path too."""
    import torch

    pixels = batch["pixel_values"]  # (B, C, S, S)
    B = pixels.shape[0]
    return {**batch, "pixel_values": torch.stack([pixels, pixels.flip(-1)], dim=1),  # (B, 2, C, S, S)
            "image_views": torch.ones(B, 2, dtype=torch.long),
            "image_is_prior": torch.tensor([[False, True]] * B)}
