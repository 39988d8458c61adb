"""The page in a real browser: headless Chromium uploads a synthetic study, waits for the
streamed report, clicks a word and checks that its attention overlay appears, and that the page
asked nothing of any host but the server. Screenshots go to the test's folder, or to
$MEDVLM_SCREENSHOTS when set (the README's come from there)."""

import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("gradio", reason="the serve extra is not installed: pip install -e '.[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra has it)")
from PIL import Image  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from serving import Server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="no Chromium / chromedriver found: install "
                                "Debian's chromium and chromium-driver (README 'Try it in the browser')")
IU_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray_images_sample"


def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300",
                 "--disable-gpu"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def requested_hosts(driver) -> set[str]:
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if url.startswith(("http:", "https:", "ws:", "wss:")):
                hosts.add(urlparse(url).hostname)
    return hosts


def wait_for(driver, condition, timeout: float = 120):
    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: condition(d))


def test_upload_report_click_a_word_see_its_attention(pretrained, tmp_path):
    from medvlm.data.synthetic import make_study

    shots = Path(os.environ.get("MEDVLM_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    study = tmp_path / "synthetic_frontal.png"
    Image.fromarray(make_study(7, seed=11, image_size=256)["image"]).save(study)
    options = []
    if IU_SAMPLE.is_dir():  # the user's own studies as examples, as --examples takes them
        options = ["--examples", str(IU_SAMPLE)]
    checkpoint = os.environ.get("MEDVLM_BROWSER_CHECKPOINT") or pretrained
    server = Server(checkpoint, tmp_path / "server.log", *options)
    driver = browser()
    try:
        driver.get(server.url)
        upload = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#views input[type=file]"), 60)[0]
        upload.send_keys(str(study))
        wait_for(driver, lambda d: "synthetic_frontal" in d.find_element(By.ID, "views").text, 60)
        driver.find_element(By.ID, "write-report").click()
        words = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#words .token"))
        report = driver.find_element(By.CSS_SELECTOR, "#report textarea").get_attribute("value")
        assert report.strip() and report.split()[0].lower() in words[0].text.lower()
        table = driver.find_element(By.ID, "labels").text
        assert "No Finding" in table and "Cardiomegaly" in table
        driver.save_screenshot(str(shots / "serve_report.png"))

        before = driver.find_element(By.CSS_SELECTOR, "#overlay img").get_attribute("src")
        word = words[min(2, len(words) - 1)]
        clicked = word.text.strip()
        word.click()
        wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#overlay img").get_attribute("src") != before
                 and "Attention while writing" in d.find_element(By.ID, "overlay").text, 60)
        assert clicked in driver.find_element(By.ID, "overlay").text
        time.sleep(0.5)  # let the new image paint before the screenshot
        driver.save_screenshot(str(shots / "serve_attention.png"))

        hosts = requested_hosts(driver)
        assert hosts <= {"127.0.0.1"}, f"the page asked other hosts: {sorted(hosts - {'127.0.0.1'})}"
    finally:
        driver.quit()
        log = server.stop()
    assert "Traceback" not in log, log
    for name in ("serve_report.png", "serve_attention.png"):
        assert Image.open(shots / name).size[0] > 800
