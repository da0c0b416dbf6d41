"""Retake docs/hparams.png and docs/scalars.png: two small sweeps, TensorBoard, headless Chromium.

    python scripts/screenshots.py [--out docs] [--keep]

Needs Chromium (Debian: `apt-get update && apt-get install -y chromium`). Not a test: run it by
hand when the dashboards change. The sweeps run in a temporary folder (kept with --keep);
TensorBoard listens on 127.0.0.1 only and is stopped at the end whatever happens.

Chromium is driven over the DevTools protocol on a pipe (no extra packages): the HParams shot
shows the swept keys and the validation metrics, sorted by val/loss, instead of TensorBoard's
default of the first five keys and every scalar. That step uses the dashboard's own (private)
Polymer properties; if a TensorBoard release renames them, the shot falls back to the default
view and says so.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["dataset=moons", "trainer.max_epochs=30", "trainer.histogram_every=0"]
COMMON += ["trainer.figures=false", "trainer.progress=false"]
# Two sweeps over different keys: the HParams columns still line up
SWEEPS = {
    "activations": ["model=relu,tanh,sigmoid", "optimizer.lr=0.003,0.03", "penalty=none,l2"],
    "sgd": ["optimizer=sgd", "optimizer.lr=0.05,0.5,1e30"],  # 1e30 diverges
}
HPARAMS_SHOWN = ["model", "optimizer", "optimizer.lr", "penalty", "penalty.lam"]
METRICS_SHOWN = ["test/accuracy", "val/accuracy", "val/loss"]
SORT_BY = "val/loss"
SCALARS_PAGE = "/#scalars&tagFilter=%5E(train%7Cval)%2F(loss%7Caccuracy)%24"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

# Tick the wanted HParams columns, untick the rest, and sort server-side by SORT_BY.
HPARAMS_JS = """
(() => {
  const all = [];
  const walk = n => { for (const e of n.querySelectorAll('*')) { all.push(e);
    if (e.shadowRoot) walk(e.shadowRoot); } };
  walk(document);
  const pane = all.find(e => typeof e._queryServer === 'function' && '_sortByIndex' in e);
  if (!pane || !pane._hparams || !pane._hparams.length) return 'not ready';
  const hparams = pane._hparams.map(h => h.info.name);
  const metrics = pane._metrics.map(m => m.info.name.tag);
  for (const box of all.filter(e => e.tagName === 'PAPER-CHECKBOX')) {
    const name = (box.textContent || '').trim();
    const want = hparams.includes(name) ? SHOWN_H.includes(name)
      : metrics.includes(name) ? SHOWN_M.includes(name) : null;
    if (want !== null && box.checked !== want) box.click();
  }
  pane._sortDirection = 0;
  pane._sortByIndex = hparams.length + metrics.indexOf(SORT_BY);
  pane._queryServer();
  return 'ok';
})()
"""


class Chromium:
    """Headless Chromium with the DevTools protocol on fds 3 and 4 (--remote-debugging-pipe)."""

    def __init__(self, executable: str, profile: str) -> None:
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Out of the way of 3 and 4, which the child gets by dup2
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in (to_chrome_r, from_chrome_w)]
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)

        def wire() -> None:
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe"],
            preexec_fn=wire,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in ends:
            os.close(fd)
        self.write_fd, self.read_fd = to_chrome_w, from_chrome_r
        self.next_id, self.buffer, self.session = 0, b"", None

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str, width: int, height: int) -> None:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"wrote {path}")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
        for fd in (self.write_fd, self.read_fd):
            os.close(fd)


def run_sweeps(outputs: Path) -> int:
    """Both sweeps into outputs/multirun/NAME; returns how many runs they made."""
    total = 0
    for name, overrides in SWEEPS.items():
        sweep_dir = outputs / "multirun" / name
        command = [sys.executable, "run.py", "-m", *COMMON, *overrides]
        subprocess.run([*command, f"hydra.sweep.dir={sweep_dir}"], cwd=ROOT, check=False)
        total += len([p for p in sweep_dir.iterdir() if (p / "metrics.json").exists()])
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_runs(url: str, n: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("tensorboard exited early")
        try:
            with urllib.request.urlopen(url + "/data/runs", timeout=10) as response:
                if len(json.load(response)) >= n:
                    time.sleep(3)  # let the HParams plugin read the session records too
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise TimeoutError(f"tensorboard did not list {n} runs in {timeout:.0f}s")


def take_hparams(chromium: Chromium, url: str, path: Path) -> None:
    chromium.open(url + "/#hparams", 1900, 760)
    script = (
        HPARAMS_JS.replace("SHOWN_H", json.dumps(HPARAMS_SHOWN))
        .replace("SHOWN_M", json.dumps(METRICS_SHOWN))
        .replace("SORT_BY", json.dumps(SORT_BY))
    )
    outcome = None
    for _ in range(60):
        time.sleep(1)
        outcome = chromium.evaluate(script)
        if outcome == "ok":
            break
    if outcome != "ok":
        print("hparams: could not set the columns; the default view it is", file=sys.stderr)
    time.sleep(4)  # the re-sorted table comes back from the server
    chromium.screenshot(path)


def take_scalars(chromium: Chromium, url: str, path: Path) -> None:
    chromium.open(url + SCALARS_PAGE, 1800, 560)
    time.sleep(10)  # charts load and draw
    chromium.screenshot(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--keep", action="store_true", help="keep the sweeps' outputs")
    args = parser.parse_args()
    names = ("chromium", "chromium-browser", "google-chrome")
    executable = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if executable is None:
        print("no chromium: apt-get update && apt-get install -y chromium", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ffn-screenshots-"))
    outputs = work / "outputs"
    tensorboard = None
    try:
        n_runs = run_sweeps(outputs)
        port = free_port()
        logdir = outputs / "multirun"  # what `tensorboard --logdir outputs` shows, shorter names
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
        tensorboard = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: its data server goes with it
        )
        url = f"http://127.0.0.1:{port}"
        wait_for_runs(url, n_runs, tensorboard)
        for take, name in ((take_hparams, "hparams.png"), (take_scalars, "scalars.png")):
            chromium = Chromium(executable, str(work / f"profile-{name}"))  # a fresh profile
            try:
                take(chromium, url, args.out / name)
            finally:
                chromium.close()
    finally:
        if tensorboard is not None and tensorboard.poll() is None:
            os.killpg(tensorboard.pid, signal.SIGTERM)
            tensorboard.wait(timeout=30)
        if args.keep:
            print(f"outputs kept in {outputs}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
