"""The live page in headless Chromium against a real ``lpm serve`` (rig engine): start a world character, feed the
microphone from a wav file (Chromium's fake capture device), see frames drawn and a barge-in from the mic.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them) and ``selenium`` (dev extra);
skipped when they are missing. Nothing downloads a browser: the system binaries are named explicitly.
Set ``LPM_BROWSER_SCREENSHOT=PATH`` to keep the screenshot (docs/serve_browser.png was made that way).
"""

from __future__ import annotations

import os
import shutil
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from lpm.runtime.audio_buffer import float_to_pcm16
from lpm.serve.load import spawn_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
TIMEOUT_S = 60.0

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="chromium / chromedriver missing (apt-get install chromium chromium-driver)")


def partner_wav(path: Path) -> Path:
    """The partner's voice as a 16 kHz mono wav: two world-voice lines with silence around them (Chromium loops it)."""
    from lpm.world.speech import PARTNER_VOICES, synthesize

    gap = np.zeros(16000, np.float32)
    lines = [synthesize(text, PARTNER_VOICES[0]).pcm for text in ("Sorry, can I ask something?", "Wait, one moment.")]
    pcm = np.concatenate([gap, lines[0], gap, lines[1], gap])
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(float_to_pcm16(pcm))
    return path


def wait_for(driver, condition, what: str, timeout: float = TIMEOUT_S, every=None):
    """Poll ``condition(driver)`` until truthy; ``every`` (optional) runs between polls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition(driver)
        if value:
            return value
        if every is not None:
            every(driver)
        time.sleep(0.25)
    log = driver.find_element("id", "log").text
    raise AssertionError(f"timed out waiting for {what}; page log:\n{log}")


def test_page_streams_frames_and_hears_the_microphone(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    wav = partner_wav(tmp_path / "partner.wav")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
                 "--window-size=1200,800", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    with spawn_server("--rig", "--res", "128") as url:
        page = url.replace("ws://", "http://").replace("/v1/session", "/")
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.get(page)
            wait_for(driver, lambda d: d.find_elements("css selector", "#style option"), "the styles from /v1/info")
            driver.execute_script("document.getElementById('style').value = 'anime';")
            driver.find_element("id", "connect").click()
            mic = driver.find_element("id", "mic")
            wait_for(driver, lambda d: mic.is_enabled(), "the session to be ready")
            mic.click()
            view = driver.find_element("id", "view")
            wait_for(driver, lambda d: int(view.get_attribute("data-frames") or 0) > 24, "frames on the canvas")
            wait_for(driver, lambda d: int(mic.get_attribute("data-sent") or 0) > 10, "microphone audio sent")
            say, last_say = driver.find_element("id", "speak"), [0.0]

            def keep_talking(_):  # the character speaks (again every 5 s), so a partner onset is a barge-in
                if time.monotonic() - last_say[0] > 5.0:
                    last_say[0] = time.monotonic()
                    say.click()

            wait_for(driver, lambda d: "barge-in" in d.find_element("id", "log").text,
                     "a barge-in from the microphone while the character speaks", every=keep_talking)
            stats = wait_for(driver, lambda d: d.find_element("id", "stats").text.startswith("fps") and
                             d.find_element("id", "stats").text, "stats")
            assert float(stats.split()[1]) > 0, stats
            frames_before = int(view.get_attribute("data-frames"))
            time.sleep(1.0)
            assert int(view.get_attribute("data-frames")) > frames_before  # still streaming
            driver.execute_script("window.scrollTo(0, 0);")
            shot = tmp_path / "serve_browser.png"
            driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
            if os.environ.get("LPM_BROWSER_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["LPM_BROWSER_SCREENSHOT"])
            driver.find_element("id", "stop").click()
            wait_for(driver, lambda d: "closed" in d.find_element("id", "log").text, "the session to close")
        finally:
            driver.quit()
