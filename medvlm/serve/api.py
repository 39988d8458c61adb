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


def create_api(reader: StudyReader, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="medvlm", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    gate = Gate(limits.max_queue)
    app.state.gate, app.state.reader, app.state.limits = gate, reader, limits

    @app.exception_handler(UploadError)
    async def bad_upload(request, error: UploadError):
        return _error(error.status, str(error), error.reason)

    @app.exception_handler(UserError)
    async def bad_input(request, error: UserError):
        return _error(400, str(error), getattr(error, "reason", None) or "bad_input")

    @app.exception_handler(Busy)
    async def busy(request, error):
        return _error(503, f"busy: {gate.capacity} requests are already running or waiting; retry shortly", "busy")

    @app.exception_handler(TimeoutError)
    async def too_slow(request, error):
        return _error(504, f"{error} ({limits.timeout_s:g} s)", "timeout")

    @app.exception_handler(Exception)
    async def unexpected(request, error):
        logger.error("request %s failed: %s", request.url.path, type(error).__name__)
        return _error(500, f"the server failed to process the request ({type(error).__name__})", "internal")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": reader.name, "version": __version__, "vqa": reader.can_vqa}

    async def study(request: Request):
        """(first image, note, settings) of a /v1/report form; the gate is entered by the caller."""
        form = await _form(request, limits)
        views = await _files(form, "images", limits)
        prior = await _files(form, "prior", limits)
        if not views:
            raise UploadError("images: expected one or more image files (PNG, JPEG or DICOM)", reason="no_images")
        settings = parse_settings({k: v for k, v in form.multi_items() if k not in ("images", "prior")})
        # every file is checked, so a broken lateral is reported even though the first view is read
        images = [await run_in_threadpool(read_upload, data, name, limits) for name, data in views + prior]
        return images[0], study_note(len(views), len(prior)), settings

    def answer_of(reading, note) -> dict:
        return {"report": reading.text, "labels": reader.labels(reading.text), "elapsed_s": round(reading.elapsed_s, 3),
                "note": note}

    @app.post("/v1/report")
    async def report(request: Request):
        gate.enter()
        try:
            deadline = time.monotonic() + limits.timeout_s
            image, note, settings = await study(request)
            work = run_in_threadpool(reader.report, image, settings, deadline)
            reading = await asyncio.wait_for(work, limits.timeout_s + 5)  # the deadline stops it first
            return answer_of(reading, note)
        finally:
            gate.leave()

    @app.post("/v1/report/stream")
    async def report_stream(request: Request):
        gate.enter()
        try:
            deadline = time.monotonic() + limits.timeout_s
            image, note, settings = await study(request)
        except BaseException:
            gate.leave()
            raise

        async def lines():
            try:
                async for text, reading in iterate_in_threadpool(reader.stream_report(image, settings, deadline)):
                    if reading is None:
                        yield json.dumps({"text": text}) + "\n"
                    else:
                        yield json.dumps({**answer_of(reading, note), "first_token_s": reading.first_token_s}) + "\n"
            except TimeoutError as error:  # the status is sent already: the last line says it
                yield json.dumps({"error": str(error), "reason": "timeout"}) + "\n"
            finally:
                gate.leave()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/v1/vqa")
    async def vqa(request: Request):
        gate.enter()
        try:
            if not reader.can_vqa:
                raise UploadError(f"{reader.name} was not trained to answer questions (train on VQA data, e.g. "
                                  "configs/vqa_demo.yaml)", status=400, reason="no_vqa")
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
            gate.leave()

    return app
