"""The report in a real headless Chromium: it loads from file:// with no console error and no network request,
every plot container holds a rendered plot, and a screenshot is written.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: messages are JSON, each
ended by a NUL byte, read from fd 4 and written to fd 3), so console errors and uncaught exceptions are
received as events rather than scraped from logs. The slow test renders the report of a real smoke search.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

import report_run_fixture as fixture

from search.report import write_report

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make system-packages)")

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # The parallel-coordinates plot draws with WebGL; without a GPU Chromium needs this to use its software
    # renderer quietly (it otherwise falls back anyway, with a deprecation warning on every page).
    "--enable-unsafe-swiftshader",
    "--remote-debugging-pipe",
]
RENDER_CHECK = """JSON.stringify(Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => ({
  id: d.id, svg: d.querySelectorAll('svg.main-svg').length, traces: (d.data || []).length,
  webgl_missing: d.innerText.includes('WebGL is not supported')})))"""


class DevToolsPipe:
    """A headless Chromium and its DevTools protocol connection over pipes."""

    def __init__(self, profile: Path) -> None:
        to_chrome_read, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_write = os.pipe()

        def wire_fds() -> None:  # in the child: Chromium reads commands on fd 3, writes on fd 4
            os.dup2(to_chrome_read, 3)
            os.dup2(from_chrome_write, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=wire_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_read)
        os.close(from_chrome_write)
        self._buffer = b""
        self._last_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, params: Optional[dict] = None, session: Optional[str] = None,
             timeout: float = 60.0) -> dict[str, Any]:
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._next(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium sent nothing in time")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def render_in_chromium(page: Path, screenshot: Path, profile: Path, timeout: float = 90.0) -> dict[str, Any]:
    """Open `page` from file://, wait until every plot has drawn, screenshot the whole page.

    Returns {plots: [{id, svg, traces, webgl_missing}], errors: [text], requests: [url]}.
    """
    browser = DevToolsPipe(profile)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
            browser.call(domain, session=session)
        browser.call("Emulation.setDeviceMetricsOverride",
                     {"width": 1400, "height": 3000, "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired", timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            value = browser.call("Runtime.evaluate", {"expression": RENDER_CHECK, "returnByValue": True},
                                 session=session)["result"]["value"]
            plots = json.loads(value)
            if (plots and all(p["svg"] for p in plots)) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        size = browser.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
        shot = browser.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        }, session=session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
    return {"plots": plots, "errors": _errors(browser.events), "requests": _requests(browser.events)}


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            out.append(f"log: {params['entry'].get('text')}")
    return out


def _requests(events: list[dict[str, Any]]) -> list[str]:
    return [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]


def assert_renders(report_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """The shared browser assertions; returns what the browser saw."""
    screenshot = tmp_path / "screenshot.png"
    seen = render_in_chromium(report_dir / "index.html", screenshot, tmp_path / "profile")
    assert seen["errors"] == []
    offsite = [u for u in seen["requests"] if not u.startswith(("file://", "data:", "blob:", "about:"))]
    assert offsite == [], "the page must open offline"
    page = (report_dir / "index.html").read_text()
    containers = [p["id"] for p in seen["plots"]]
    assert containers and all(f'id="{c}"' in page for c in containers)
    assert page.count('class="plotly-graph-div"') == len(containers)
    for plot in seen["plots"]:
        assert plot["svg"] > 0 and plot["traces"] > 0 and not plot["webgl_missing"], plot
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    return seen


@needs_chromium
def test_report_of_a_finished_run_renders_in_chromium(tmp_path):
    run_dir = fixture.write_run(tmp_path / "runs")
    write_report(run_dir, png=False)
    seen = assert_renders(run_dir / "report", tmp_path)
    assert [p["id"] for p in seen["plots"]] == ["pareto", "generalisation", "memorization", "hypervolume",
                                                 "importance", "parallel", "losses", "rungs"]


@needs_chromium
def test_report_with_only_stopped_and_errored_trials_renders_and_says_so(tmp_path):
    run_dir = fixture.write_run(tmp_path / "runs", only=[5, 6])
    write_report(run_dir, png=False)
    seen = assert_renders(run_dir / "report", tmp_path)
    assert "pareto" in [p["id"] for p in seen["plots"]]
    assert "No trial has completed" in (run_dir / "report" / "index.html").read_text()


@needs_chromium
def test_pareto_png_is_rendered_by_kaleido(tmp_path):
    run_dir = fixture.write_run(tmp_path / "runs")
    result = write_report(run_dir)
    assert "png_error" not in result, result.get("png_error")
    data = Path(result["png"]).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


@pytest.mark.slow
@pytest.mark.timeout(1800)
@needs_chromium
def test_report_of_a_real_smoke_search(smoke_run, tmp_path):
    assert smoke_run["code"] == 0, smoke_run["err"][-3000:]
    run_dir = smoke_run["run_dir"]
    report = subprocess.run([sys.executable, "-m", "search", "report", str(run_dir)], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert report.returncode == 0, report.stderr
    result = json.loads(report.stdout)
    assert result["finished"] and "png" in result and result["states"]["COMPLETE"] >= 1
    tune_summary = json.loads(smoke_run["out"].strip().splitlines()[-1])
    assert sorted(result["front"]) == sorted(f"#{t['optuna_trial']}" for t in tune_summary["pareto"])
    seen = assert_renders(run_dir / "report", tmp_path)
    assert {"pareto", "hypervolume", "losses", "rungs"} <= {p["id"] for p in seen["plots"]}
    for label, config in result["configs"].items():
        assert Path(config).is_file(), label


@needs_chromium
def test_the_browser_check_sees_console_errors_exceptions_and_unrendered_plots(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><div id='empty' class='plotly-graph-div'></div>"
        "<script>console.error('broken on purpose'); null.boom;</script></body></html>"
    )
    seen = render_in_chromium(page, tmp_path / "shot.png", tmp_path / "profile", timeout=5)
    assert any("broken on purpose" in e for e in seen["errors"])
    assert any(e.startswith("exception:") and "null" in e for e in seen["errors"])
    assert seen["plots"] == [{"id": "empty", "svg": 0, "traces": 0, "webgl_missing": False}]
