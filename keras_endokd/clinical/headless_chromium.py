"""Opens a local HTML page in headless Chromium, screenshots it and lists what it loaded.

This checks report.html the way a reader's browser sees it: every request the page makes and
every script error or console error, through the Chrome DevTools Protocol
(https://chromedevtools.github.io/devtools-protocol/) over `--remote-debugging-pipe`: Chromium
reads JSON commands on file descriptor 3 and writes replies and events on 4, each message ended
by a NUL byte. No websocket library and no network port are needed. Requests to http(s) are
blocked (and still recorded), so the check never waits on the network.

Chromium is not a dependency: `find_chromium()` returns None when none is installed (Debian:
`apt-get install chromium`), and callers skip.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Optional

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
              "chrome", "headless_shell")
LOCAL_SCHEMES = ("data:", "about:", "blob:")


def find_chromium() -> Optional[str]:
    """The Chromium (or Chrome) binary: $CHROME_BIN, else the first of CANDIDATES on PATH."""
    explicit = os.environ.get("CHROME_BIN")
    if explicit and shutil.which(explicit):
        return shutil.which(explicit)
    return next((shutil.which(c) for c in CANDIDATES if shutil.which(c)), None)


class _Pipe:
    """One DevTools session over the two pipes: numbered commands, replies matched by id."""

    def __init__(self, proc, write_fd: int, read_fd: int, deadline: float):
        self.proc, self.write_fd, self.read_fd, self.deadline = proc, write_fd, read_fd, deadline
        self.buffer, self.events, self.next_id = b"", [], 0

    def send(self, method: str, params: Optional[dict] = None, session: Optional[str] = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float) -> bool:
        end = min(self.deadline, time.monotonic() + timeout)
        if any(e.get("method") == method for e in self.events):
            return True
        while time.monotonic() < end:
            event = self._read(end)
            if event is None:
                return False
            self.events.append(event)
            if event.get("method") == method:
                return True
        return False

    def drain(self, quiet: float) -> None:
        """Reads events until none has come for `quiet` seconds (late requests, errors)."""
        while True:
            event = self._read(time.monotonic() + quiet)
            if event is None:
                return
            self.events.append(event)

    def _read(self, until: Optional[float] = None):
        until = self.deadline if until is None else min(until, self.deadline)
        while b"\0" not in self.buffer:
            left = until - time.monotonic()
            if left <= 0:
                if until >= self.deadline:
                    raise TimeoutError("headless Chromium did not answer in time")
                return None
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"headless Chromium exited (code {self.proc.poll()})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)


def render_page(html_path: str, screenshot: Optional[str] = None, width: int = 1280,
                max_height: Optional[int] = None, timeout: float = 60.0,
                chromium: Optional[str] = None) -> dict:
    """Loads `html_path` in headless Chromium; returns what happened:

        {"url", "requests": every URL requested (data: URLs cut to 40 characters),
         "external_requests": those neither data:/about:/blob: nor the page itself,
         "exceptions": uncaught script errors, "console_errors", "log_errors",
         "content_size": [width, height] of the page in CSS pixels, "screenshot": path or None}

    `screenshot`: where to write a PNG of the page, `width` CSS pixels wide and as tall as the
    page, or `max_height` at most (written atomically). Raises FileNotFoundError when no
    Chromium is installed, TimeoutError when it does not answer within `timeout` seconds.
    """
    binary = chromium or find_chromium()
    if not binary:
        raise FileNotFoundError("no Chromium binary found (apt-get install chromium, or set "
                                "CHROME_BIN)")
    url = "file://" + os.path.abspath(html_path)
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="endokd-chromium-")

    def child_fds():
        # Chromium reads commands on fd 3 and writes on fd 4. Copies above 10 first, so that
        # neither dup2 overwrites the other pipe; dup2's copies are inheritable, while every fd
        # Python opened is close-on-exec (PEP 446), so nothing else reaches Chromium.
        r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
        w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        os.dup2(r, 3)
        os.dup2(w, 4)

    args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
            f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars", "about:blank"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=child_fds, close_fds=False)
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    pipe = _Pipe(proc, to_chrome_w, from_chrome_r, time.monotonic() + timeout)
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Network.setBlockedURLs", {"urls": ["http://*", "https://*", "ws://*", "wss://*"]},
                  session=session)
        # Lay the page out `width` CSS pixels wide, as a desktop browser window would.
        pipe.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        pipe.send("Page.navigate", {"url": url}, session=session)
        if not pipe.wait_for("Page.loadEventFired", timeout):
            raise TimeoutError(f"{html_path} did not finish loading in {timeout:.0f}s")
        pipe.drain(0.5)
        metrics = pipe.send("Page.getLayoutMetrics", session=session)
        size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
        content = [int(size.get("width", width)), int(size.get("height", 0))]
        written = None
        if screenshot:
            height = content[1] if max_height is None else min(content[1], max_height)
            clip = {"x": 0, "y": 0, "width": width, "height": max(height, 1), "scale": 1}
            shot = pipe.send("Page.captureScreenshot", {"format": "png", "clip": clip,
                                                        "captureBeyondViewport": True},
                             session=session)
            import base64

            from keras_endokd.atomic_files import write_bytes

            written = write_bytes(screenshot, base64.b64decode(shot["data"]))
        try:
            pipe.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
    finally:
        for fd in (to_chrome_w, from_chrome_r):
            os.close(fd)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return _summary(pipe.events, url, content, written)


def _summary(events, url: str, content, screenshot) -> dict:
    def params(method):
        return [e.get("params", {}) for e in events if e.get("method") == method]

    requests = [p["request"]["url"] for p in params("Network.requestWillBeSent")]
    shown = [u[:40] + "…" if u.startswith("data:") and len(u) > 40 else u for u in requests]
    external = [u for u in shown if not u.startswith(LOCAL_SCHEMES) and u != url]
    exceptions = [p.get("exceptionDetails", {}).get("exception", {}).get("description")
                  or p.get("exceptionDetails", {}).get("text", "script error")
                  for p in params("Runtime.exceptionThrown")]
    console = [" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
               for p in params("Runtime.consoleAPICalled") if p.get("type") in ("error", "assert")]
    log = [f"{p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip()
           for p in params("Log.entryAdded") if p.get("entry", {}).get("level") == "error"]
    return {"url": url, "requests": shown, "external_requests": external, "exceptions": exceptions,
            "console_errors": console, "log_errors": log, "content_size": content,
            "screenshot": screenshot}
