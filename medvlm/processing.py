"""MedVLMProcessor: image transform + tokenizer as one HF processor (`AutoProcessor`), saved and
loaded with the model.

Also the bridge from dataset records to model batches (`RecordDataset`, `Collator`), so
tokenisation happens here, before the model, never inside `forward`.
"""

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import AutoImageProcessor, AutoProcessor, BatchFeature, ProcessorMixin
from transformers.image_processing_utils import BaseImageProcessor

from .data.images import ImageTransform, load_image
from .data.records import VIEW_KINDS, DataError, study_images, view_kind
from .errors import UserError
from .modeling import CheXNetConfig, MedVLMConfig
from .modeling.losses import IGNORE_INDEX
from .tokenization import load_tokenizer, save_tokenizer

PROCESSOR_FILE = "processor_config.json"  # transformers' PROCESSOR_NAME
ANSWER_ROOM = 16  # tokens a VQA prompt leaves free for the answer (tasks.vqa.ANSWER_TOKENS)
log = logging.getLogger(__name__)


def view_id(view) -> int:
    """A view name -> its row of the model's view-embedding table: 1 frontal, 2 lateral, 3 other
    (0 is an empty slot: `modeling_medvlm.EMPTY_VIEW`)."""
    return 1 + VIEW_KINDS.index(view_kind(view))


def default_views(count: int) -> list[str]:
    """View names for a study's images given without them: the first frontal, the rest lateral."""
    return ["FRONTAL"] + ["LATERAL"] * (count - 1) if count else []


def study_slots(record: dict, max_current: int, max_prior: int) -> list[tuple[object, str, bool]]:
    """[(image, view, is_prior)] of a record: its first `max_current` images (frontal first),
    then its prior study's first `max_prior`."""
    slots = [(i["image"], i["view"], False) for i in study_images(record)[:max_current]]
    prior = record.get("prior")
    if prior and max_prior:
        slots += [(i["image"], i.get("view", ""), True) for i in prior["images"][:max_prior]]
    return slots


def prior_report_text(prior: dict | None) -> str:
    """What a model that reads the prior's report is shown of it: its impression (short, and
    what the comparison is usually with), else its whole report; "" without a prior."""
    if not prior:
        return ""
    return (prior.get("impression") or prior.get("text") or "").strip()


def is_study_set(records) -> bool:
    """Whether any record has more than one image or a prior: such a set is read as studies."""
    return any(len(record.get("images") or ()) > 1 or record.get("prior") for record in records)


def text_key(text: str) -> int:
    """A stable 63-bit id of a report's text: equal ids mean identical reports (contrastive positives)."""
    digest = hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class MedVLMImageProcessor(BaseImageProcessor):
    """Our `ImageTransform` as an HF image processor (`AutoImageProcessor`, and the processor's
    image part): built from the transform's settings or around a transform; `preprocess` decodes
    and transforms images. Augmentation is a training switch and is never saved."""

    model_input_names = ["pixel_values"]

    def __init__(self, transform: ImageTransform | None = None, **settings):
        settings.pop("image_processor_type", None)  # written by `to_dict`
        settings.pop("processor_class", None)
        super().__init__()
        self.transform = transform if transform is not None else ImageTransform(**settings)

    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """A list of images (paths, arrays, PIL images: whatever `load_image` reads; anything but a
        list or tuple is one image) -> {"pixel_values": (B, C, S, S)} normalised pixels."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        pixels = torch.stack([self.transform(load_image(image)) for image in images])
        return BatchFeature({"pixel_values": pixels}, tensor_type=return_tensors)

    def to_dict(self) -> dict:
        return {**self.transform.to_dict(), "augment": False, "seed": None,
                "image_processor_type": type(self).__name__}


_WARNED: set[str] = set()


def _warn_once(kind: str, message: str, *args) -> None:
    """A warning the first time `kind` happens in this process: a training run would otherwise
    repeat it for every batch."""
    if kind not in _WARNED:
        _WARNED.add(kind)
        log.warning(message, *args)


class MedVLMProcessor(ProcessorMixin):
    """Tokenizer + image processor of a medvlm model, and the texts/prompts the model trains on.

    tokenizer: an HF tokenizer, or None for image-only models (CheXNet).
    image_processor: a `MedVLMImageProcessor`, or the `ImageTransform` it is to wrap.
    max_length: texts (and prompt + answer) are cut to this many tokens, with a warning that
        counts them; it must not exceed the text tower's positions (`limit_max_length`).
    prior_report: reports are written after a prompt holding the prior study's report
        (`prior_report_text`; data.prior_report), in training and in generation alike.
    """

    def __init__(self, tokenizer, image_processor, max_length: int = 128, prior_report: bool = False):
        if isinstance(image_processor, ImageTransform):
            image_processor = MedVLMImageProcessor(image_processor)
        super().__init__(tokenizer, image_processor)
        self.max_length = max_length
        self.prior_report = bool(prior_report)

    def limit_max_length(self, positions: int | None) -> "MedVLMProcessor":
        """Lower `max_length` to the model's `max_text_positions()` when it is longer (with a
        warning), so no text the processor makes can index past the text tower's positions."""
        if positions is not None and self.max_length > positions:
            log.warning("max_length=%d is more than the text tower's %d positions; texts are cut to %d tokens",
                        self.max_length, positions, positions)
            self.max_length = positions
        return self

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "tokenizer" and argument is None:  # image-only models have none
            return None
        return super().check_argument_for_proper_class(argument_name, argument)

    @property
    def image_transform(self) -> ImageTransform:
        return self.image_processor.transform

    @property
    def image_size(self) -> int:
        return self.image_transform.image_size

    def with_augmentation(self, augment: bool) -> "MedVLMProcessor":
        """A copy whose image transform does (or does not) augment; the tokenizer is shared."""
        settings = {**self.image_transform.to_dict(), "augment": augment}
        return MedVLMProcessor(self.tokenizer, ImageTransform(**settings), self.max_length, self.prior_report)

    def __call__(self, images=None, text: list[str] | None = None, prompts: list[str] | None = None) -> BatchFeature:
        """pixel_values from `images` (see `images`) and input_ids, attention_mask, labels from
        `text` (and VQA `prompts`; see `texts`), whichever are given."""
        data = {} if text is None else self.texts(text, prompts)
        if images is not None:
            data["pixel_values"] = self.images(images)
        return BatchFeature(data)

    def images(self, images) -> torch.Tensor:
        """Paths or (H, W) arrays -> (B, C, S, S) normalised pixels."""
        return self.image_processor.preprocess(list(images))["pixel_values"]

    def study(self, images, views=(), prior_images=(), prior_views=()) -> dict[str, torch.Tensor]:
        """One study's images (paths or arrays; frontal first) with their view names, and its
        prior's -> the model's image inputs for a batch of one: pixel_values (1, K, C, S, S),
        image_views (1, K), image_is_prior (1, K)."""
        images, prior_images = list(images), list(prior_images)
        views = list(views) or default_views(len(images))
        prior_views = list(prior_views) or default_views(len(prior_images))
        if len(views) != len(images) or len(prior_views) != len(prior_images):
            raise UserError(f"{len(images)} images and {len(prior_images)} prior images need as many views, got "
                            f"{len(views)} and {len(prior_views)}")
        pixels = self.images(images + prior_images)  # (K, C, S, S)
        return {"pixel_values": pixels[None],
                "image_views": torch.tensor([[view_id(v) for v in views + prior_views]]),
                "image_is_prior": torch.tensor([[False] * len(images) + [True] * len(prior_images)])}

    def texts(self, texts: list[str], prompts: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Tokenise training targets, each cut to `max_length` tokens (one warning per call counts
        those cut). With `prompts` (VQA questions) each item is `<s> prompt <sep> text </s>`, the
        prompt is cut first (the answer only when it alone is too long), and the prompt positions
        get label -100, so the caption loss covers answer tokens only. Returns input_ids,
        attention_mask, labels: (B, T), T <= max_length."""
        texts = list(texts)
        parts = [texts] if prompts is None else [list(prompts), texts]
        lengths = [len(ids) for ids in self.tokenizer(*parts, verbose=False)["input_ids"]]
        cut = sum(n > self.max_length for n in lengths)
        truncation = True
        if cut:
            what = "texts" if prompts is None else "question + answer pairs"
            _warn_once(f"cut {what}", "%d of %d %s are longer than max_length=%d tokens and were cut (said once "
                       "per process)", cut, len(texts), what, self.max_length)
        if prompts is not None:  # cut the question, unless an answer alone does not fit
            answers = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
            room = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=True) - 1
            truncation = "only_first" if all(len(a) <= room for a in answers) else "longest_first"
        enc = self.tokenizer(*parts, padding=True, truncation=truncation, max_length=self.max_length,
                             return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)
        if prompts is not None:
            # everything up to and including <sep> is prompt
            sep = (enc["input_ids"] == self.tokenizer.sep_token_id).int().argmax(dim=1)  # (B,)
            positions = torch.arange(labels.shape[1])[None, :]
            labels = labels.masked_fill(positions <= sep[:, None], IGNORE_INDEX)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}

    def prompts(self, questions: list[str], reserve: int = ANSWER_ROOM) -> dict[str, torch.Tensor]:
        """Left-padded `<s> question <sep>` prompts for generation (VQA). A prompt is cut (its
        start kept, as in training) so that it and `reserve` generated tokens fit in `max_length`
        (`reserve` is capped at half of it); one warning per call counts the questions cut."""
        limit = self.max_length - min(max(reserve, 0), self.max_length // 2)
        sep = self.tokenizer.sep_token_id
        ids = [x[:-1] for x in self.tokenizer(list(questions), verbose=False)["input_ids"]]  # drop </s>
        cut = sum(len(x) + 1 > limit for x in ids)
        if cut:
            _warn_once("cut prompts", "%d of %d questions are longer than the %d prompt tokens the model has room "
                       "for (max_length=%d, %d kept for the answer) and were cut (said once per process)", cut,
                       len(ids), limit, self.max_length, self.max_length - limit)
        ids = [x[: limit - 1] + [sep] for x in ids]
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        attention_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, sequences: torch.Tensor, skip_prompt: int = 0) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(sequences[:, skip_prompt:], skip_special_tokens=True)]

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> list[str]:
        """processor_config.json (image settings, max_length, the class name `AutoProcessor` reads)
        and the tokenizer's files, with its sentencepiece model when it has one."""
        out_dir = Path(save_directory)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.to_json_file(out_dir / PROCESSOR_FILE)
        if self.tokenizer is not None:  # image-only models (CheXNet) have none
            save_tokenizer(self.tokenizer, out_dir)
        return [str(out_dir / PROCESSOR_FILE)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "MedVLMProcessor":
        """A processor saved by `save_pretrained` in a local directory (no download; the keyword
        arguments `AutoProcessor` passes are accepted and unused). Also reads the format written
        before the processor was an HF ProcessorMixin (`image_transform` instead of `image_processor`)."""
        path = Path(pretrained_model_name_or_path)
        settings_file = path / PROCESSOR_FILE
        if not settings_file.is_file():
            raise UserError(f"{path}: no {PROCESSOR_FILE}; is this a medvlm model directory?")
        settings = json.loads(settings_file.read_text())
        image_settings = settings.get("image_processor", settings.get("image_transform"))
        if not isinstance(image_settings, dict) or "max_length" not in settings:
            raise UserError(f"{settings_file}: expected 'image_processor' and 'max_length' fields")
        tokenizer = load_tokenizer(path) if (path / "tokenizer_config.json").is_file() else None
        return cls(tokenizer, MedVLMImageProcessor(**image_settings), settings["max_length"],
                   bool(settings.get("prior_report", False)))


# after `import medvlm`, transformers' Auto classes load these from a saved model directory
AutoProcessor.register(MedVLMConfig, MedVLMProcessor, exist_ok=True)
AutoProcessor.register(CheXNetConfig, MedVLMProcessor, exist_ok=True)
AutoImageProcessor.register(MedVLMConfig, image_processor_classes={"torchvision": MedVLMImageProcessor,
                                                                   "pil": MedVLMImageProcessor}, exist_ok=True)
AutoImageProcessor.register(CheXNetConfig, image_processor_classes={"torchvision": MedVLMImageProcessor,
                                                                    "pil": MedVLMImageProcessor}, exist_ok=True)


class RecordDataset(Dataset):
    """Records (see medvlm.data) -> dicts of pixels and text, ready for `collate`.

    A set where any record has several images or a prior (`is_study_set`; or `studies=True`) is
    read as studies: an item then holds every image of its study (up to `max_current`) and of
    its prior (up to `max_prior`) as pixel_values (K, C, S, S), with image_views (K,) and
    image_is_prior (K,); otherwise one image per item (pixel_values (C, S, S)), as before.

    A file that fails to decode during training is skipped when `on_error="skip"`, so one bad
    image never ends a run; with "raise" it stops with the file's name. Each skipped record is
    warned about once and counted once, by reason, however many epochs meet it: its reason's
    code goes into `bad`, one byte per record. Under "skip" that table lives in shared memory,
    so DataLoader worker processes write into the same table: with `num_workers > 0` it counts
    every record any worker failed to read so far (in this process group; the trainer merges
    the tables of distributed processes).
    """

    REASONS = ("missing_file", "empty_file", "unreadable_file", "corrupt_image", "too_many_pixels",
               "multi_frame", "no_pixel_data", "bad_array", "other")  # codes 1..9; 0 = not skipped

    def __init__(self, records, processor: MedVLMProcessor, on_error: str = "raise", studies: bool | None = None,
                 max_current: int = 3, max_prior: int = 2):
        self.records = records
        self.studies = is_study_set(records) if studies is None else studies
        self.max_current, self.max_prior = max_current, max_prior
        self.processor = processor
        self.on_error = on_error
        self.bad = torch.zeros(len(records), dtype=torch.uint8)  # (N,) reason code per record
        if on_error == "skip":
            self.bad.share_memory_()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def skipped(self) -> int:
        """How many records were skipped (each once)."""
        return int((self.bad > 0).sum())

    def skipped_items(self) -> dict[str, str]:
        """{record index (str): reason} of the skipped records: what a checkpoint keeps."""
        return {str(i): self.REASONS[int(self.bad[i]) - 1] for i in torch.nonzero(self.bad).flatten().tolist()}

    def restore_skipped(self, items: dict[str, str]) -> None:
        """Mark the records of `skipped_items()` (from a checkpoint) as skipped again."""
        for index, reason in items.items():
            code = self.REASONS.index(reason if reason in self.REASONS else "other") + 1
            self.bad[int(index)] = code

    def __getitem__(self, index: int) -> dict | None:
        record = self.records[index]
        try:
            images = self._pixels(record)
        except DataError as error:
            if self.on_error != "skip":
                raise
            if not self.bad[index]:
                log.warning("skipping record %d: %s", index, error)
            reason = error.reason if error.reason in self.REASONS else "other"
            self.bad[index] = self.REASONS.index(reason) + 1
            return None
        item = {**images, "text": record.get("text", "")}
        if record.get("question"):
            item["question"] = record["question"]
        elif self.processor.prior_report:
            item["prior_report"] = prior_report_text(record.get("prior"))
        if record.get("labels") is not None:
            item["labels"] = torch.tensor(record["labels"], dtype=torch.float32)  # (14,), NaN = not mentioned
        return item

    def _pixels(self, record: dict) -> dict[str, torch.Tensor]:
        """The record's image inputs: {"pixel_values": (C, S, S)}, or for a study (K, C, S, S)
        with image_views and image_is_prior (K,)."""
        transform = self.processor.image_transform
        if not self.studies:
            return {"pixel_values": transform(load_image(record["image"]))}
        slots = study_slots(record, self.max_current, self.max_prior)
        return {"pixel_values": torch.stack([transform(load_image(image)) for image, _, _ in slots]),
                "image_views": torch.tensor([view_id(view) for _, view, _ in slots]),
                "image_is_prior": torch.tensor([prior for _, _, prior in slots])}


def stack_images(items: list[dict]) -> dict[str, torch.Tensor]:
    """The image inputs of RecordDataset items as a batch: pixel_values (B, C, S, S), or for
    studies (B, K, C, S, S) padded to the largest study with empty slots (view id 0), and
    image_views, image_is_prior (B, K)."""
    if "image_views" not in items[0]:
        return {"pixel_values": torch.stack([item["pixel_values"] for item in items])}
    K = max(len(item["image_views"]) for item in items)
    first = items[0]["pixel_values"]
    pixels = first.new_zeros((len(items), K) + first.shape[1:])
    views = torch.zeros(len(items), K, dtype=torch.long)
    prior = torch.zeros(len(items), K, dtype=torch.bool)
    for row, item in enumerate(items):
        k = len(item["image_views"])
        pixels[row, :k], views[row, :k], prior[row, :k] = item["pixel_values"], item["image_views"], item["image_is_prior"]
    return {"pixel_values": pixels, "image_views": views, "image_is_prior": prior}


class Collator:
    """Batch items of RecordDataset: stack pixels (or pad studies), tokenise texts (and VQA prompts)."""

    def __init__(self, processor: MedVLMProcessor):
        self.processor = processor

    def __call__(self, items: list[dict | None]) -> dict[str, torch.Tensor]:
        items = [item for item in items if item is not None]
        if not items:
            return {}
        texts = [item["text"] for item in items]
        prompt_key = next((k for k in ("question", "prior_report") if k in items[0]), None)
        prompts = [item[prompt_key] for item in items] if prompt_key else None
        batch = self.processor.texts(texts, prompts)
        batch.update(stack_images(items))
        batch["text_keys"] = torch.tensor([text_key(t) for t in texts])
        return batch
