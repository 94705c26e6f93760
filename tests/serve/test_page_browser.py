"""The page in a real headless browser (Debian's chromium through Selenium): upload, overlay, legend, opacity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab.imageio import overlay, read_image
from deeplab.serve import create_app

from .conftest import running_server, write_demo_png

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="no browser installed: the page test needs Debian's chromium and chromium-driver at /usr/bin "
           "(apt-get install chromium chromium-driver; .ci/run installs them)",
)
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync",
         "--window-size=1200,720")
# The overlay image's pixels as the browser decoded them, read back through a canvas (same origin).
READ_PIXELS = """
const img = document.getElementById('overlay');
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const context = canvas.getContext('2d');
context.drawImage(img, 0, 0);
return Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data);
"""
OVERLAY_READY = """
const img = document.getElementById('overlay');
return img.complete && img.naturalWidth > 0 && img.src.includes(arguments[0]);
"""


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch a browser or driver
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _overlay_pixels(driver, alpha: float) -> np.ndarray:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: d.execute_script(OVERLAY_READY, f"alpha={alpha}"))
    width, height = driver.execute_script("const i = document.getElementById('overlay');"
                                          "return [i.naturalWidth, i.naturalHeight];")
    return np.array(driver.execute_script(READ_PIXELS), dtype=np.uint8).reshape(height, width, 4)[..., :3]


def test_page_uploads_an_image_and_shows_the_overlay_and_legend(browser, loaded, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    predictor = loaded[0]
    path = write_demo_png(tmp_path / "scene.png", 0, (97, 129))
    image = read_image(path)
    mask = predictor.predict(image)
    with running_server(create_app(*loaded)) as url:
        browser.get(f"{url}/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: "deeplabv3plus_mobilenetv2" in d.find_element(By.ID, "model-info").text)
        browser.find_element(By.ID, "file").send_keys(str(path))

        pixels = _overlay_pixels(browser, 0.5)
        assert pixels.shape == (97, 129, 3)
        expected = overlay(image, mask, predictor.palette, 0.5).numpy().astype(int)
        assert np.abs(pixels.astype(int) - expected).max() <= 2, "the page shows another overlay"

        rows = browser.find_elements(By.CSS_SELECTOR, "#legend tbody tr")
        counts = torch.bincount(mask.flatten(), minlength=predictor.num_classes)
        present = sorted((int(i) for i in torch.nonzero(counts).flatten()), key=lambda i: -int(counts[i]))
        assert len(present) >= 3
        assert [row.find_elements(By.TAG_NAME, "td")[1].text for row in rows] == [predictor.classes[i] for i in present]
        top_share = rows[0].find_elements(By.TAG_NAME, "td")[2].text
        assert top_share == f"{100 * int(counts[present[0]]) / mask.numel():.1f}%"
        assert "97 px" in browser.find_element(By.ID, "status").text

        download = browser.find_element(By.ID, "download")
        assert download.get_attribute("href").endswith("/mask.png")
        assert download.get_attribute("download") == "scene_mask.png"

        browser.execute_script("const s = document.getElementById('opacity'); s.value = 80;"
                               "s.dispatchEvent(new Event('input'));")
        stronger = _overlay_pixels(browser, 0.8)
        expected = overlay(image, mask, predictor.palette, 0.8).numpy().astype(int)
        assert np.abs(stronger.astype(int) - expected).max() <= 2
        assert browser.find_element(By.ID, "opacity-value").text == "80%"

        screenshot = tmp_path / "serve_page.png"
        assert browser.save_screenshot(str(screenshot))
        shot = np.asarray(Image.open(screenshot).convert("RGB"))
        box = browser.find_element(By.ID, "overlay").rect
        region = shot[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
        assert region.size and region.std() > 20, "the screenshot shows no overlay where the page has it"

        text_file = tmp_path / "notes.png"
        text_file.write_bytes(b"not an image at all")
        browser.find_element(By.ID, "file").send_keys(str(text_file))
        wait.until(lambda d: "refused (415)" in d.find_element(By.ID, "status").text)
        assert "is not an image" in browser.find_element(By.ID, "status").text


DROP_TEXT_FILE = """
const file = new File(["just some notes"], "dropped.txt", {type: "text/plain"});
const data = new DataTransfer();
data.items.add(file);
const drop = new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true});
document.getElementById('drop').dispatchEvent(drop);
"""


def test_a_text_file_chosen_or_dropped_gets_the_servers_415_message(browser, loaded, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    notes = tmp_path / "notes.txt"
    notes.write_text("just some notes")
    with running_server(create_app(*loaded)) as url:
        browser.get(f"{url}/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: "deeplabv3plus_mobilenetv2" in d.find_element(By.ID, "model-info").text)
        status = browser.find_element(By.ID, "status")
        browser.find_element(By.ID, "file").send_keys(str(notes))
        wait.until(lambda d: "refused" in status.text)
        chosen = status.text
        assert chosen == ("notes.txt was refused (415): the upload (15 bytes) is not an image: expected one of "
                          "PNG, JPEG, BMP, GIF, TIFF, WEBP, PPM")
        assert "error" in status.get_attribute("class")
        browser.execute_script(DROP_TEXT_FILE)
        wait.until(lambda d: "dropped.txt was refused" in status.text)
        assert status.text == chosen.replace("notes.txt", "dropped.txt")
        icon = browser.execute_script("return document.querySelector('link[rel=icon]').href")
        assert icon == f"{url}/static/favicon.svg"
