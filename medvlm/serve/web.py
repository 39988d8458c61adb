"""The Gradio page: upload or pick a study, read the streamed report, click a word for its
cross-attention (or a label for its Grad-CAM), ask a question, see similar training reports and
the model card. All model work goes through the `StudyReader`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np

from ..errors import UserError
from .examples import Example
from .reader import DEFAULT_MAX_NEW_TOKENS, StudyReader, parse_settings, study_note
from .uploads import Limits, read_upload

BANNER = ("**Research use only. Not a medical device: the reports below must not be used for diagnosis or patient "
          "care.** Model: `{name}`.")
DISPLAY_SIZE = 384  # overlays are drawn at least this large so a finding is visible on the page


def _read_files(paths, limits: Limits) -> list[np.ndarray]:
    images = []
    for path in paths or []:
        path = Path(path)
        images.append(read_upload(path.read_bytes(), path.name, limits))
    return images


def overlay(image: np.ndarray, heatmap: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """(S, S) image in [0, 1] and an (h, w) map -> (D, D, 3) uint8, the map in colour over grey."""
    from matplotlib import colormaps

    from ..explain.overlay import upsample

    scale = max(1, -(-DISPLAY_SIZE // image.shape[0]))
    grey = np.kron(image, np.ones((scale, scale)))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if heatmap is not None:
        colour = colormaps["jet"](upsample(heatmap, grey.shape))[..., :3]
        rgb = (1 - alpha) * rgb + alpha * colour
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _display(reader: StudyReader, reading) -> np.ndarray:
    from ..explain.overlay import display_image

    transform = reader.processor.image_transform
    return display_image(reading.pixels[0], transform.mean, transform.std)


def _study_inputs(examples: list[Example], positions: int) -> SimpleNamespace:
    ui = SimpleNamespace()
    ui.views = gr.File(label="Study: one or more views (PNG, JPEG or DICOM; the first is read)",
                       file_count="multiple", type="filepath", elem_id="views")
    ui.prior = gr.File(label="Prior study (optional)", file_count="multiple", type="filepath", elem_id="prior")
    ui.example = gr.Dropdown([e.name for e in examples], value=None, label="Or pick an example", elem_id="example")
    with gr.Accordion("Advanced", open=False):
        ui.settings = [
            gr.Slider(1, 8, value=1, step=1, label="Beams (1 streams the report)"),
            gr.Slider(8, min(512, positions), value=min(DEFAULT_MAX_NEW_TOKENS, positions), step=1,
                      label="Longest report (tokens)"),
            gr.Checkbox(False, label="Sample instead of greedy / beam search"),
            gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature (sampling)"),
            gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (sampling)"),
            gr.Slider(0, 6, value=0, step=1, label="No repeated n-grams of this size (0 off)"),
            gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty (1 off)"),
        ]
    ui.write = gr.Button("Write report", variant="primary", elem_id="write-report")
    return ui


def _results(ui: SimpleNamespace) -> None:
    ui.report = gr.Textbox(label="Report", lines=5, interactive=False, elem_id="report")
    ui.note = gr.Markdown("", elem_id="note")
    ui.words = gr.HighlightedText(label="Click a word to see where the model looked while writing it",
                                  combine_adjacent=False, show_legend=False, show_inline_category=False,
                                  color_map={"word": "#e8eefc"}, elem_id="words")
    ui.shown = gr.Image(label="Image / attention", type="numpy", interactive=False, elem_id="overlay",
                        height=DISPLAY_SIZE)
    ui.labels = gr.Dataframe(headers=["observation", "label"], label="Labels of the report (click a row for its "
                             "Grad-CAM; 1 positive, 0 negative, -1 uncertain, blank not mentioned)",
                             interactive=False, elem_id="labels")


def _extras(ui: SimpleNamespace, reader: StudyReader) -> None:
    with gr.Accordion("Ask a question about the image", open=reader.can_vqa, visible=reader.can_vqa):
        ui.question = gr.Textbox(label="Question", elem_id="question")
        ui.ask = gr.Button("Ask", elem_id="ask")
        ui.answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
    with gr.Accordion("Most similar training reports", open=False, visible=bool(reader.gallery)):
        ui.similar = gr.Dataframe(headers=["similarity", "report"], interactive=False, elem_id="similar")
    with gr.Accordion("Model card", open=False):
        gr.Markdown(reader.model_card(), elem_id="model-card")


def _report_writer(ui: SimpleNamespace, reader: StudyReader, limits: Limits):
    """The "Write report" handler: stream the text, then words, labels, image and similar reports."""
    def write_report(view_paths, prior_paths, beams, tokens, sample, temp, p, ngram, rep):
        try:
            images = _read_files(view_paths, limits)
            _read_files(prior_paths, limits)  # checked, so a broken file is named, though not read
            if not images:
                raise UserError("Upload one or more views of a study, or pick an example.")
            settings = parse_settings({"num_beams": beams, "max_new_tokens": tokens, "do_sample": sample,
                                       "temperature": temp if sample else None, "top_p": p if sample else None,
                                       "no_repeat_ngram_size": ngram, "repetition_penalty": rep})
        except UserError as error:
            raise gr.Error(str(error)) from None
        message = study_note(len(images), len(prior_paths or []))
        yield {ui.report: "", ui.note: f"*{message}*" if message else "", ui.words: None, ui.labels: None}
        done = None
        for text, done in reader.stream_report(images[0], settings):
            yield {ui.report: text}
        maps = reader.word_maps(done)
        rows = [[name, "" if value is None else value] for name, value in reader.labels(done.text).items()]
        out = {ui.report: done.text, ui.words: [(w + " ", "word") for w, _ in maps], ui.labels: rows,
               ui.shown: overlay(_display(reader, done), None), ui.reading: done}
        if reader.gallery:
            out[ui.similar] = [[round(score, 3), text] for text, score in reader.similar_reports(done)]
        yield out

    return write_report


def _wire(ui: SimpleNamespace, reader: StudyReader, examples: list[Example], limits: Limits) -> None:
    by_name = {e.name: e for e in examples}

    def pick(name):
        chosen = by_name.get(name)
        return (list(chosen.views) if chosen else None), None

    def show_word(state, event: gr.SelectData):
        if state is None or event.index is None:
            return gr.update()
        word, heatmap = reader.word_maps(state)[event.index if isinstance(event.index, int) else event.index[0]]
        return gr.update(value=overlay(_display(reader, state), heatmap), label=f"Attention while writing “{word}”")

    def show_label(state, event: gr.SelectData):
        observation = event.row_value[0] if state is not None and event.row_value else None
        if observation is None:
            return gr.update()
        cam = reader.label_cam(state, observation)
        return gr.update(value=overlay(_display(reader, state), cam), label=f"Grad-CAM: {observation}")

    def ask_question(view_paths, text):
        try:
            images = _read_files(view_paths, limits)
            if not images:
                raise UserError("Upload an image (or pick an example) to ask about.")
            return reader.answer(images[0], text)
        except UserError as error:
            raise gr.Error(str(error)) from None

    ui.example.change(pick, ui.example, [ui.views, ui.prior], queue=False)
    ui.write.click(_report_writer(ui, reader, limits), [ui.views, ui.prior, *ui.settings],
                   [ui.report, ui.note, ui.words, ui.labels, ui.shown, ui.reading, ui.similar], concurrency_limit=1)
    ui.words.select(show_word, ui.reading, ui.shown, concurrency_limit=1)
    ui.labels.select(show_label, ui.reading, ui.shown, concurrency_limit=1)
    ui.ask.click(ask_question, [ui.views, ui.question], ui.answer, concurrency_limit=1)


def create_page(reader: StudyReader, examples: list[Example], limits: Limits) -> gr.Blocks:
    positions = reader.model.max_text_positions() or 512
    with gr.Blocks(title="medvlm", analytics_enabled=False) as page:
        gr.Markdown(BANNER.format(name=reader.name))
        with gr.Row():
            with gr.Column(scale=1):
                ui = _study_inputs(examples, positions)
            with gr.Column(scale=2):
                _results(ui)
        _extras(ui, reader)
        ui.reading = gr.State(None)
        _wire(ui, reader, examples, limits)
    page.queue(max_size=limits.max_queue, default_concurrency_limit=1)
    return page
