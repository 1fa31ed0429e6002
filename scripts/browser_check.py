"""Browser test of shiftserve's web UI (run by scripts/browser-check.sh).

Drives Debian's headless Chromium through Selenium (pointed at /usr/bin/chromedriver: nothing is
downloaded) against a real server started with an API key, and checks what a user sees against
what the API answers for the same request:

* without a key and with a wrong one, the page shows the API's 401 message and asks for the key;
  with the right one it lists the models /v1/models lists;
* an image chosen from disk: the ranked classes and scores shown are the API's for those bytes;
  the kernel shown is the one /v1/models reports; the timing breakdown is filled in;
* a file that is no image: the page shows the API's status and error message;
* the microphone (Chromium's fake capture device playing a spoken-intent WAV): the recorded clip
  is a 16-bit PCM mono WAV, the intent shown is the API's answer for that clip, and it is the
  intent spoken in the fixture; an uploaded WAV shows the API's intent too;
* the live panel shows each model's request count as the statistics API has it, with latency;
* /docs renders the OpenAPI document (operations and schemas) with Swagger UI, and "Try it out"
  calls the server with the key typed into the playground;
* no page loads anything from another origin, and the console shows no script error or
  Content-Security-Policy violation;
* at phone width nothing overflows sideways.

Screenshots go to --artifacts. Prints one line per check and "browser: N passed, M failed".
"""

import argparse
import base64
import io
import json
import os
import signal
import struct
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import wave
from urllib.parse import urlparse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class Check(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise Check(msg)


class Api:
    def __init__(self, base, key):
        self.base = base
        self.key = key

    def call(self, path, data=None, content_type=None, key="default"):
        key = self.key if key == "default" else key
        req = urllib.request.Request(self.base + path, data=data, method="POST" if data is not None else "GET")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def padded_wav(src, dst, lead_s, tail_s):
    """The fixture with silence before and after (Chromium's fake device starts playing it when
    the page opens the microphone; the lead absorbs the time the recorder takes to start)."""
    with wave.open(src, "rb") as w:
        params = w.getparams()
        frames = w.readframes(w.getnframes())
    silence = lambda s: b"\0" * (int(s * params.framerate) * params.sampwidth * params.nchannels)
    with wave.open(dst, "wb") as w:
        w.setparams(params)
        w.writeframes(silence(lead_s) + frames + silence(tail_s))


class Ui:
    def __init__(self, args):
        self.args = args
        self.base = args.url
        self.api = Api(args.url, args.api_key)
        self.art = args.artifacts
        self.shots = []
        profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=args.work)
        fake_audio = os.path.join(args.work, "fake-mic.wav")
        padded_wav(args.wav, fake_audio, 0.8, 1.5)
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--disable-default-apps", "--disable-extensions",
            "--no-default-browser-check", "--lang=en-US", "--window-size=1440,1000",
            f"--user-data-dir={profile}",
            # Microphone: grant the permission and feed the capture device from the WAV, once.
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_audio}%noloop",
        ]:
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
        self.d.set_page_load_timeout(30)
        self.console = []

    def quit(self):
        self.d.quit()

    # -- helpers --

    def wait(self, cond, what, timeout=20):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1,
                                 ignored_exceptions=[NoSuchElementException, StaleElementReferenceException]
                                 ).until(lambda d: cond())
        except Exception:
            raise Check(f"timed out waiting for {what}")

    def q(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def qs(self, css):
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def text(self, css):
        return self.q(css).text.strip()

    def shot(self, name, full=True):
        path = os.path.join(self.art, name)
        if full:
            w, h = self.d.execute_script(
                "return [document.documentElement.clientWidth, Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)]")
            png = self.d.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}})["data"]
            with open(path, "wb") as f:
                f.write(base64.b64decode(png))
        else:
            self.d.save_screenshot(path)
        self.shots.append(path)

    def drain_console(self):
        self.console += self.d.get_log("browser")

    def result_cycle(self, action, timeout=20):
        """Marks the result stale, runs `action`, waits until the page shows a new answer or error."""
        self.d.execute_script("document.getElementById('result').dataset.state = 'stale'")
        action()
        self.wait(lambda: self.q("#result").get_attribute("data-state") in ("done", "error"),
                  "the page to show a result", timeout)
        return self.q("#result").get_attribute("data-state")

    def shown_predictions(self):
        return [(li.get_attribute("data-label"), float(li.get_attribute("data-score")))
                for li in self.qs("#predictions li")]

    def select_model(self, name):
        self.q(f'.model[data-model="{name}"]').click()
        self.wait(lambda: self.q(f'.model[data-model="{name}"]').get_attribute("aria-checked") == "true",
                  f"model {name} selected")

    def same_origin_only(self, page):
        urls = self.d.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])")
        base = urlparse(self.base)
        foreign = [u for u in urls if urlparse(u).netloc != base.netloc and not u.startswith(("data:", "blob:"))]
        expect(not foreign, f"{page} loaded from other origins: {foreign}")

    # -- checks --

    def check_api_key(self):
        status, body = self.api.call("/v1/models", key=None)
        expect(status == 401, f"/v1/models without a key answered {status}")
        self.d.get(self.base + "/")
        self.wait(lambda: not self.q("#key-panel").get_attribute("hidden"), "the key panel to open on 401")
        expect(self.text("#key-msg") == f"401: {body['error']}",
               f"key panel says {self.text('#key-msg')!r}, API said {body['error']!r}")
        expect("401" in self.text("#model-list") and body["error"] in self.text("#model-list"),
               f"model list shows {self.text('#model-list')!r}")
        self.shot("01-api-key-required.png")
        self.same_origin_only("/")

        status, wrong = self.api.call("/v1/models", key="not-the-key")
        expect(status == 401, f"wrong key answered {status}")
        self.q("#api-key").send_keys("not-the-key")
        self.q("#key-save").click()
        self.wait(lambda: self.text("#key-msg") == f"401: {wrong['error']}", "the wrong key's 401 to be shown")

        box = self.q("#api-key")
        box.clear()
        box.send_keys(self.args.api_key)
        self.q("#key-save").click()
        self.wait(lambda: self.q("#key-panel").get_attribute("hidden") is not None, "the key panel to close")
        _, models = self.api.call("/v1/models")
        want = [m["name"] for m in models["models"]]
        self.wait(lambda: [b.get_attribute("data-model") for b in self.qs(".model")] == want,
                  f"the model list {want}")
        self.models = {m["name"]: m for m in models["models"]}
        return f"401 shown without and with a wrong key; models {want}"

    def check_image(self):
        self.select_model("fashion")
        png = open(self.args.image, "rb").read()
        state = self.result_cycle(lambda: self.q("#image-file").send_keys(self.args.image))
        expect(state == "done", f"page shows {state}: {self.text('#result')!r}")
        status, api = self.api.call("/v1/models/fashion/predict?top_k=5", png, "image/png")
        expect(status == 200, f"API answered {status}")
        shown = self.shown_predictions()
        want = [(p["label"], p["score"]) for p in api["predictions"]]
        expect([l for l, _ in shown] == [l for l, _ in want], f"page shows {shown}, API answers {want}")
        expect(all(abs(a - b) < 1e-6 for (_, a), (_, b) in zip(shown, want)), f"scores differ: {shown} vs {want}")
        top = self.text("#predictions li:first-child .label")
        expect(top.startswith(api["predictions"][0]["label"]), f"top-1 reads {top!r}")
        kernel = self.q('#answer-meta dd[data-meta="kernel"]').text
        info = self.models["fashion"]
        expect(kernel.split(" · ")[0] == info["kernel_isa"], f"kernel shown {kernel!r}, ISA {info['kernel_isa']!r}")
        if info.get("layers"):
            kernels = [l["kernel"] for l in info["layers"]]
            most = max(set(kernels), key=kernels.count)
            expect(f"{most} ({kernels.count(most)} of {len(kernels)} layers)" in kernel,
                   f"kernel shown {kernel!r}, most layers run {most!r}")
        if info.get("layers"):
            rows = [tuple(td.get_attribute("textContent") for td in tr.find_elements(By.TAG_NAME, "td"))
                    for tr in self.qs("#layer-kernels-body tr")]
            want = [(l["node"], l["kernel"]) for l in info["layers"]]
            expect(rows == want, f"layer kernels shown {rows}, /v1/models has {want}")
        for k in ("queue", "preprocess", "inference", "other", "server total", "round trip"):
            v = self.q(f'#timing div[data-timing="{k}"] dd').text
            expect(v.endswith(" ms"), f"timing {k} shows {v!r}")
        expect(self.q('#answer-meta dd[data-meta="batch size"]').text.isdigit(), "batch size not shown")
        expect(self.q("#image-preview").get_attribute("hidden") is None, "no image preview")
        self.shot("02-image-prediction.png")
        return f"top-1 {shown[0][0]} ({shown[0][1]:.3f}) = API, kernel {kernel}"

    def check_bad_file(self):
        bad = os.path.join(self.args.work, "not-an-image.png")
        with open(bad, "wb") as f:
            f.write(b"this is a text file, not a PNG\n")
        state = self.result_cycle(lambda: self.q("#image-file").send_keys(bad))
        expect(state == "error", f"page shows {state} for a broken file")
        status, api = self.api.call("/v1/models/fashion/predict?top_k=5", open(bad, "rb").read(), "image/png")
        expect(status >= 400, f"API accepted a broken file ({status})")
        shown_status, shown_msg = self.text("#error-status"), self.text("#error-msg")
        expect(shown_status.startswith(f"HTTP {status}"), f"status shown {shown_status!r}, API {status}")
        expect(shown_msg == api["error"], f"message shown {shown_msg!r}, API {api['error']!r}")
        self.shot("03-bad-file-error.png")
        return f"{shown_status}: {shown_msg}"

    def check_microphone(self):
        self.select_model("intent")
        expect(self.q("#audio-input").get_attribute("hidden") is None, "no audio input for an audio model")
        self.q("#record-btn").click()
        self.wait(lambda: self.q("#record-btn").get_attribute("aria-pressed") == "true", "recording to start")
        time.sleep(3.4)
        state = self.result_cycle(lambda: self.q("#record-btn").click())
        expect(state == "done", f"page shows {state}: {self.text('#result')!r}")
        # The clip the page recorded and sent, read back from its download link.
        b64 = self.d.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch(document.getElementById('clip-download').href).then(r => r.arrayBuffer()).then(b => {
              let s = ''; const u = new Uint8Array(b);
              for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode.apply(null, u.subarray(i, i + 0x8000));
              done(btoa(s));
            }).catch(e => done('ERROR ' + e));""")
        expect(not b64.startswith("ERROR"), b64)
        clip = base64.b64decode(b64)
        with open(os.path.join(self.art, "recorded.wav"), "wb") as f:
            f.write(clip)
        with wave.open(io.BytesIO(clip), "rb") as w:
            expect(w.getsampwidth() == 2 and w.getnchannels() == 1 and w.getcomptype() == "NONE",
                   f"recorded WAV is {w.getparams()}")
            secs = w.getnframes() / w.getframerate()
            frames = w.readframes(w.getnframes())
        expect(2.5 < secs < 6, f"recorded {secs:.2f} s")
        peak = max(abs(v) for v in struct.unpack(f"<{len(frames) // 2}h", frames))
        expect(peak > 1000, f"the recording is silent (peak {peak})")
        status, api = self.api.call("/v1/models/intent/predict?top_k=5", clip, "audio/wav")
        expect(status == 200, f"API answered {status} for the recorded clip")
        shown = tuple(self.text(f"#intent-{k}") for k in ("action", "object", "location"))
        want = tuple(api["intent"][k] for k in ("action", "object", "location"))
        expect(shown == want, f"page shows intent {shown}, API answers {want} for the same clip")
        expect([l for l, _ in self.shown_predictions()] == [p["label"] for p in api["predictions"]],
               "ranked intents differ from the API's")
        _, fixture = self.api.call("/v1/models/intent/predict", open(self.args.wav, "rb").read(), "audio/wav")
        spoken = tuple(fixture["intent"][k] for k in ("action", "object", "location"))
        expect(shown == spoken, f"recorded speech understood as {shown}, the fixture says {spoken}")
        self.shot("04-microphone-intent.png")
        return f"{secs:.2f} s at {w.getframerate()} Hz, peak {peak}: intent {'/'.join(shown)} = API"

    def check_wav_upload(self):
        wav = self.args.wav
        state = self.result_cycle(lambda: self.q("#wav-file").send_keys(wav))
        expect(state == "done", f"page shows {state}: {self.text('#result')!r}")
        _, api = self.api.call("/v1/models/intent/predict", open(wav, "rb").read(), "audio/wav")
        shown = tuple(self.text(f"#intent-{k}") for k in ("action", "object", "location"))
        want = tuple(api["intent"][k] for k in ("action", "object", "location"))
        expect(shown == want, f"page shows {shown}, API {want}")
        return f"intent {'/'.join(shown)} = API"

    def live_rows(self):
        """The live table, read in one go (it is redrawn every 2 s)."""
        return self.d.execute_script("""
            const out = {};
            for (const tr of document.querySelectorAll('#live-body tr[data-model]')) {
              const row = {};
              for (const td of tr.querySelectorAll('td[data-col]')) row[td.dataset.col] = td.textContent;
              out[tr.dataset.model] = row;
            }
            return out;""")

    def check_live(self):
        def matches():
            _, stats = self.api.call("/v2/models/stats")
            rows = self.live_rows()
            return all(s["name"] in rows and
                       rows[s["name"]]["requests"].replace(",", "") == str(s["inference_stats"]["success"]["count"]) and
                       rows[s["name"]]["failed"].replace(",", "") == str(s["inference_stats"]["fail"]["count"])
                       for s in stats["model_stats"])

        self.wait(matches, "the live panel to show the statistics API's request counts", 15)
        rows = self.live_rows()
        fashion = rows["fashion"]
        for col in ("p50", "p95", "p99"):
            expect(fashion[col].endswith(" ms"), f"fashion {col} shows {fashion[col]!r}")
        expect(fashion["rate"].replace(".", "").isdigit(), f"rate shows {fashion['rate']!r}")
        self.shot("05-playground-full.png")
        return f"{len(rows)} models, request and failure counts = /v2/models/stats"

    def check_narrow(self):
        self.d.set_window_size(390, 844)
        time.sleep(0.3)
        over = self.d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        expect(over <= 0, f"the page overflows sideways by {over}px at 390px")
        self.shot("06-playground-phone.png")
        self.d.set_window_size(1440, 1000)
        return "no sideways overflow at 390 px"

    def check_docs(self):
        self.drain_console()
        self.d.get(self.base + "/docs")
        self.wait(lambda: len(self.qs(".opblock")) >= 15, "Swagger UI to render the operations", 30)
        _, spec = self.api.call("/api-doc/openapi.json")
        n_ops = sum(len(v) for v in spec["paths"].values())
        expect(len(self.qs(".opblock")) == n_ops, f"{len(self.qs('.opblock'))} operations shown, spec has {n_ops}")
        models = [e.text.strip() for e in self.qs("section.models .json-schema-2020-12__title")]
        for s in ("PredictResponse", "ErrorBody", "InferRequest"):
            expect(s in models, f"schema {s} not rendered ({models})")
        self.shot("07-docs.png", full=False)
        self.same_origin_only("/docs")

        op = self.q("#operations-task-list_models")
        op.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
        self.wait(lambda: op.find_elements(By.CSS_SELECTOR, ".try-out__btn"), "the Try it out button")
        op.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
        self.wait(lambda: op.find_elements(By.CSS_SELECTOR, ".execute"), "the Execute button")
        op.find_element(By.CSS_SELECTOR, ".execute").click()
        cell = ".live-responses-table tbody .response-col_status"
        self.wait(lambda: op.find_elements(By.CSS_SELECTOR, cell), "the live response")
        status = op.find_element(By.CSS_SELECTOR, cell).text.strip()
        expect(status == "200", f"Try it out got {status}")
        self.d.execute_script("arguments[0].scrollIntoView()", op)
        self.shot("08-docs-try-it.png", full=False)
        return f"{n_ops} operations, schemas rendered, Try it out -> {status}"

    def check_console(self):
        self.drain_console()
        bad = []
        for e in self.console:
            msg = e.get("message", "")
            # The 401/400 answers the tests provoke are logged by Chromium as failed loads.
            if "Failed to load resource" in msg and ("status of 401" in msg or "status of 400" in msg):
                continue
            if e.get("level") == "SEVERE" or "Content Security Policy" in msg:
                bad.append(msg)
        expect(not bad, f"console errors: {bad}")
        return f"{len(self.console)} console entries, none an error"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--wav", required=True)
    ap.add_argument("--work", default=tempfile.gettempdir())
    args = ap.parse_args()
    for a in ("artifacts", "image", "wav", "work"):
        setattr(args, a, os.path.abspath(getattr(args, a)))
    os.makedirs(args.artifacts, exist_ok=True)

    # `timeout` sends SIGTERM: leave through `finally` so that Chromium and the driver are closed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    t0 = time.monotonic()
    ui = Ui(args)
    passed, failed = 0, 0
    try:
        for name in ["api_key", "image", "bad_file", "microphone", "wav_upload", "live", "narrow", "docs", "console"]:
            t = time.monotonic()
            try:
                what = getattr(ui, "check_" + name)()
                passed += 1
                print(f"ok   {name:<11} {time.monotonic() - t:5.1f} s  {what}", flush=True)
            except Exception as e:
                failed += 1
                detail = str(e) if isinstance(e, Check) else traceback.format_exc()
                print(f"FAIL {name:<11} {time.monotonic() - t:5.1f} s  {detail}", flush=True)
                try:
                    ui.shot(f"failed-{name}.png")
                except Exception:
                    pass
                if name == "api_key":
                    break  # nothing else can run without the key
    finally:
        ui.quit()
    print("screenshots: " + ", ".join(os.path.basename(p) for p in ui.shots))
    print(f"browser checks took {time.monotonic() - t0:.0f} s")
    print(f"browser: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
