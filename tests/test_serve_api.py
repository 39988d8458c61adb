"""`medvlm serve`'s JSON API through a real server process on a free localhost port."""

import io
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the serve extra is not installed: pip install -e '.[serve]'")
import requests  # noqa: E402
from PIL import Image  # noqa: E402

from serving import Server  # noqa: E402
from tiny import ROOT, TINY, load_script, write_dicom  # noqa: E402

PHI = ("Doe^Jane", "PID-4711-SECRET", "19450102", "ACC-99-SECRET")


def png_bytes(size: int = 64, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def vqa_model(tmp_path_factory):
    """A tiny model trained two steps on the synthetic questions: a checkpoint 'trained for VQA'."""
    out = tmp_path_factory.mktemp("vqa")
    options = "data.options={num_train: 24, num_validation: 8, num_test: 8, seed: 3, vqa: true, questions_per_study: 2}"
    assert load_script("train").main(["--config", str(ROOT / "configs/demo.yaml"), f"train.output_dir={out}",
                                      "train.max_steps=2", "train.eval_every=0", "train.save_every=0", *TINY,
                                      options]) == 0
    return out / "final"


@pytest.fixture(scope="module")
def server(vqa_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    running = Server(vqa_model, log, "--max-pixels", "40000", "--max-queue", "2", "--max-upload-mb", "1")
    yield running
    running.stop()


def report(server, *files, **fields):
    return requests.post(server.url + "/v1/report", files=[("images", f) for f in files],
                         data={"max_new_tokens": "6", **fields}, timeout=120)


def test_health_names_the_model(server):
    body = requests.get(server.url + "/healthz", timeout=10).json()
    assert body["status"] == "ok" and body["model"].endswith("final") and body["version"] and body["vqa"] is True


def test_report_for_a_png_has_text_labels_and_time(server):
    answer = report(server, ("frontal.png", png_bytes(), "image/png"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert isinstance(body["report"], str) and body["elapsed_s"] > 0
    assert len(body["labels"]) == 14 and set(body["labels"].values()) <= {1, 0, -1, None}
    assert body["note"] is None


def test_two_views_and_a_prior_are_read_as_the_model_can_and_say_so(server):
    answer = report(server, ("frontal.png", png_bytes(), "image/png"), ("lateral.png", png_bytes(seed=1), "image/png"))
    assert answer.status_code == 200 and "first image only" in answer.json()["note"]


def test_report_for_a_dicom_never_echoes_or_logs_its_header(server, tmp_path):
    path = tmp_path / "study.dcm"
    write_dicom(path, (np.random.default_rng(2).random((64, 64)) * 4095).astype(np.uint16), PatientName=PHI[0],
                PatientID=PHI[1], PatientBirthDate=PHI[2], StudyDate=PHI[2], AccessionNumber=PHI[3])
    answer = report(server, ("study.dcm", path.read_bytes(), "application/dicom"))
    assert answer.status_code == 200, answer.text
    broken = report(server, ("broken.dcm", path.read_bytes()[:400], "application/dicom"))
    assert broken.status_code == 400
    for text in (answer.text, broken.text, server.log_path.read_text()):
        assert not any(field in text for field in PHI)


@pytest.mark.parametrize("name, data, status, reason", [
    ("empty.png", b"", 400, "empty_file"),
    ("notes.png", b"this is a text file, not an image\n" * 10, 400, "corrupt_image"),
    ("huge.png", png_bytes(size=256), 413, "too_many_pixels"),      # 65,536 pixels > --max-pixels 40000
    ("big.png", b"\x89PNG" + bytes(2 * 2**20), 413, "too_large"),    # 2 MiB > --max-upload-mb 1
])
def test_bad_uploads_get_a_4xx_with_a_message(server, name, data, status, reason):
    answer = report(server, (name, data, "image/png"))
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["reason"] == reason and name in body["error"] and "Traceback" not in answer.text


def test_bad_settings_and_missing_images_are_400s(server):
    assert report(server, ("a.png", png_bytes(), "image/png"), num_beams="many").status_code == 400
    assert report(server, ("a.png", png_bytes(), "image/png"), beams="2").json()["reason"] == "bad_setting"
    missing = requests.post(server.url + "/v1/report", data={"max_new_tokens": "4"}, timeout=30)
    assert missing.status_code == 400 and missing.json()["reason"] == "no_images"


def test_streamed_report_ends_with_the_full_answer_and_time_to_first_token(server):
    answer = requests.post(server.url + "/v1/report/stream", files=[("images", ("a.png", png_bytes(), "image/png"))],
                           data={"max_new_tokens": "6"}, timeout=120)
    lines = [json.loads(line) for line in answer.text.splitlines()]
    final = lines[-1]
    assert answer.status_code == 200 and final["report"] == (lines[-2]["text"] if len(lines) > 1 else final["report"])
    assert final["first_token_s"] is None or 0 < final["first_token_s"] <= final["elapsed_s"]


def test_vqa_answers_a_question(server):
    answer = requests.post(server.url + "/v1/vqa", files=[("image", ("a.png", png_bytes(), "image/png"))],
                           data={"question": "Is there a pleural effusion?"}, timeout=60)
    assert answer.status_code == 200 and isinstance(answer.json()["answer"], str)
    empty = requests.post(server.url + "/v1/vqa", files=[("image", ("a.png", png_bytes(), "image/png"))],
                          data={"question": " "}, timeout=60)
    assert empty.status_code == 400 and empty.json()["reason"] == "empty_question"


def test_ten_concurrent_requests_are_all_answered_or_told_busy(server):
    def one(i):
        return report(server, (f"{i}.png", png_bytes(seed=i), "image/png"), max_new_tokens="24")

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(one, range(10)))
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1, statuses
    for a in answers:
        body = a.json()
        assert ("report" in body) if a.status_code == 200 else (body["reason"] == "busy")
    assert report(server, ("after.png", png_bytes(), "image/png")).status_code == 200  # the queue drained


def test_the_server_writes_only_into_its_own_temporary_folder_and_removes_it(vqa_model, tmp_path):
    before = set(Path(tempfile.gettempdir()).glob("medvlm-serve-*"))
    beside_model = sorted(p.name for p in vqa_model.parent.iterdir())
    in_model = sorted(p.name for p in vqa_model.iterdir())
    running = Server(vqa_model, tmp_path / "log.txt")
    try:
        during = set(Path(tempfile.gettempdir()).glob("medvlm-serve-*")) - before
        assert len(during) == 1
        assert report(running, ("a.png", png_bytes(), "image/png")).status_code == 200
    finally:
        running.stop()
    assert not any(p.exists() for p in during)
    assert running.process.returncode == 0
    assert sorted(p.name for p in vqa_model.parent.iterdir()) == beside_model  # nothing written beside the model
    assert sorted(p.name for p in vqa_model.iterdir()) == in_model               # or into it
