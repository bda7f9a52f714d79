"""The web demo in a real browser: Debian's headless Chromium drives the page served on a loopback port."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magicremover.config import compose_config
from magicremover.experiments.app import Demo, caption_words, drawn_mask, framed

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def test_word_picker_and_drawn_mask():
    assert caption_words("a photo of a red circle, a red circle") == ["a", "photo", "of", "red", "circle"]
    layer = Image.new("RGBA", (8, 6))
    assert drawn_mask({"layers": [layer]}) is None and drawn_mask(None) is None
    layer.putpixel((2, 3), (255, 255, 255, 255))
    mask = np.asarray(drawn_mask({"background": None, "layers": [layer]}))
    assert mask.shape == (6, 8) and mask[3, 2] == 255 and mask.sum() == 255


def test_the_input_panel_draws_each_passes_object_box_and_crop():
    locate = [
        {"window": [0, 0, 200, 100], "region": [30, 30, 70, 70]},
        {"window": [0, 0, 99, 99], "region": [40, 40, 60, 60]},
    ]
    framing = {"used": "crop", "region": [40, 40, 60, 60], "crop": [20, 20, 80, 80], "locate": locate}
    passes = [{"framing": framing}, {"framing": {"used": "resize", "region": [100, 10, 120, 30]}}]
    shown = np.asarray(framed(Image.new("RGB", (200, 100)), {"passes": passes}))
    assert tuple(shown[20, 50]) == (255, 210, 0) and tuple(shown[40, 50]) == (255, 40, 40)  # crop, object box
    assert tuple(shown[10, 110]) == (255, 40, 40) and tuple(shown[90, 150]) == (0, 0, 0)  # a located box, no crop
    assert tuple(shown[30, 50]) == (40, 120, 255)  # the coarse pass's box


def test_each_method_inverts_as_its_preset_says_unless_the_app_is_told_and_gets_only_its_own_sliders(tmp_path):
    demo = Demo(compose_config("app", ["device=cpu", "cache_dir=null"]), tmp_path)
    fast, default, p2p = (
        demo.pipeline(m, 10, 0.5, 0.3).cfg for m in ("magicremover_fast", "magicremover", "p2p_reweight")
    )
    assert (fast.inversion.method, default.inversion.method) == ("negative_prompt", "null_text")
    assert fast.inversion.num_inference_steps == 10 and default.method.lambda_ == 0.5
    assert default.method.mask_threshold == 0.3 and "lambda_" not in p2p.method
    told = Demo(compose_config("app", ["device=cpu", "cache_dir=null"]), tmp_path, ["inversion=ddim"])
    assert told.pipeline("magicremover_fast", 10, 0.5, 0.3).cfg.inversion.method == "ddim"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    overrides = [
        f"server.port={port}",
        "device=cpu",
        "cache_dir=null",
        f"out_dir={tmp_path / 'runs'}",
        "inversion=negative_prompt",
        "num_inference_steps=20",
    ]
    log = open(tmp_path / "app.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "magicremover.experiments.app", *overrides], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            if process.poll() is not None:
                pytest.fail(f"the app exited: {(tmp_path / 'app.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason="needs Debian's chromium and chromium-driver")
def test_the_page_removes_the_circle_in_a_real_browser(server, tmp_path, example_image):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    photo = example_image.resize((128, 96), Image.Resampling.BICUBIC)
    photo.save(tmp_path / "photo.png")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    try:
        browser.get(server)
        wait = WebDriverWait(browser, 60)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#photo input[type=file]")))
        browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(tmp_path / "photo.png"))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#photo img")))
        ticked = [
            el.text.strip()
            for el in browser.find_elements(By.CSS_SELECTOR, "#word label")
            if el.find_element(By.CSS_SELECTOR, "input").is_selected()
        ]
        assert ticked == ["circle"]  # the example's word, ticked; several may be
        browser.find_element(By.CSS_SELECTOR, "#run").click()
        WebDriverWait(browser, 300).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#output img")))
        time.sleep(1)  # let the other panels render before the screenshot
        shot = Path(os.environ.get("MAGICREMOVER_TEST_ARTIFACTS", tmp_path)) / "app.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(shot))
        sources = {
            key: browser.find_element(By.CSS_SELECTOR, f"#{key} img").get_attribute("src") for key in ("output", "mask")
        }
        # Mask mode: paint a stroke with the pointer in the upper left, away from the circle, and run again.
        canvas = browser.find_elements(By.CSS_SELECTOR, "#editor canvas")[-1]
        strokes = ActionChains(browser).move_to_element_with_offset(canvas, -90, -60).click_and_hold()
        strokes.move_by_offset(20, 0).move_by_offset(20, 0).release().perform()
        browser.find_element(By.CSS_SELECTOR, "#run").click()
        WebDriverWait(browser, 300).until(
            lambda b: b.find_element(By.CSS_SELECTOR, "#mask img").get_attribute("src") != sources["mask"]
        )
        painted_mask = _fetch(browser.find_element(By.CSS_SELECTOR, "#mask img").get_attribute("src"))
    finally:
        browser.quit()
    shown, mask = (_fetch(sources[key]) for key in ("output", "mask"))
    # The second run's mask follows the stroke (upper left) and leaves the circle (right of centre) alone.
    ys, xs = np.nonzero(painted_mask[..., 0] > 0)
    assert len(xs) and xs.mean() < 0.45 * painted_mask.shape[1] and ys.mean() < 0.45 * painted_mask.shape[0]
    assert painted_mask[48, 82, 0] == 0
    original = np.asarray(photo)
    assert shown.shape == original.shape  # the photo's own size, not the model's square
    red = (original[..., 0] > 150) & (original[..., 1] < 90) & (original[..., 2] < 90)
    assert red.sum() > 500 and shown[red][:, 0].mean() < original[red][:, 0].mean() - 40  # the circle is gone
    outside = mask[..., 0] == 0  # beyond the dilated mask shown on the page: the photo's own bytes
    assert 0.3 < outside.mean() and np.array_equal(shown[outside], original[outside])


def _fetch(url: str) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(urllib.request.urlopen(url, timeout=30).read())).convert("RGB"))
