"""Retake docs/hparams.png, scalars.png, hparams_plain.png: two sweeps (42 runs), headless Chromium.

    python scripts/screenshots.py [--out docs] [--keep]

Needs Chromium (Debian: `apt-get update && apt-get install -y chromium`). Not a test: run it by
hand when the dashboards change. The sweeps run in a temporary folder (kept with --keep);
`ffn-board` and plain TensorBoard serve them on 127.0.0.1 only and are stopped at the end
whatever happens.

The shots are what a user gets from the links ffn-board prints: the HParams table with its
default columns (the keys that vary, the headline metrics), sorted by val/accuracy as one click
on its header would, and Scalars with every run ticked; and plain `tensorboard --logdir`'s
HParams table as it first opens (hparams_plain.png). Chromium is driven over the DevTools
protocol on a pipe (no extra packages); sorting uses the dashboard's own (private) Polymer
properties, and if a TensorBoard release renames them the shot stays unsorted and says so.
tests/test_dashboard.py drives the same functions.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import functools
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
# Two sweeps over different keys (the HParams columns still line up), 42 runs: more than the 40
# TensorBoard's Scalars ticks by itself
SWEEPS = {
    "activations": ["model=relu,tanh,sigmoid", "optimizer.lr=0.003,0.03", "trainer.seed=0,1,2,3"],
    "sgd": [
        "optimizer=sgd",
        "optimizer.lr=0.05,0.5,1e30",
        "trainer.seed=range(0,6)",
    ],  # 1e30 diverges
}
SORT_BY = "val/accuracy"
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

# The HParams page's table element, found through every shadow root: `pane` for what follows.
FIND_PANE_JS = """
(() => {
  const all = [];
  const walk = n => { for (const e of n.querySelectorAll('*')) { all.push(e);
    if (e.shadowRoot) walk(e.shadowRoot); } };
  walk(document);
  const pane = all.find(e => typeof e._queryServer === 'function' && '_sortByIndex' in e);"""
# Sort the table by SORT_BY, best first (what one click on its column does), server-side.
SORT_JS = (
    FIND_PANE_JS
    + """
  if (!pane || !pane._hparams || !pane._hparams.length) return 'not ready';
  const metrics = pane._metrics.map(m => m.info.name.tag);
  pane._sortDirection = 1;
  pane._sortByIndex = pane._hparams.length + metrics.indexOf(SORT_BY);
  pane._queryServer();
  return 'ok';
})()
"""
)
# The columns the HParams page ticks, from its own state: {hparams: [names], metrics: [tags]}.
TICKED_JS = (
    FIND_PANE_JS
    + """
  if (!pane || !pane._hparams || !pane._hparams.length || !pane._metrics) return null;
  return {hparams: pane._hparams.filter(h => h.displayed).map(h => h.info.name),
          metrics: pane._metrics.filter(m => m.displayed).map(m => m.info.name.tag)};
})()
"""
)
# Every text node of the page, shadow roots included (what --dump-dom cannot see).
TEXT_JS = """
(() => {
  const out = [];
  const walk = n => { for (const c of n.childNodes) {
    if (c.nodeType === 3) out.push(c.nodeValue.trim()); else walk(c);
    if (c.shadowRoot) walk(c.shadowRoot); } };
  walk(document.body);
  return out.filter(Boolean).join('\\n');
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
    """The sweeps into outputs/multirun/NAME; returns how many runs they made."""
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


def start_tensorboard(logdir: Path, port: int) -> subprocess.Popen[bytes]:
    """Plain `tensorboard --logdir LOGDIR`, no ffn-board."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
    return subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, with its data server
    )


def stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def start_board(logdir: Path, port: int) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`ffn-board LOGDIR` and the links it prints."""
    board = subprocess.Popen(
        [sys.executable, "-m", "ffn.board", str(logdir), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group: TensorBoard and its data server go too
    )
    links: dict[str, str] = {}
    assert board.stdout is not None
    while "time series" not in links:
        line = board.stdout.readline()
        if not line:
            raise RuntimeError("ffn-board exited early")
        what, sep, link = line.strip().partition(": ")
        if sep and link.startswith("http"):
            links[what] = link
    return board, links


def wait_for_runs(url: str, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/data/runs", timeout=10) as response:
                # a run's diagnostics/ come as runs of their own (ffn/run_logger.py)
                runs = [r for r in json.load(response) if "diagnostics" not in r.split("/")]
                if len(runs) >= n:
                    time.sleep(3)  # let the HParams plugin read the session records too
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise TimeoutError(f"tensorboard did not list {n} runs in {timeout:.0f}s")


def take_hparams(chromium: Chromium, url: str, path: Path, sort: bool = True) -> str:
    """The HParams table as a user first sees it, sorted by SORT_BY (unless `sort` is false);
    returns the page's text."""
    chromium.open(url, 1900, 760)
    if sort:
        outcome = None
        for _ in range(60):
            time.sleep(1)
            outcome = chromium.evaluate(SORT_JS.replace("SORT_BY", json.dumps(SORT_BY)))
            if outcome == "ok":
                break
        if outcome != "ok":
            print("hparams: could not sort the table; unsorted it is", file=sys.stderr)
    elif ticked_columns(chromium, None) is None:
        print("hparams: the table never loaded", file=sys.stderr)
    time.sleep(4)  # the (re-sorted) table comes back from the server
    chromium.screenshot(path)
    return chromium.evaluate(TEXT_JS) or ""


def ticked_columns(
    chromium: Chromium, url: str | None, timeout: int = 60
) -> dict[str, list] | None:
    """The HParams page's ticked columns once it has loaded (None if it never does); `url`
    None: the page open now."""
    if url is not None:
        chromium.open(url, 1900, 760)
    for _ in range(timeout):
        time.sleep(1)
        ticked = chromium.evaluate(TICKED_JS)
        if ticked:
            return ticked
    return None


def take_scalars(chromium: Chromium, url: str, path: Path) -> None:
    chromium.open(url, 1800, 640)
    time.sleep(12)  # charts load and draw
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
    board = plain = None
    try:
        n_runs = run_sweeps(outputs)
        # what `ffn-board outputs/multirun` and `tensorboard --logdir outputs/multirun` show
        board, links = start_board(outputs / "multirun", free_port())
        unsorted = functools.partial(take_hparams, sort=False)  # as plain TensorBoard opens
        port = free_port()
        plain, plain_url = start_tensorboard(outputs / "multirun", port), f"http://127.0.0.1:{port}"
        wait_for_runs(links["time series"], n_runs)
        wait_for_runs(plain_url, n_runs)
        shots = (
            (take_hparams, links["hparams"], "hparams.png"),
            (take_scalars, links["scalars"], "scalars.png"),
            (unsorted, f"{plain_url}/#hparams", "hparams_plain.png"),
        )
        for take, url, name in shots:
            chromium = Chromium(executable, str(work / f"profile-{name}"))  # a fresh profile
            try:
                take(chromium, url, args.out / name)
            finally:
                chromium.close()
    finally:
        stop(board)
        stop(plain)
        if args.keep:
            print(f"outputs kept in {outputs}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
