"""Load a page in Debian's headless Chromium and report what a reader would see, through the DevTools protocol
over a pipe (``--remote-debugging-pipe``: JSON messages separated by NUL bytes on file descriptors 3 and 4), with
no Python dependency beyond the standard library.

The page is loaded unmodified (its Content-Security-Policy stays in force); the checks run in the page through
``Runtime.evaluate``. Console errors are every ``Runtime.consoleAPICalled`` of type error/assert, every
``Runtime.exceptionThrown``, and every ``Log.entryAdded`` of level error (CSP violations, failed resource
loads); an opened JavaScript dialog (``alert``) is recorded too.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = shutil.which("chromium")

_CHECK = """(async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map((image) => image.decode().catch(() => null)));
  return JSON.stringify({
    images: images.map((image) => {
      const box = image.getBoundingClientRect();
      return {alt: image.alt, complete: image.complete, width: image.naturalWidth, height: image.naturalHeight,
              left: box.left + window.scrollX, right: box.right + window.scrollX, shown_width: box.width};
    }),
    page_width: document.documentElement.clientWidth,
    scripts: document.querySelectorAll("script").length,
    text: document.body.innerText,
    title: document.title,
  });
})()"""


@dataclass
class PageCheck:
    """What the browser saw."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    """per image: alt, complete, natural width and height, and where it is drawn (left, right, shown_width)."""
    page_width: int = 0
    """the width of the page's viewport (CSS pixels) the check ran at."""
    scripts: int = 0
    text: str = ""
    title: str = ""


class _Pipe:
    def __init__(self, process: subprocess.Popen, write_fd: int, read_fd: int) -> None:
        self.process, self.write_fd, self.read_fd = process, write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        return self.next_id

    def receive(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                raise TimeoutError("chromium did not answer in time (or exited)")
            ready, _, _ = select.select([self.read_fd], [], [], remaining)
            if ready:
                chunk = os.read(self.read_fd, 1 << 16)
                if not chunk:
                    raise TimeoutError("chromium closed the DevTools pipe")
                self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for index, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(index)
        while True:
            message = self.receive(deadline)
            if message.get("method") == method:
                return message
            self.events.append(message)


def _above_ten(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def check_page(path: Path, timeout: float = 60, width: int = 1400) -> PageCheck:
    """Open ``path`` in headless Chromium, in a window ``width`` CSS pixels wide, and return its console errors,
    images (and where they are drawn) and text."""
    if CHROMIUM is None:
        raise RuntimeError("chromium is not installed")
    # Chromium reads commands on fd 3 and writes replies on fd 4. A tiny Python trampoline puts the pipe ends there
    # (after moving them above fd 10, so that one never overwrites the other) and execs Chromium.
    commands_read, commands_write = os.pipe()
    replies_read, replies_write = os.pipe()
    commands_read, replies_write = _above_ten(commands_read), _above_ten(replies_write)
    profile = tempfile.mkdtemp(prefix="robustsig-chromium-")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
    trampoline = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                  "os.execv(sys.argv[3], sys.argv[3:])")
    process = subprocess.Popen([sys.executable, "-c", trampoline, str(commands_read), str(replies_write), CHROMIUM,
                                *flags], pass_fds=(commands_read, replies_write), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(commands_read)
    os.close(replies_write)
    pipe = _Pipe(process, commands_write, replies_read)
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=session)
        pipe.call("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        pipe.wait_event("Page.loadEventFired", timeout=timeout)
        result = pipe.call("Runtime.evaluate", {"expression": _CHECK, "awaitPromise": True, "returnByValue": True},
                           session=session, timeout=timeout)
        if "exceptionDetails" in result:
            raise RuntimeError(f"the check script failed: {result['exceptionDetails']}")
        seen = json.loads(result["result"]["value"])
        check = PageCheck(images=seen["images"], page_width=seen["page_width"], scripts=seen["scripts"],
                          text=seen["text"], title=seen["title"])
        for event in pipe.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                check.errors.append(" ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                check.errors.append(f"{details.get('text', 'exception')} "
                                    f"{details.get('exception', {}).get('description', '')}".strip())
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                check.errors.append(params["entry"].get("text", "log error"))
            elif method == "Page.javascriptDialogOpening":
                check.dialogs.append(params.get("message", ""))
        try:
            pipe.call("Browser.close", timeout=10)
        except (TimeoutError, RuntimeError):
            pass
        return check
    finally:
        os.close(commands_write)
        os.close(replies_read)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)
