"""`python run.py ARGS` for many ARGS, each in its own process, paying the imports once.

    python tests/forked_runs.py JOBS.json RESULTS.json

JOBS.json: a list of argument lists. The parent imports what `python run.py` imports (Hydra,
ffn's job, torch), then forks one child a job, two at a time: the child runs run.py as
`__main__` with its own argv, stdout and stderr (files), and exits as run.py would. RESULTS.json:
one {"returncode", "stdout", "stderr"} a job, in order. For tables of refusals (tests/
test_bad_input.py): a real process per case, its exit code and its every line, without a
second of imports each; a few cases still run as plain `python run.py` to cover the imports.
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = str(ROOT / "run.py")
AT_ONCE = 2  # CI's cores


def preload() -> None:
    """What a job imports, its lazy imports included, so that no child pays for them."""
    sys.path.insert(0, str(ROOT))
    import hydra  # noqa: F401
    import torch.optim

    import ffn.cli_errors
    import ffn.config
    import ffn.data.load
    import ffn.job
    import ffn.targets  # noqa: F401

    # Building any optimizer imports torch._dynamo (Optimizer.add_param_group is wrapped)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def _exit_code(error: SystemExit) -> int:
    """The status Python gives `sys.exit(code)`: None is 0, a text is printed and is 1."""
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code
    print(error.code, file=sys.stderr)
    return 1


def child(args: list[str], out: str, err: str) -> None:
    """In the forked process: run.py with `args`, then exit with its status. Never returns."""
    code = 1
    try:
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = [RUN_PY, *args]
        try:
            runpy.run_path(RUN_PY, run_name="__main__")
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
    """Each job in a forked child, `at_once` at a time; results in the jobs' order."""
    folder = Path(tempfile.mkdtemp(prefix="ffn-forked-"))
    running: dict[int, int] = {}  # pid -> job index
    codes: dict[int, int] = {}
    todo = list(enumerate(jobs))
    while todo or running:
        while todo and len(running) < at_once:
            index, args = todo.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                child(args, str(folder / f"{index}.out"), str(folder / f"{index}.err"))
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
    preload()
    jobs = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(run_all(jobs)))
