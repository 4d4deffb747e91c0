#!/usr/bin/env python3
"""Browser test of the `ldm serve` web page in headless Chromium (Debian's chromium + chromium-driver, Python selenium).

Usage: python tools/browser/page_test.py --ldm .build/debug/ldm --model models/shapes [--screenshot docs/server-page.png]

Starts `ldm serve --port 0` on loopback (with --api-auth, so the page's own requests carry the browser's Basic
credentials), loads the page, generates with the shipped model and checks that the progress bar moves, a live preview
appears and the image lands in the gallery with its parameters; then starts a long job and interrupts it; sends an image
to img2img, paints a mask and inpaints; reads a PNG back through the PNG-info drop zone's file input. Saves a
screenshot. Exits non-zero on any failure; the server is stopped with SIGINT and must exit 0.
"""
import argparse
import base64
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

USER, PASSWORD = "page", "test-secret"


def start_server(ldm, model):
    p = subprocess.Popen([ldm, "serve", "--model", model, "--port", "0", "--api-auth", f"{USER}:{PASSWORD}"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not m:
        p.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return p, int(m.group(1))


def browser():
    o = webdriver.ChromeOptions()
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000", "--disable-gpu"]:
        o.add_argument(a)
    for path in ["/usr/bin/chromium", "/usr/bin/chromium-browser"]:
        if os.path.exists(path):
            o.binary_location = path
    driver = "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
    return webdriver.Chrome(options=o, service=Service(driver) if driver else None)


def set_value(d, element_id, value):
    e = d.find_element(By.ID, element_id)
    e.clear()
    e.send_keys(str(value))


def progress_of(d):
    w = d.execute_script("return document.getElementById('bar').style.width") or "0%"
    return float(w.rstrip("%") or 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ldm", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--screenshot", default="docs/server-page.png")
    args = ap.parse_args()

    server, port = start_server(args.ldm, args.model)
    d = None
    try:
        d = browser()
        # Without credentials the page is refused; with them (URL userinfo) it loads and its fetches are authorized.
        d.get(f"http://127.0.0.1:{port}/")
        assert "ldm serve" not in d.page_source or "Generate" not in d.page_source, "page served without credentials"
        d.get(f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/")
        wait = WebDriverWait(d, 120, poll_frequency=0.05)
        wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) > 0)
        assert Select(d.find_element(By.ID, "model")).first_selected_option.get_attribute("value") == "shapes"
        assert "DPM++ 2M" in [o.text for o in Select(d.find_element(By.ID, "sampler")).options]

        # 1. Generate: progress moves, a live preview appears, the image lands in the gallery with its parameters.
        set_value(d, "width", 32); set_value(d, "height", 32); set_value(d, "steps", 300); set_value(d, "seed", 7)
        Select(d.find_element(By.ID, "sampler")).select_by_visible_text("DDIM")
        d.find_element(By.ID, "generate").click()
        seen = set()
        wait.until(lambda d: (seen.add(progress_of(d)) or True) and progress_of(d) > 0 and
                   (d.find_element(By.ID, "preview").get_attribute("src") or "").startswith("data:image/png"))
        wait.until(lambda d: (seen.add(progress_of(d)) or True) and len(d.find_elements(By.CSS_SELECTOR, "#gallery .card")) == 1)
        assert len([p for p in seen if 0 < p < 100]) >= 2, f"progress did not move: {sorted(seen)}"
        text = d.find_element(By.CSS_SELECTOR, "#gallery .card pre").text
        assert "Seed: 7" in text and "Steps: 300" in text and "Sampler: DDIM" in text, text
        assert "succeeded" in d.find_element(By.ID, "status").text

        # 2. Interrupt a long job: it ends early with the image reached so far.
        set_value(d, "steps", 1000); set_value(d, "seed", 8)
        d.find_element(By.ID, "generate").click()
        wait.until(lambda d: "step" in d.find_element(By.ID, "status").text and progress_of(d) > 0)
        d.find_element(By.ID, "interrupt").click()
        wait.until(lambda d: "interrupted" in d.find_element(By.ID, "status").text)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .card")) == 2)

        # 3. Send to img2img, paint a mask, inpaint.
        d.find_element(By.CSS_SELECTOR, "#gallery .card button.send").click()
        wait.until(lambda d: d.find_element(By.ID, "img2img").is_displayed())
        canvas = d.find_element(By.ID, "mask")
        ActionChains(d).move_to_element_with_offset(canvas, -40, -40).click_and_hold().move_by_offset(60, 30).move_by_offset(20, 40).release().perform()
        white = d.execute_script("const c=document.getElementById('mask');const p=c.getContext('2d').getImageData(0,0,c.width,c.height).data;"
                                 "let n=0;for(let i=0;i<p.length;i+=4){if(p[i]>128)n++;}return n;")
        assert white > 0, "the mask painter drew nothing"
        set_value(d, "steps", 20); set_value(d, "strength", 1)
        d.find_element(By.ID, "generate").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .card")) == 3)
        assert "Denoising strength: 1" in d.find_element(By.CSS_SELECTOR, "#gallery .card pre").text
        assert not d.find_element(By.ID, "error").text, d.find_element(By.ID, "error").text

        # 4. PNG info: the newest image read back through the drop zone's file input.
        src = d.find_element(By.CSS_SELECTOR, "#gallery .card img").get_attribute("src")
        with tempfile.NamedTemporaryFile(suffix=".png", delete=False) as f:
            f.write(base64.b64decode(src.split(",", 1)[1]))
        d.find_element(By.ID, "pngfile").send_keys(f.name)
        wait.until(lambda d: "Seed:" in d.find_element(By.ID, "pnginfo").text)
        os.unlink(f.name)

        if args.screenshot:
            d.find_element(By.ID, "txtmode").click()
            d.save_screenshot(args.screenshot)
        print("browser test: page loaded, generated with live progress/preview, interrupted, inpainted with a painted mask, read PNG info")
    finally:
        if d is not None:
            d.quit()
        server.send_signal(signal.SIGINT)
        try:
            rc = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise SystemExit("server did not stop on SIGINT")
    if rc != 0:
        raise SystemExit(f"server exited {rc} on SIGINT")


if __name__ == "__main__":
    sys.exit(main())
