"""The Gradio page: upload or pick a study, read the streamed report, click a word for its
cross-attention (or a label for its Grad-CAM), ask a question, see similar training reports and
the model card. All model work goes through the `StudyReader`."""

from __future__ import annotations

from pathlib import Path

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
    transform = reader.processor.image_transform
    mean = transform.mean[0] if isinstance(transform.mean, (list, tuple)) else transform.mean
    std = transform.std[0] if isinstance(transform.std, (list, tuple)) else transform.std
    return (reading.pixels[0, 0].float().cpu().numpy() * std + mean).clip(0, 1)


def create_page(reader: StudyReader, examples: list[Example], limits: Limits) -> gr.Blocks:
    by_name = {e.name: e for e in examples}
    positions = reader.model.max_text_positions() or 512
    with gr.Blocks(title="medvlm", analytics_enabled=False) as page:
        gr.Markdown(BANNER.format(name=reader.name))
        reading = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                views = gr.File(label="Study: one or more views (PNG, JPEG or DICOM; the first is read)",
                                file_count="multiple", type="filepath", elem_id="views")
                prior = gr.File(label="Prior study (optional)", file_count="multiple", type="filepath",
                                elem_id="prior")
                example = gr.Dropdown([e.name for e in examples], value=None, label="Or pick an example",
                                      elem_id="example")
                with gr.Accordion("Advanced", open=False):
                    num_beams = gr.Slider(1, 8, value=1, step=1, label="Beams (1 streams the report)")
                    max_new_tokens = gr.Slider(8, min(512, positions), value=min(DEFAULT_MAX_NEW_TOKENS, positions),
                                               step=1, label="Longest report (tokens)")
                    do_sample = gr.Checkbox(False, label="Sample instead of greedy / beam search")
                    temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature (sampling)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (sampling)")
                    no_repeat = gr.Slider(0, 6, value=0, step=1, label="No repeated n-grams of this size (0 off)")
                    penalty = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty (1 off)")
                write = gr.Button("Write report", variant="primary", elem_id="write-report")
            with gr.Column(scale=2):
                report = gr.Textbox(label="Report", lines=5, interactive=False, elem_id="report")
                note = gr.Markdown("", elem_id="note")
                words = gr.HighlightedText(label="Click a word to see where the model looked while writing it",
                                           combine_adjacent=False, show_legend=False, show_inline_category=False,
                                           color_map={"word": "#e8eefc"}, elem_id="words")
                shown = gr.Image(label="Image / attention", type="numpy", interactive=False, elem_id="overlay",
                                 height=DISPLAY_SIZE)
                labels = gr.Dataframe(headers=["observation", "label"], label="Labels of the report (click a row for "
                                      "its Grad-CAM; 1 positive, 0 negative, -1 uncertain, blank not mentioned)",
                                      interactive=False, elem_id="labels")
        with gr.Accordion("Ask a question about the image", open=reader.can_vqa, visible=reader.can_vqa):
            question = gr.Textbox(label="Question", elem_id="question")
            ask = gr.Button("Ask", elem_id="ask")
            answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
        with gr.Accordion("Most similar training reports", open=False, visible=bool(reader.gallery)):
            similar = gr.Dataframe(headers=["similarity", "report"], interactive=False, elem_id="similar")
        with gr.Accordion("Model card", open=False):
            gr.Markdown(reader.model_card(), elem_id="model-card")

        def pick(name):
            chosen = by_name.get(name)
            return (list(chosen.views) if chosen else None), None

        example.change(pick, example, [views, prior], queue=False)

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
            yield {report: "", note: f"*{message}*" if message else "", words: None, labels: None}
            done = None
            for text, done in reader.stream_report(images[0], settings):
                yield {report: text}
            maps = reader.word_maps(done)
            rows = [[name, "" if value is None else value] for name, value in reader.labels(done.text).items()]
            out = {report: done.text, words: [(w + " ", "word") for w, _ in maps], labels: rows,
                   shown: overlay(_display(reader, done), None), reading: done}
            if reader.gallery:
                out[similar] = [[round(score, 3), text] for text, score in reader.similar_reports(done)]
            yield out

        write.click(write_report, [views, prior, num_beams, max_new_tokens, do_sample, temperature, top_p,
                                   no_repeat, penalty],
                    [report, note, words, labels, shown, reading, similar], concurrency_limit=1)

        def show_word(state, event: gr.SelectData):
            if state is None or event.index is None:
                return gr.update()
            index = event.index if isinstance(event.index, int) else event.index[0]
            word, heatmap = reader.word_maps(state)[index]
            return gr.update(value=overlay(_display(reader, state), heatmap), label=f"Attention while writing "
                                                                                      f"“{word}”")

        words.select(show_word, reading, shown, concurrency_limit=1)

        def show_label(state, event: gr.SelectData):
            if state is None or event.index is None:
                return gr.update()
            observation = event.row_value[0] if event.row_value else None
            if observation is None:
                return gr.update()
            cam = reader.label_cam(state, observation)
            return gr.update(value=overlay(_display(reader, state), cam), label=f"Grad-CAM: {observation}")

        labels.select(show_label, reading, shown, concurrency_limit=1)

        def ask_question(view_paths, text):
            try:
                images = _read_files(view_paths, limits)
                if not images:
                    raise UserError("Upload an image (or pick an example) to ask about.")
                return reader.answer(images[0], text)
            except UserError as error:
                raise gr.Error(str(error)) from None

        ask.click(ask_question, [views, question], answer, concurrency_limit=1)
    page.queue(max_size=limits.max_queue, default_concurrency_limit=1)
    return page
