"""A headless Chromium driven over the Chrome DevTools Protocol (just what the tests need).

Debian's ``chromium`` package is started with a throwaway profile and every
background service off, listening for DevTools on a loopback port it picks (read
from ``DevToolsActivePort``). :class:`Page` records what a test asserts on: console
errors, uncaught exceptions, dialogs, and the URL of every request the page makes.

Set ``TOKENTRACE_CHROMIUM`` to use another binary.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container: the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--metrics-recording-only",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    # Only loopback names resolve, so even a request the page should never make
    # cannot leave the machine (the tests still check that none was attempted).
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
)
_START_TIMEOUT_S = 30
_CALL_TIMEOUT_S = 30


def chromium_path() -> str | None:
    """The Chromium binary, or None when none is installed."""
    explicit = os.environ.get("TOKENTRACE_CHROMIUM")
    if explicit:
        return shutil.which(explicit)
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class CdpError(RuntimeError):
    pass


class Browser:
    """One Chromium process and its DevTools connection; close it with :meth:`close`."""

    def __init__(self, binary: str, profile: Path) -> None:
        self._process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # websockets wants connect() used as a context manager; the stack closes it in close().
        self._stack = contextlib.ExitStack()
        try:
            self._ws: ClientConnection = self._stack.enter_context(
                connect(self._endpoint(profile), proxy=None, max_size=None, ping_interval=None,
                        compression=None, open_timeout=_START_TIMEOUT_S)
            )  # fmt: skip
        except BaseException:
            self._stop_process()
            raise
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _endpoint(self, profile: Path) -> str:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise CdpError(f"chromium exited with status {self._process.returncode}")
            if port_file.exists():
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        raise CdpError("chromium did not open its DevTools port in time")

    @property
    def ws(self) -> ClientConnection:
        return self._ws

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        """Send a command and wait for its answer (events meanwhile are kept in :attr:`events`)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + _CALL_TIMEOUT_S
        while True:
            answer = json.loads(self._ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise CdpError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            if "method" in answer:
                self.events.append(answer)

    def pump(self, seconds: float) -> None:
        """Collect events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = json.loads(self._ws.recv(timeout=left))
            except TimeoutError:
                return
            if "method" in message:
                self.events.append(message)

    def new_page(self, width: int = 1400, height: int = 900, timezone: str | None = None) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.call(f"{domain}.enable")
        page.resize(width, height)
        if timezone:
            page.call("Emulation.setTimezoneOverride", {"timezoneId": timezone})
        return page

    def _stop_process(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)

    def close(self) -> None:
        # Ask politely first; the process is stopped below whatever the answer.
        with contextlib.suppress(Exception):
            self.call("Browser.close")
        try:
            self._stack.close()
        finally:
            self._stop_process()


@dataclass
class Page:
    """A tab, attached through a flat session."""

    browser: Browser
    session: str

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self.browser.call(method, params, self.session)

    def events(self, method: str) -> list[dict[str, Any]]:
        return [e["params"] for e in self.browser.events
                if e.get("sessionId") == self.session and e["method"] == method]  # fmt: skip

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})  # fmt: skip

    def goto(self, url: str, timeout: float = 30) -> None:
        """Navigate and wait for the load event."""
        loaded = len(self.events("Page.loadEventFired"))
        answer = self.call("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise CdpError(f"navigation to {url} failed: {answer['errorText']}")
        deadline = time.monotonic() + timeout
        while len(self.events("Page.loadEventFired")) == loaded:
            if time.monotonic() > deadline:
                raise CdpError(f"{url} did not finish loading")
            self.browser.pump(0.05)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited)."""
        answer = self.call("Runtime.evaluate",
                           {"expression": expression, "returnByValue": True, "awaitPromise": True})  # fmt: skip
        if "exceptionDetails" in answer:
            raise CdpError(f"{expression!r} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CdpError(f"timed out waiting for {expression!r}")
            self.browser.pump(0.1)

    def screenshot(self, path: Path, width: int = 1400) -> None:
        """A PNG of the whole page (not only the viewport)."""
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        self.resize(width, height)
        self.browser.pump(0.3)  # let layout settle at the new size
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    # --- what the tests assert on -----------------------------------------------------
    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (CSP violations included)."""
        found = [
            " ".join(str(a.get("value", a.get("description", ""))) for a in e.get("args", []))
            for e in self.events("Runtime.consoleAPICalled") if e.get("type") in ("error", "assert")
        ]  # fmt: skip
        found += [str(e["exceptionDetails"]) for e in self.events("Runtime.exceptionThrown")]
        found += [f"{e['entry'].get('source')}: {e['entry'].get('text')} {e['entry'].get('url', '')}"
                  for e in self.events("Log.entryAdded") if e["entry"].get("level") == "error"]  # fmt: skip
        return found

    def request_urls(self) -> list[str]:
        return [e["request"]["url"] for e in self.events("Network.requestWillBeSent")]

    def dialogs(self) -> list[str]:
        return [e.get("message", "") for e in self.events("Page.javascriptDialogOpening")]
