"""What kind of image encoder a local checkpoint holds, from its files alone (nothing is
downloaded, no weights are read): the `model.vision` keys that make `build_vision_tower` build
it, and the normalisation and input size it was trained with.

    open_clip_config.json + open_clip weights     -> kind "open_clip" (BiomedCLIP)
    config.json with "architecture"               -> kind "timm" (timm's hub layout)
    config.json with "model_type"                 -> kind "transformers" (RAD-DINO, MedSigLIP, CLIP)
    a bare weight file (.safetensors/.bin/.pt/.pth) or a folder with only one
                                                  -> kind "timm"; model_name must be given

Normalisation comes from the encoder's own files: transformers' preprocessor_config.json
(`image_mean`, `image_std`), else its family's defaults; open_clip's `preprocess_cfg`, else
OpenAI CLIP's; timm's `pretrained_cfg`. They are per-channel lists for `ImageTransform` with
in_chans=3: a grayscale radiograph repeated to 3 channels and normalised as the encoder expects.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

KEY = "model.vision.pretrained_path"
STATE_DICT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# per family when the checkpoint has no preprocessor_config.json (transformers' image processors' defaults)
FAMILY_NORMALISATION = {
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
    "dinov2_with_registers": (IMAGENET_MEAN, IMAGENET_STD),
    "siglip_vision_model": ([0.5] * 3, [0.5] * 3),
    "clip_vision_model": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
}
# timm model_args that the tower sets itself (from model.vision.img_size / in_chans; no classifier)
TOWER_TIMM_ARGS = ("img_size", "in_chans", "num_classes")


def vision_spec_from_checkpoint(path: str | Path, model_name: str | None = None) -> dict:
    """The `model.vision` keys a local checkpoint determines: kind, model_name (when the files
    name it), config (transformers / open_clip), timm_kwargs (timm `model_args`), in_chans, mean,
    std, and `native_image_size` (the encoder's own input size, None when unknown; not a vision
    key: the caller uses it for data.image_size). Only what the files say is returned, so it can
    update a spec key by key.

    model_name: the timm name for a bare weight file (a UserError without it); for other kinds
    it must agree with the files when given."""
    found = _inspect(Path(path))
    if found.get("bare"):
        del found["bare"]
        if not model_name:
            raise UserError(f"{KEY}={str(path)!r} is a bare weight file: set model.vision.model_name to the "
                            "timm model it belongs to (timm.list_models() lists them)")
        found["model_name"] = model_name
    elif model_name and found["kind"] in ("timm", "open_clip") and model_name != found.get("model_name"):
        raise UserError(f"model.vision.model_name={model_name!r}: the checkpoint at {str(path)!r} is a "
                        f"{found.get('model_name')!r}")
    return found


def native_image_size(path: str | Path) -> int | None:
    """The input size the encoder at `path` was trained for (None: the files do not say)."""
    return _inspect(Path(path))["native_image_size"]


def _inspect(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"{KEY}={str(path)!r}: no such file or directory")
    if path.is_file():
        if path.name in ("config.json", "open_clip_config.json"):
            return _inspect(path.parent)
        if path.suffix.lower() in STATE_DICT_SUFFIXES:
            return {"kind": "timm", "bare": True, "native_image_size": None}
        raise UserError(f"{KEY}={str(path)!r}: not a checkpoint (expected a folder, or a weight file ending in "
                        f"{', '.join(STATE_DICT_SUFFIXES)})")
    if (path / "open_clip_config.json").is_file():
        return _open_clip(path)
    if (path / "config.json").is_file():
        config = _read_json(path / "config.json")
        if "architecture" in config:
            return _timm(path, config)
        if "model_type" in config:
            return _transformers(path, config)
        raise UserError(f"{KEY}={str(path)!r}: its config.json has neither `model_type` (transformers) nor "
                        "`architecture` (timm): not a recognised checkpoint")
    if any(p.suffix.lower() in STATE_DICT_SUFFIXES for p in path.iterdir() if p.is_file()):
        return {"kind": "timm", "bare": True, "native_image_size": None}
    raise UserError(f"{KEY}={str(path)!r}: no config.json, open_clip_config.json or weight file there")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{KEY}: cannot read {path} ({error})") from None
    if not isinstance(value, dict):
        raise UserError(f"{KEY}: {path} is not a JSON object")
    return value


def _channel_list(values, path: Path, name: str) -> list[float] | None:
    if values is None:
        return None
    values = [values] * 3 if isinstance(values, (int, float)) else list(values)
    if not values or not all(isinstance(v, (int, float)) for v in values):
        raise UserError(f"{KEY}: {path}: {name} must be numbers, got {values!r}")
    return [float(v) for v in values]


def _side(size) -> int | None:
    """An image size as configs write it (int, [h, w], [c, h, w], {"height", "width"} or
    {"shortest_edge"}) -> its square side."""
    if isinstance(size, bool) or size is None:
        return None
    if isinstance(size, (int, float)):
        return int(size)
    if isinstance(size, (list, tuple)) and size:
        return int(size[-1])
    if isinstance(size, dict):
        for key in ("height", "shortest_edge", "width"):
            if isinstance(size.get(key), (int, float)):
                return int(size[key])
    return None


def _open_clip(path: Path) -> dict:
    config = _read_json(path / "open_clip_config.json")
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict) or not isinstance(model_cfg.get("vision_cfg"), dict):
        raise UserError(f"{KEY}={str(path)!r}: open_clip_config.json has no model_cfg.vision_cfg")
    if not any((path / name).is_file() for name in OPEN_CLIP_WEIGHTS):
        raise UserError(f"{KEY}={str(path)!r}: open_clip_config.json but no weight file "
                        f"({' or '.join(OPEN_CLIP_WEIGHTS)})")
    vision_cfg = model_cfg["vision_cfg"]
    trunk = vision_cfg.get("timm_model_name")
    if not trunk:
        raise UserError(f"{KEY}={str(path)!r}: an open_clip model whose visual tower is open_clip's own; only "
                        "timm trunks (model_cfg.vision_cfg.timm_model_name, e.g. BiomedCLIP) are supported")
    preprocess = config.get("preprocess_cfg") or {}
    mean = _channel_list(preprocess.get("mean"), path, "preprocess_cfg.mean") or list(OPENAI_CLIP_MEAN)
    std = _channel_list(preprocess.get("std"), path, "preprocess_cfg.std") or list(OPENAI_CLIP_STD)
    size = _side(preprocess.get("size")) or _side(vision_cfg.get("image_size"))
    return {"kind": "open_clip", "model_name": trunk, "config": model_cfg, "in_chans": len(mean),
            "mean": mean, "std": std, "native_image_size": size}


def _timm(path: Path, config: dict) -> dict:
    if not any((path / name).is_file() for name in TIMM_WEIGHTS):
        raise UserError(f"{KEY}={str(path)!r}: a timm config.json but no weight file ({' or '.join(TIMM_WEIGHTS)})")
    pretrained_cfg = config.get("pretrained_cfg") or {}
    model_args = {k: v for k, v in (config.get("model_args") or {}).items() if k not in TOWER_TIMM_ARGS}
    input_size = pretrained_cfg.get("input_size")
    found = {"kind": "timm", "model_name": config["architecture"], "timm_kwargs": model_args,
             "native_image_size": _side(input_size)}
    in_chans = (config.get("model_args") or {}).get("in_chans") or (input_size[0] if input_size else None)
    if in_chans:
        found["in_chans"] = int(in_chans)
    for name in ("mean", "std"):
        values = _channel_list(pretrained_cfg.get(name), path, f"pretrained_cfg.{name}")
        if values is not None:
            found[name] = values
    return found


def _transformers(path: Path, raw: dict) -> dict:
    from transformers import AutoConfig

    from .vision_transformers import SUPPORTED_MODEL_TYPES, unsupported_model_type, vision_config, vision_config_dict

    if raw["model_type"] not in SUPPORTED_MODEL_TYPES:
        raise unsupported_model_type(raw["model_type"], f"{KEY}={str(path)!r}")
    try:
        config = vision_config(AutoConfig.from_pretrained(str(path), local_files_only=True))
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"{KEY}={str(path)!r}: transformers cannot read its config.json ({error})") from None
    default_mean, default_std = FAMILY_NORMALISATION[config.model_type]
    mean, std, size = list(default_mean), list(default_std), None
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.is_file():
        processing = _read_json(preprocessor)
        mean = _channel_list(processing.get("image_mean"), preprocessor, "image_mean") or mean
        std = _channel_list(processing.get("image_std"), preprocessor, "image_std") or std
        if processing.get("do_center_crop", True) is not False:
            size = _side(processing.get("crop_size"))
        size = size or _side(processing.get("size"))
    name = raw.get("_name_or_path") or path.name  # for people reading the config; the tower ignores it
    return {"kind": "transformers", "model_name": name, "config": vision_config_dict(config),
            "in_chans": int(config.num_channels), "mean": mean, "std": std,
            "native_image_size": size or _side(config.image_size)}
