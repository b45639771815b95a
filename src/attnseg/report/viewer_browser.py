"""Drive a headless Chromium over the DevTools protocol (pipe transport, standard library only):
open a report, wait for the case viewer, read its state from the page, take screenshots.

Used by the browser test of the viewer and to make the screenshot in docs/::

    python -m attnseg.report.viewer_browser REPORT.html --screenshot docs/viewer.png
    python -m attnseg.report.viewer_browser REPORT.html --screenshot S.png --element "#slice-weights"

Chromium runs with software WebGL (SwiftShader), no GPU, no network services, no first-run
steps and a fresh profile in a temporary folder. ``ATTNSEG_CHROMIUM`` names the executable when
it is not on ``PATH`` as ``chromium``/``chromium-browser``/``google-chrome``.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                  "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                  "--mute-audio", "--hide-scrollbars", "--disable-breakpad", "--disable-crash-reporter")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable (``ATTNSEG_CHROMIUM`` first), or ``None``."""
    env = os.environ.get("ATTNSEG_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium with one page, driven through ``--remote-debugging-pipe`` (fds 3/4)."""

    def __init__(self, executable: str | None = None, width: int = 1400, height: int = 1100,
                 timeout: float = 60.0) -> None:
        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError("no Chromium found (install the Debian package `chromium`, or set "
                                    "ATTNSEG_CHROMIUM)")
        self.timeout = timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="attnseg-chromium-")
        # move the pipe ends above 10 so that dup2 onto 3 and 4 in the child cannot clobber one of them
        cmd_r, cmd_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in os.pipe())
        res_r, res_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in os.pipe())

        def child_fds() -> None:  # Chromium reads commands on fd 3 and writes replies on fd 4
            os.dup2(cmd_r, 3)
            os.dup2(res_w, 4)

        self.log_path = Path(self._tmp.name) / "chromium.log"
        args = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self._tmp.name}/profile", "--remote-debugging-pipe",
                f"--window-size={width},{height}", "about:blank"]
        # Debian's chromium keeps crash reports under the config folder: keep them in the temporary one
        env = {**os.environ, "XDG_CONFIG_HOME": f"{self._tmp.name}/config", "XDG_CACHE_HOME": f"{self._tmp.name}/cache"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                         pass_fds=(3, 4), preexec_fn=child_fds)
        for fd in (cmd_r, res_w):
            os.close(fd)
        self._w, self._r = cmd_w, res_r
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        try:
            targets = self.call("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            self.session = self.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                     session=False)["sessionId"]
            self.call("Page.enable")
            self.call("Runtime.enable")
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    # ---- protocol
    def _send(self, msg: dict[str, Any]) -> None:
        data = json.dumps(msg).encode() + b"\0"
        while data:
            n = os.write(self._w, data)
            data = data[n:]

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from Chromium")
            ready, _, _ = select.select([self._r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (log: {self.log_text()[-2000:]})")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = True,
             timeout: float | None = None) -> dict[str, Any]:
        """Send one DevTools command (to the page's session unless ``session=False``) and return its result."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        self._send(msg)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    # ---- page helpers
    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str, timeout: float | None = None) -> Any:
        """Value of a JavaScript expression in the page (promises are awaited)."""
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                        timeout=timeout)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page error: {res['exceptionDetails'].get('text')} "
                               f"{res['exceptionDetails'].get('exception', {}).get('description', '')}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.1) -> Any:
        """Poll ``expression`` until it is truthy; returns its value (``TimeoutError`` otherwise)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {expression!r}")
            time.sleep(interval)

    def press(self, key: str) -> None:
        """Type one printable key (keydown + char + keyup) into the page."""
        for kind in ("keyDown", "keyUp"):
            params = {"type": kind, "key": key}
            if kind == "keyDown" and len(key) == 1:
                params["text"] = key
            self.call("Input.dispatchKeyEvent", params)

    def screenshot(self, clip: dict[str, float] | None = None, full_page: bool = False) -> bytes:
        """PNG of the viewport, of ``clip`` (page coordinates, CSS pixels), or of the whole page."""
        params: dict[str, Any] = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
            params["captureBeyondViewport"] = True
        elif full_page:
            w, h = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}
            params["captureBeyondViewport"] = True
        return base64.b64decode(self.call("Page.captureScreenshot", params)["data"])

    def element_box(self, selector: str) -> dict[str, float]:
        """Page-coordinate box of the first element matching ``selector``."""
        js = ("(() => { const r = document.querySelector(SEL).getBoundingClientRect();"
              " return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; })()")
        return self.evaluate(js.replace("SEL", json.dumps(selector)))

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"id": self._id + 1, "method": "Browser.close"})
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._tmp.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


VIEWER_STATE = "JSON.stringify(window.attnsegViewer ? window.attnsegViewer.state : null)"
VIEWER_READY = ("(() => { const v = window.attnsegViewer; return v && (v.state.ready || v.state.error) ? "
                "JSON.stringify(v.state) : null; })()")


def open_viewer(browser: Chromium, url: str, timeout: float = 60.0) -> dict[str, Any]:
    """Load ``url`` and wait until the viewer shows its first case (or reports an error); its state."""
    browser.navigate(url)
    return json.loads(browser.wait_for(VIEWER_READY, timeout))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Open a report in headless Chromium, wait for the case viewer, "
                                             "print its state and optionally save a screenshot.")
    ap.add_argument("page", help="report HTML file or URL")
    ap.add_argument("--screenshot", help="PNG to write (of the viewer, or of --element)")
    ap.add_argument("--case", help="case id to show")
    ap.add_argument("--errors", action="store_true", help="show the error overlay in the screenshot")
    ap.add_argument("--element", default="#attnseg-viewer",
                    help="CSS selector of what the screenshot shows (default: the viewer; a report section "
                         "is its id, e.g. '#slice-weights')")
    args = ap.parse_args(argv)
    url = args.page if "://" in args.page else Path(args.page).resolve().as_uri()
    if args.case:
        url += f"#case={args.case}"
    with Chromium() as b:
        t0 = time.perf_counter()
        state = open_viewer(b, url)
        print(f"viewer ready after {time.perf_counter() - t0:.2f} s: {json.dumps(state)}")
        if args.errors:
            b.evaluate("document.getElementById('v-err-on').click()")
            b.wait_for("window.attnsegViewer.state.opacity.err > 0", 10)
        if args.screenshot:
            time.sleep(0.5)
            b.evaluate(f"document.querySelector({json.dumps(args.element)}).scrollIntoView()")
            Path(args.screenshot).write_bytes(b.screenshot(clip=b.element_box(args.element)))
            print(f"screenshot: {args.screenshot}")
    return 0 if not state.get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
