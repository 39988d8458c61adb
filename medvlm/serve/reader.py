"""The model work behind the page and the API, one request at a time.

A `StudyReader` holds one trained model. Two cores run one torch job well and two badly, so every
call that touches the model takes `self.lock`; the API's queue (api.py) and Gradio's decide who
waits. The model reads one image: of a study's views it reads the first, and it reads no prior
(the studies issue adds both); `study_note` says so wherever a user sent more.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from ..errors import UserError
from ..observations import CHEXPERT_OBSERVATIONS
from .uploads import UploadError

# generation settings a request may set: name -> (type, lowest, highest); None = unbounded
SETTINGS = {
    "num_beams": (int, 1, 8),
    "max_new_tokens": (int, 1, 512),
    "do_sample": (bool, None, None),
    "temperature": (float, 1e-3, 10.0),
    "top_k": (int, 1, 10_000),
    "top_p": (float, 1e-3, 1.0),
    "no_repeat_ngram_size": (int, 0, 10),
    "repetition_penalty": (float, 0.5, 5.0),
}
DEFAULT_MAX_NEW_TOKENS = 112  # the demo's reports fit; the text tower's positions cap it further


def parse_settings(values: Mapping[str, object]) -> dict:
    """Generation settings from form fields or widgets -> `generation_settings` keywords.
    An unknown name or a value out of range is an UploadError (400) naming the field."""
    from ..tasks.report_generation import generation_settings

    parsed: dict = {}
    for name, value in values.items():
        if value is None or value == "":
            continue
        if name not in SETTINGS:
            raise UploadError(f"unknown generation setting {name!r}; expected one of {', '.join(SETTINGS)}",
                              reason="bad_setting")
        kind, low, high = SETTINGS[name]
        parsed[name] = _setting(name, value, kind, low, high)
    return generation_settings(**{"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, **parsed})


def _setting(name: str, value, kind: type, low, high):
    if kind is bool:
        text = str(value).strip().lower()
        if text not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise UploadError(f"{name}={value!r}: expected true or false", reason="bad_setting")
        return text in ("true", "1", "yes", "on")
    try:
        number = kind(float(value)) if kind is int and float(value).is_integer() else kind(value)
    except (TypeError, ValueError):
        raise UploadError(f"{name}={value!r}: expected {'an integer' if kind is int else 'a number'}",
                          reason="bad_setting") from None
    if (low is not None and number < low) or (high is not None and number > high) or \
            (isinstance(number, float) and not math.isfinite(number)):
        raise UploadError(f"{name}={value!r}: expected a value from {low} to {high}", reason="bad_setting")
    return number


def study_note(num_views: int, num_prior: int) -> str | None:
    """What of an uploaded study the model did not read, in a sentence (None: it read all)."""
    parts = []
    if num_views > 1:
        parts.append(f"the report is written from the first image only ({num_views - 1} other view"
                     f"{'s' if num_views > 2 else ''} not read)")
    if num_prior:
        parts.append("this model does not read prior studies (the prior was not used)")
    return ("; ".join(parts).capitalize() + ".") if parts else None


def trained_for_vqa(run_cfg) -> bool:
    """Whether the run trained on questions (VQA-RAD, SLAKE, synthetic questions)."""
    if run_cfg is None:
        return False
    data = run_cfg.data
    return data.dataset in ("vqa_rad", "slake") or bool((data.options or {}).get("vqa"))


@dataclass
class Reading:
    """One generated report: its text and the token ids (1, T) it came from (BOS first)."""

    text: str
    sequences: torch.Tensor
    pixels: torch.Tensor  # (1, C, S, S), the model's input
    elapsed_s: float
    first_token_s: float | None = None
    words: list | None = field(default=None, repr=False)  # [(word, (h, w) map)], filled on first use


class _TokenQueue(BaseStreamer):
    """transformers' streamer interface -> a queue of new token ids (None ends it)."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:  # generate() first puts the prompt (BOS)
            self.prompt_seen = True
            return
        self.queue.put([int(t) for t in value.reshape(-1)])

    def end(self):
        self.queue.put(None)


def _time_left(deadline: float | None) -> dict:
    """transformers' own time limit (`max_time`, checked after every step) up to `deadline`."""
    return {} if deadline is None else {"max_time": max(0.0, deadline - time.monotonic())}


class StudyReader:
    """One trained medvlm report model, read-only, behind a lock."""

    def __init__(self, checkpoint: str | Path, gallery: str | None = "auto", weights: str = "fp32"):
        from ..modeling.inference_weights import for_generation
        from ..runs import load_trained

        self.checkpoint = Path(checkpoint)
        model, processor, run_cfg = load_trained(self.checkpoint)
        if getattr(model.config, "model_type", None) == "chexnet":
            raise UserError(f"{checkpoint}: a CheXNet classifier writes no reports; `medvlm serve` needs a medvlm "
                            "report model (e.g. runs/demo/final)")
        self.model, self.processor, self.run_cfg = model, processor, run_cfg
        self.generator = for_generation(model, weights)
        self.lock = threading.Lock()
        self.can_vqa = trained_for_vqa(run_cfg)
        self.gallery: list[str] = []
        self.gallery_embeds: np.ndarray | None = None
        if gallery:
            self._load_gallery(gallery)

    # ------------------------------------------------------------------ what the model is

    @property
    def name(self) -> str:
        return f"{self.checkpoint.parent.name}/{self.checkpoint.name}" if self.checkpoint.parent.name else \
            self.checkpoint.name

    def model_card(self) -> str:
        """The card `medvlm eval` wrote beside the checkpoint (its metrics with intervals), else the
        checkpoint's own, else one made from its run config."""
        from ..model_card import model_card

        for card in (self.checkpoint.with_name(self.checkpoint.name + "-eval") / "README.md",
                     self.checkpoint / "README.md"):
            if card.is_file():
                return card.read_text(encoding="utf-8")
        return model_card(self.run_cfg)

    def _load_gallery(self, gallery: str) -> None:
        from ..runs import records_for
        from ..tasks.embeddings import text_embeddings

        if gallery == "auto":
            if self.run_cfg is None:
                return
            try:
                texts = [r["text"] for r in records_for(self.run_cfg, "train") if r.get("text")]
            except UserError:  # the training data is not on this machine: no gallery, said on the page
                return
        else:
            from ..data.tables import read_text

            texts = [line.strip() for line in read_text(gallery).splitlines() if line.strip()]
        self.gallery = list(dict.fromkeys(texts))  # distinct reports, first-seen order
        if self.gallery:
            self.gallery_embeds = text_embeddings(self.model, self.processor, self.gallery)

    # ------------------------------------------------------------------ model inputs

    def pixels(self, image: np.ndarray) -> torch.Tensor:
        """(H, W) image -> (1, C, S, S) model input in the generator's dtype."""
        first = next(self.generator.parameters())
        return self.processor.images([image]).to(first.device, first.dtype)

    def _max_new_tokens(self, requested: int, start: int = 1) -> int:
        positions = self.model.max_text_positions() or 10**9
        return max(1, min(requested, positions - start))

    # ------------------------------------------------------------------ reports

    def stream_report(self, image: np.ndarray, settings: dict, deadline: float | None = None
                      ) -> Iterator[tuple[str, Reading | None]]:
        """Yield (text so far, None) as tokens arrive, then (final text, Reading). Beam search
        cannot stream (transformers keeps several hypotheses): it yields the final text once.
        Past `deadline` (time.monotonic()) generation stops and a TimeoutError is raised."""
        pixels = self.pixels(image)
        settings = dict(settings, max_new_tokens=self._max_new_tokens(settings.get("max_new_tokens",
                                                                                   DEFAULT_MAX_NEW_TOKENS)))
        streamer = _TokenQueue() if settings.get("num_beams", 1) == 1 else None
        result: dict = {}

        def work():
            try:
                with self.lock, torch.no_grad():
                    result["started"] = time.monotonic()
                    result["sequences"] = self.generator.generate(pixel_values=pixels, streamer=streamer,
                                                                  **settings, **_time_left(deadline))
            except BaseException as error:  # re-raised in the caller's thread
                result["error"] = error
                if streamer is not None:
                    streamer.end()

        thread = threading.Thread(target=work, name="medvlm-generate", daemon=True)
        thread.start()
        ids: list[int] = []
        first_token_s = None
        if streamer is not None:
            while (new := streamer.queue.get()) is not None:
                if first_token_s is None:
                    first_token_s = time.monotonic() - result["started"]
                ids.extend(new)
                yield self._decode(ids), None
        thread.join()
        if "error" in result:
            raise result["error"]
        elapsed = time.monotonic() - result["started"]
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError("the report was not finished in the time a request may take")
        sequences = result["sequences"]
        text = self.processor.decode(sequences[:1])[0]
        yield text, Reading(text, sequences[:1].cpu(), pixels, elapsed, first_token_s)

    def report(self, image: np.ndarray, settings: dict, deadline: float | None = None) -> Reading:
        """The whole report at once (the last item of `stream_report`)."""
        reading = None
        for _, reading in self.stream_report(image, settings, deadline):
            pass
        return reading

    def _decode(self, ids: list[int]) -> str:
        return self.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()

    @staticmethod
    def labels(text: str) -> dict[str, int | None]:
        """The 14 CheXpert-style observations of a report: 1 positive, 0 negative, -1 uncertain,
        None not mentioned."""
        from ..metrics.chexpert import label_reports

        row = label_reports([text])[0]
        return {name: None if math.isnan(v) else int(v) for name, v in zip(CHEXPERT_OBSERVATIONS, row)}

    # ------------------------------------------------------------------ explanations

    def word_maps(self, reading: Reading) -> list[tuple[str, np.ndarray]]:
        """[(word, (h, w) cross-attention map)] of a report's words, averaged over layers and
        heads (as `medvlm explain` draws them); computed once per reading."""
        from ..explain.attention import generated_word_maps

        if reading.words is None:
            first = next(self.model.parameters())
            with self.lock:
                maps = generated_word_maps(self.model, self.processor.tokenizer, reading.pixels.to(first.dtype),
                                           reading.sequences.to(first.device), 1)
            reading.words = [(w, m.float().cpu().numpy()) for w, m in maps]
        return reading.words

    def label_cam(self, reading: Reading, observation: str) -> np.ndarray:
        """(S, S) Grad-CAM of the zero-shot score of `observation` (its positive minus negative
        report phrases) for the reading's image."""
        from ..explain.targets import similarity_cams
        from ..tasks.zero_shot import DEFAULT_PROMPTS, prompt_embeddings

        if observation not in DEFAULT_PROMPTS:
            raise UploadError(f"unknown observation {observation!r}; expected one of {', '.join(DEFAULT_PROMPTS)}",
                              reason="bad_observation")
        with self.lock:
            positive, negative = prompt_embeddings(self.model, self.processor,
                                                   {observation: DEFAULT_PROMPTS[observation]})
            direction = torch.as_tensor(positive - negative)
            pixels = reading.pixels.to(next(self.model.parameters()).dtype)
            return similarity_cams(self.model, pixels, direction)[0].float().cpu().numpy()

    # ------------------------------------------------------------------ questions and retrieval

    def answer(self, image: np.ndarray, question: str, deadline: float | None = None) -> str:
        from ..tasks.vqa import ANSWER_TOKENS

        question = (question or "").strip()
        if not question:
            raise UploadError("question: expected a question about the image, got an empty text",
                              reason="empty_question")
        pixels = self.pixels(image)
        prompt = {k: v.to(pixels.device) for k, v in self.processor.prompts([question], reserve=ANSWER_TOKENS).items()}
        start = prompt["input_ids"].shape[1]
        with self.lock, torch.no_grad():
            sequences = self.generator.generate(pixel_values=pixels, **prompt, do_sample=False,
                                                max_new_tokens=self._max_new_tokens(ANSWER_TOKENS, start),
                                                **_time_left(deadline))
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError("the answer was not finished in the time a request may take")
        return self.processor.decode(sequences, skip_prompt=start)[0]

    def similar_reports(self, reading: Reading, k: int = 5) -> list[tuple[str, float]]:
        """The k gallery reports closest to the reading's image by contrastive embedding."""
        from ..tasks.retrieval import rank_reports

        if self.gallery_embeds is None:
            return []
        with self.lock, torch.no_grad():
            pixels = reading.pixels.to(next(self.model.parameters()).dtype)
            image = self.model.get_image_features(pixels).float().cpu().numpy()
        return rank_reports(image, self.gallery, self.gallery_embeds, k)[0]
