"""The JSON API, for scripts and PACS-side integrations:

    GET  /healthz     -> {"status": "ok", "model": name, "version": medvlm version, "vqa": bool}
    POST /v1/report   multipart: images (one or more files), optional prior (files), optional
                      generation settings as fields (num_beams, max_new_tokens, do_sample, ...)
                      -> {"report", "labels": {observation: 1|0|-1|null}, "elapsed_s", "note"}
    POST /v1/report/stream   the same form -> NDJSON lines {"text": so far} ... then the
                      /v1/report object with "first_token_s" (time to first token, as the page streams)
    POST /v1/vqa      multipart: image, question -> {"answer"}

Errors are JSON {"error": message, "reason": key} with a 4xx status (400 unreadable or bad field,
413 too large, 503 busy, 504 too slow); an unexpected failure is a 500 with a one-line message and
no traceback. Labels: null is "not mentioned" (CheXpert's blank).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import UploadFile

from .. import __version__
from ..errors import UserError
from .reader import StudyReader, parse_settings, study_note
from .uploads import Limits, UploadError, read_upload

logger = logging.getLogger("medvlm.serve")


class Busy(Exception):
    """The queue in front of the model is full."""


class Gate:
    """At most one request at the model and `max_queue` waiting; one more is turned away at once
    (503) rather than left to time out: a client can retry, and the server never piles up work."""

    def __init__(self, max_queue: int):
        self.capacity = 1 + max_queue
        self.admitted = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self.admitted >= self.capacity:
                raise Busy()
            self.admitted += 1

    def leave(self) -> None:
        with self._lock:
            self.admitted -= 1


def _error(status: int, message: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": message, "reason": reason}, status_code=status)


async def _files(form, field: str, limits: Limits) -> list[tuple[str, bytes]]:
    """The uploaded files under `field`, read whole (each at most max_upload_bytes + 1)."""
    out = []
    for item in form.getlist(field):
        if not isinstance(item, UploadFile):
            raise UploadError(f"{field}: expected a file upload, got a text field", reason="not_a_file")
        data = await item.read(limits.max_upload_bytes + 1)
        out.append((item.filename or field, data))
    return out


async def _form(request: Request, limits: Limits):
    """The multipart form, refused before parsing when the body is larger than a study may be."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes * limits.max_files + 2**20:
        raise UploadError(f"the request body is {declared} bytes, more than a study of {limits.max_files} files of "
                          f"at most {limits.max_upload_bytes} bytes may have", status=413, reason="too_large")
    try:
        return await request.form(max_files=limits.max_files, max_fields=64,
                                  max_part_size=limits.max_upload_bytes + 1)
    except Exception as error:  # starlette's MultiPartException, a malformed body
        raise UploadError(f"the request is not a readable multipart form ({error})", reason="bad_form") from None


def _handlers(gate: Gate, limits: Limits) -> dict:
    """Exception -> JSON answer: what the client got wrong is a 4xx, anything else a 500 without
    a traceback (logged by type only: a message could quote a file's contents)."""
    def upload(request, error: UploadError):
        return _error(error.status, str(error), error.reason)

    def user(request, error: UserError):
        return _error(400, str(error), getattr(error, "reason", None) or "bad_input")

    def busy(request, error):
        return _error(503, f"busy: {gate.capacity} requests are already running or waiting; retry shortly", "busy")

    def too_slow(request, error):
        return _error(504, f"{error} ({limits.timeout_s:g} s)", "timeout")

    def unexpected(request, error):
        logger.error("request %s failed: %s", request.url.path, type(error).__name__)
        return _error(500, f"the server failed to process the request ({type(error).__name__})", "internal")

    return {UploadError: upload, UserError: user, Busy: busy, TimeoutError: too_slow, Exception: unexpected}


def create_api(reader: StudyReader, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="medvlm", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gate, app.state.reader, app.state.limits = Gate(limits.max_queue), reader, limits
    for kind, handler in _handlers(app.state.gate, limits).items():
        app.add_exception_handler(kind, handler)
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/v1/report", report, methods=["POST"])
    app.add_api_route("/v1/report/stream", report_stream, methods=["POST"])
    app.add_api_route("/v1/vqa", vqa, methods=["POST"])
    return app


async def healthz(request: Request):
    reader = request.app.state.reader
    return {"status": "ok", "model": reader.name, "version": __version__, "vqa": reader.can_vqa}


async def _study(request: Request):
    """(first image, note, settings) of a /v1/report form; every file is decoded, so a broken
    lateral is reported even though only the first view is read."""
    limits = request.app.state.limits
    form = await _form(request, limits)
    views = await _files(form, "images", limits)
    prior = await _files(form, "prior", limits)
    if not views:
        raise UploadError("images: expected one or more image files (PNG, JPEG or DICOM)", reason="no_images")
    settings = parse_settings({k: v for k, v in form.multi_items() if k not in ("images", "prior")})
    images = [await run_in_threadpool(read_upload, data, name, limits) for name, data in views + prior]
    return images[0], study_note(len(views), len(prior)), settings


def _answer(reader: StudyReader, reading, note) -> dict:
    return {"report": reading.text, "labels": reader.labels(reading.text), "elapsed_s": round(reading.elapsed_s, 3),
            "note": note}


async def _admitted_study(request: Request):
    """Enter the gate, then read the study: (deadline, image, note, settings). The gate is left
    again when reading fails; otherwise the caller leaves it once the answer is sent."""
    state = request.app.state
    state.gate.enter()
    try:
        deadline = time.monotonic() + state.limits.timeout_s
        return (deadline, *await _study(request))
    except BaseException:
        state.gate.leave()
        raise


async def report(request: Request):
    state = request.app.state
    deadline, image, note, settings = await _admitted_study(request)
    try:
        work = run_in_threadpool(state.reader.report, image, settings, deadline)
        reading = await asyncio.wait_for(work, state.limits.timeout_s + 5)  # the deadline stops it first
        return _answer(state.reader, reading, note)
    finally:
        state.gate.leave()


async def report_stream(request: Request):
    state = request.app.state
    deadline, image, note, settings = await _admitted_study(request)

    async def lines():
        try:
            async for text, reading in iterate_in_threadpool(state.reader.stream_report(image, settings, deadline)):
                if reading is None:
                    yield json.dumps({"text": text}) + "\n"
                else:
                    yield json.dumps({**_answer(state.reader, reading, note),
                                      "first_token_s": reading.first_token_s}) + "\n"
        except TimeoutError as error:  # the status is sent already: the last line says it
            yield json.dumps({"error": str(error), "reason": "timeout"}) + "\n"
        finally:
            state.gate.leave()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def vqa(request: Request):
    state = request.app.state
    reader, limits = state.reader, state.limits
    state.gate.enter()
    try:
        if not reader.can_vqa:
            raise UploadError(f"{reader.name} was not trained to answer questions (train on VQA data, e.g. "
                              "configs/vqa_demo.yaml)", reason="no_vqa")
        deadline = time.monotonic() + limits.timeout_s
        form = await _form(request, limits)
        files = await _files(form, "image", limits)
        if len(files) != 1:
            raise UploadError(f"image: expected exactly one image file, got {len(files)}", reason="no_images")
        question = form.get("question")
        if not isinstance(question, str):
            raise UploadError("question: expected a text field with the question", reason="empty_question")
        image = await run_in_threadpool(read_upload, files[0][1], files[0][0], limits)
        answer = await asyncio.wait_for(run_in_threadpool(reader.answer, image, question, deadline),
                                        limits.timeout_s + 5)
        return {"answer": answer}
    finally:
        state.gate.leave()
