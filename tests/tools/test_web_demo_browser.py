"""The web viewer in a real browser: Debian's headless Chromium driven by Selenium against `tools/web_demo.py`
started on a free localhost port. Upload a shapes scene, caption it, check the words appear and that hovering and
clicking one shows its point and box; caption a box clicked on the image; see an error as one line in the page.

It saves a screenshot of the page in the test's folder. With PIXELLLM_DOCS_SCREENSHOT=PATH (e.g.
docs/demo/web_demo.png) it runs the trained checkpoint instead of an untrained model (skips without it) and writes
the screenshot to PATH too: the docs' picture of the page is made by this test.
"""
import glob
import os
import shutil

import pytest
from PIL import Image

from ..conftest import REPO_ROOT
from .web_servers import SCENE, tool_server

pytest.importorskip("gradio", reason="the web viewer needs the `web` extra (pip install -e '.[web]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs Selenium (the `test` extra)")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DOCS_SCREENSHOT = os.environ.get("PIXELLLM_DOCS_SCREENSHOT", "")
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                "--hide-scrollbars")


def _browser():
    """Debian's chromium and chromium-driver (.ci/run installs them); never Selenium Manager's downloads."""
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("no chromium / chromedriver on PATH: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def _server_args():
    if not DOCS_SCREENSHOT:
        return ["--random-init", "--no-examples"]  # CI has no checkpoint: the page works the same untrained
    out = os.path.join(REPO_ROOT, "output", "pixelllm_tiny_shapes")
    if not [p for p in glob.glob(os.path.join(out, "model_final.*")) if p.endswith((".pth", ".safetensors"))]:
        pytest.skip(f"PIXELLLM_DOCS_SCREENSHOT: the docs' screenshot shows the trained checkpoint ({out}/model_final.*), absent")
    return []


def _click_image(d, img, x: float, y: float) -> None:
    """Click image pixel (x, y): Gradio shows the image scaled down to fit its box (never up), centred."""
    w, h, nw, nh = d.execute_script(
        "const i = arguments[0], b = i.getBoundingClientRect(); return [b.width, b.height, i.naturalWidth, i.naturalHeight];", img)
    r = min(w / nw, h / nh, 1.0)
    ActionChains(d).move_to_element_with_offset(img, round((x - nw / 2) * r), round((y - nh / 2) * r)).click().perform()


def _tab(d, name: str) -> None:
    next(t for t in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text.strip() == name).click()


def _visible_highlights(d):
    return [e.get_attribute("data-k") for e in d.find_elements(By.CSS_SELECTOR, "#viewer .plv-hl") if e.is_displayed()]


def test_caption_region_and_an_error_in_a_browser(tmp_path):
    with tool_server(*_server_args()) as url:
        d = _browser()
        try:
            wait = WebDriverWait(d, 60)
            d.get(url)
            wait.until(lambda d: d.find_elements(By.ID, "caption-btn"))
            d.find_element(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(SCENE)
            img = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#image-input img"))
            wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img))

            # caption: the words appear, each hovering / clicking shows its point and box
            d.find_element(By.ID, "caption-btn").click()
            try:
                wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#viewer .plv[data-task=caption] .plv-item"))
            except TimeoutException:
                pytest.fail(f"no caption words in the page: {d.find_element(By.ID, 'viewer').text!r}")
            row = d.find_element(By.CSS_SELECTOR, "#viewer .plv-row")
            items = row.find_elements(By.CSS_SELECTOR, ".plv-item")
            words = [e.text.split(" ", 1)[1] for e in items]
            assert [e.text.split(" ", 1)[0] for e in items] == [str(j + 1) for j in range(len(items))]
            assert words and words == row.get_attribute("data-caption").split()
            assert _visible_highlights(d) == []
            j = next((j for j, w in enumerate(words) if w in ("circle", "square", "triangle")), len(words) // 2)
            ActionChains(d).move_to_element(items[j]).perform()
            wait.until(lambda d: _visible_highlights(d) == [f"0-{j}"])
            items[j].click()  # pinned: stays when the mouse leaves
            ActionChains(d).move_to_element(d.find_element(By.TAG_NAME, "h2")).perform()
            assert _visible_highlights(d) == [f"0-{j}"]
            shot = tmp_path / "web_demo.png"
            d.save_screenshot(str(shot))
            # offline: everything the page loaded came from the viewer itself (no fonts, scripts or analytics)
            loaded = d.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
            assert loaded and [n for n in loaded if not n.startswith(url.rstrip("/"))] == []

            # region: two clicks on the image are a box's corners, and its caption follows
            _tab(d, "Region")
            _click_image(d, img, 20, 20)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#viewer .plv[data-task=preview]"))
            _click_image(d, img, 120, 110)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#viewer .plv[data-task=region] .plv-item"))
            prompt = d.find_element(By.CSS_SELECTOR, "#region-prompt input, #region-prompt textarea").get_attribute("value")
            box = [float(v) for v in prompt.split()]
            assert len(box) == 4 and all(abs(a - b) <= 2 for a, b in zip(box, [20, 20, 120, 110])), prompt

            # an error is one line in the page
            _tab(d, "Region")
            field = d.find_element(By.CSS_SELECTOR, "#region-prompt input, #region-prompt textarea")
            field.send_keys("\b" * 40 + "0 0 400 400")
            d.find_element(By.ID, "region-btn").click()
            toast = wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]") if e.text])
            assert "boxes outside the 256x192 image" in toast[0].text and "Traceback" not in d.page_source
        finally:
            d.quit()
    with Image.open(shot) as im:
        assert im.width >= 1000 and im.height >= 600
    if DOCS_SCREENSHOT:
        path = os.path.join(REPO_ROOT, DOCS_SCREENSHOT) if not os.path.isabs(DOCS_SCREENSHOT) else DOCS_SCREENSHOT
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with Image.open(shot) as im:  # a palette PNG: the page is flat colours, and the docs want it small
            im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        print(f"docs screenshot: {path} ({os.path.getsize(path) // 1024} KB)")
