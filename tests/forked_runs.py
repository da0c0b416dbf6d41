"""`python SCRIPT ARGS` for many commands, each in its own process, paying the imports once.

    python tests/forked_runs.py JOBS.json RESULTS.json

JOBS.json: {"preload": [module, ...], "jobs": [[script, arg, ...], ...]}. The parent imports the
modules (what the scripts import: Hydra, ffn's job, torch, ...), then forks one child a job, two
at a time: the child runs the script as `__main__`, as `python script ARGS` would (its folder
first on sys.path, its own argv, stdout and stderr, files), and exits with its status.
RESULTS.json: one {"returncode", "stdout", "stderr"} a job, in order. For tables of commands
whose processes are the point but whose imports are not (tests/test_bad_input.py's refusals,
tests/test_experiments.py's sweeps): a real process a command without seconds of imports each.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import runpy
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AT_ONCE = 2  # CI's cores


def preload(modules: list[str]) -> None:
    """Import what the jobs will, so that no child pays for it."""
    sys.path[0] = str(ROOT)  # not tests/: the jobs see what `python SCRIPT` would
    for name in modules:
        importlib.import_module(name)


def _exit_code(error: SystemExit) -> int:
    """The status Python gives `sys.exit(code)`: None is 0, a text is printed and is 1."""
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code
    print(error.code, file=sys.stderr)
    return 1


def child(command: list[str], out: str, err: str) -> None:
    """In the forked process: `python SCRIPT ARGS`, then exit with its status. Never returns."""
    code = 1
    try:
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        script = str(ROOT / command[0])
        sys.argv = list(command)  # as typed, from the repository's root
        sys.path[0] = str(Path(script).parent)  # as `python SCRIPT` sets it
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as error:
            code = _exit_code(error)
        except BaseException:
            traceback.print_exc()  # as the interpreter would print it
            code = 1
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def run_all(jobs: list[list[str]], at_once: int = AT_ONCE) -> list[dict[str, object]]:
    """Each command ([script, arg, ...]) in a forked child, `at_once` at a time; results in the
    jobs' order."""
    folder = Path(tempfile.mkdtemp(prefix="ffn-forked-"))
    running: dict[int, int] = {}  # pid -> job index
    codes: dict[int, int] = {}
    todo = list(enumerate(jobs))
    while todo or running:
        while todo and len(running) < at_once:
            index, command = todo.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                child(command, str(folder / f"{index}.out"), str(folder / f"{index}.err"))
            running[pid] = index
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    results = []
    for index in range(len(jobs)):
        out, err = folder / f"{index}.out", folder / f"{index}.err"
        results.append(
            {"returncode": codes[index], "stdout": out.read_text(), "stderr": err.read_text()}
        )
        out.unlink()
        err.unlink()
    folder.rmdir()
    return results


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    preload(spec["preload"])
    Path(sys.argv[2]).write_text(json.dumps(run_all(spec["jobs"])))
