"""A user's own data: a .csv with a header row (one target column) or an .npz with x and y.

Every way such a file can be wrong ends in a one-line ConfigError naming dataset.path,
dataset.target or dataset.task, never in a csv/numpy traceback.
"""

from __future__ import annotations

import csv
import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from ffn.data.arrays import Arrays
from ffn.data.config import DatasetConfig
from ffn.errors import ConfigError

SUFFIXES = (".csv", ".npz")
MAX_INFERRED_CLASSES = 20  # an integer target with more distinct values is taken as regression
MIN_ROWS_PER_CLASS = 2  # fewer rows a class on average: the labels are not classes
_MAX_LISTED = 20  # columns named in a message before it says "..."


def load_file(cfg: DatasetConfig, seed: int, count_classes: bool = True) -> Arrays:
    """The whole file; task from cfg.task, or inferred from the target.  seed is unused.

    count_classes=False (a given val or test file): its labels are checked for their kind only,
    since a small test file may hold few rows or one class.
    """
    path = _checked_path(cfg.path)
    if path.suffix.lower() == ".csv":
        x, y, target = read_csv(path, cfg.target, cfg.task)
    else:
        x, y, target = read_npz(path, cfg.target)
    y, task = _resolve_task(y, cfg.task, target, count_classes)
    return Arrays(x=x, y=y, task=task, size_key="dataset.path")


def load_given_split(cfg: DatasetConfig) -> tuple[Arrays, dict[str, np.ndarray]]:
    """path, val_path and test_path stacked in that order, and each file's rows in the stack.

    The task comes from the train file (path) and binds the others; every file must have the
    train file's number of feature columns. -> Arrays, {"train"|"val"|"test": (n_part,) int64}.
    """
    train = load_file(cfg, seed=0)
    files = {"train": train}
    for part, key in (("val", "val_path"), ("test", "test_path")):
        if getattr(cfg, key) is not None:
            files[part] = _given_part(cfg, key, train)
    rows, start = {}, 0
    for part in ("train", "val", "test"):
        n = len(files[part].x) if part in files else 0
        rows[part] = np.arange(start, start + n)
        start += n
    stacked = [files[p] for p in ("train", "val", "test") if p in files]
    x = np.concatenate([a.x for a in stacked])
    y = np.concatenate([a.y for a in stacked])
    return Arrays(x=x, y=y, task=train.task, size_key="dataset.path"), rows


def _given_part(cfg: DatasetConfig, key: str, train: Arrays) -> Arrays:
    """The val or test file, read as the train file was: its task, its feature count."""
    path, name = getattr(cfg, key), f"dataset.{key}"
    try:
        given = dataclasses.replace(cfg, path=path, task=train.task)
        part = load_file(given, seed=0, count_classes=False)
    except ConfigError as error:  # the same checks, blamed on the key that names this file
        if error.key != "dataset.path":
            raise
        raise ConfigError(name, path, error.allowed) from None
    d, d_part = train.x.shape[1], part.x.shape[1]
    if d_part != d:
        raise ConfigError(name, path, f"{d} feature columns, as in dataset.path; it has {d_part}")
    text, text_part = train.y.dtype.kind == "U", part.y.dtype.kind == "U"
    if text != text_part or (train.task == "regression" and part.y.shape[1] != train.y.shape[1]):
        raise ConfigError(name, path, "targets of the kind and width of dataset.path's")
    return part


def read_csv(
    path: Path, target: str | None, task: str | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Features, target and the target's name.  x: (n, d) float64; y: (n,) float64 or str."""
    rows = _read_rows(path)
    header = [name.strip() for name in rows[0][1]]
    _check_header(path, header)
    if target is None or target not in header:
        raise ConfigError("dataset.target", target, f"a column of {path.name}: {_listing(header)}")
    if len(header) < 2:
        raise ConfigError("dataset.path", str(path), "a .csv with a feature column besides target")
    data = rows[1:]
    if not data:
        raise ConfigError("dataset.path", str(path), "a .csv with data rows below its header")
    for line, row in data:
        if len(row) != len(header):
            raise ConfigError(
                "dataset.path",
                str(path),
                f"rows of {len(header)} fields like the header; line {line} has {len(row)}",
            )
    lines = [line for line, _ in data]
    columns = list(zip(*(row for _, row in data), strict=True))
    t = header.index(target)
    x = np.stack(
        [
            _numeric(path, name, col, lines)
            for j, (name, col) in enumerate(zip(header, columns, strict=True))
            if j != t
        ],
        axis=1,
    )
    y = _target_column(path, target, columns[t], lines, task)
    return x, y, target


def read_npz(path: Path, target: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Arrays `x` and `y` (or the key `target`).  x: (n, d) float64; y: (n,) or (n, M)."""
    y_key = target or "y"
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a lone .npy array under an .npz name
            raise ValueError("it holds one unnamed array")
        with data:
            keys = list(data.files)
            x = data["x"] if "x" in keys else None
            y = data[y_key] if y_key in keys else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError("dataset.path", str(path), f"a readable .npz file ({exc})") from None
    if x is None:
        raise ConfigError(
            "dataset.path", str(path), f"an .npz with an array 'x'; it has: {_listing(keys)}"
        )
    if y is None:
        key, value = ("dataset.target", target) if target else ("dataset.path", str(path))
        raise ConfigError(key, value, f"the key of the y array, one of: {_listing(keys)}")
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if x.ndim != 2 or x.dtype.kind not in "biuf":
        raise ConfigError(
            "dataset.path", str(path), f"a numeric x of shape (n, d); it is {x.dtype} {x.shape}"
        )
    if y.ndim not in (1, 2) or y.dtype.kind not in "biufU":
        raise ConfigError(
            "dataset.path",
            str(path),
            f"a numeric or text {y_key} of shape (n,) or (n, M); it is {y.dtype} {y.shape}",
        )
    if len(x) != len(y):
        raise ConfigError(
            "dataset.path",
            str(path),
            f"x and {y_key} of equal length; they have {len(x)}, {len(y)}",
        )
    x = x.astype(np.float64)
    _check_finite(path, x, "x")
    if y.dtype.kind != "U":
        y = y.astype(np.float64)
        _check_finite(path, y, y_key)
    return x, y, y_key


def _checked_path(path: str | None) -> Path:
    """An existing file with a suffix we read."""
    if path is None:
        raise ConfigError("dataset.path", path, "a path to a .csv or .npz file")
    p = Path(path).expanduser()
    if p.suffix.lower() not in SUFFIXES:
        raise ConfigError("dataset.path", path, "a file ending in " + " or ".join(SUFFIXES))
    if not p.is_file():
        raise ConfigError("dataset.path", path, "an existing file (no such file)")
    return p


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank rows with their line numbers, header first."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader if row]
    except UnicodeDecodeError:
        raise ConfigError("dataset.path", str(path), "a UTF-8 text .csv file") from None
    except (OSError, csv.Error) as exc:
        raise ConfigError("dataset.path", str(path), f"a readable .csv file ({exc})") from None
    if not rows:
        raise ConfigError("dataset.path", str(path), "a .csv with a header row; it is empty")
    return rows


def _check_header(path: Path, header: list[str]) -> None:
    """A header that names each column once: else the target or the features are ambiguous."""
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ConfigError(
            "dataset.path", str(path), f"a header naming each column once; {repeated} repeat"
        )
    if "" in header:
        column = header.index("") + 1
        raise ConfigError("dataset.path", str(path), f"a header naming column {column}")
    if all(_is_number(name) for name in header):  # the first data row, most likely
        raise ConfigError(
            "dataset.path", str(path), "a header row of column names; line 1 holds numbers"
        )


def _numeric(path: Path, name: str, cells: tuple[str, ...], lines: list[int]) -> np.ndarray:
    """A feature column as float64, refusing text, blanks, NaN and inf.  -> (n,)."""
    values = np.empty(len(cells))
    for i, cell in enumerate(cells):
        if not cell.strip():
            raise ConfigError(
                "dataset.path",
                str(path),
                f"no empty cells; column {name!r} is empty on line {lines[i]}",
            )
        try:
            values[i] = float(cell)
        except ValueError:
            raise ConfigError(
                "dataset.path",
                str(path),
                f"numeric feature columns; column {name!r} holds text {cell!r} on line {lines[i]}",
            ) from None
    _check_finite(path, values, f"column {name!r}", lines)
    return values


def _target_column(
    path: Path, name: str, cells: tuple[str, ...], lines: list[int], task: str | None
) -> np.ndarray:
    """The target as float64 if every cell is a number, else as text labels.  -> (n,)."""
    numbers = [_is_number(cell) for cell in cells]
    if all(numbers):
        return _numeric(path, name, cells, lines)
    for cell, line in zip(cells, lines, strict=True):
        if not cell.strip():
            raise ConfigError(
                "dataset.path",
                str(path),
                f"no empty cells; column {name!r} is empty on line {line}",
            )
    if any(numbers) and task is None:  # likely a stray "n/a" in a numeric target: say so
        i = numbers.index(False)
        raise ConfigError(
            "dataset.target",
            name,
            f"a column of numbers or of text labels (or set dataset.task); it holds "
            f"{cells[i]!r} on line {lines[i]} among numbers",
        )
    return np.array([cell.strip() for cell in cells])


def _is_number(cell: str) -> bool:
    """Whether float() reads the cell (nan and inf included; they are refused later)."""
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _check_finite(path: Path, a: np.ndarray, what: str, lines: list[int] | None = None) -> None:
    """No NaN or inf anywhere in a."""
    bad = ~np.isfinite(a)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        where = f"line {lines[row]}" if lines is not None else f"row {row}"
        raise ConfigError(
            "dataset.path",
            str(path),
            f"finite numbers only; {what} has {a.flat[bad.argmax()]} at {where}",
        )


def _resolve_task(
    y: np.ndarray, task: str | None, target: str, count_classes: bool = True
) -> tuple[np.ndarray, str]:
    """y checked and shaped for its task: (n,) labels, or (n, M) float64 targets."""
    text = y.dtype.kind == "U"
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)  # one target either way; regression puts the column back below
    integral = not text and bool(np.all(y == np.round(y)))
    if task is None:
        few = y.ndim == 1 and len(np.unique(y)) <= MAX_INFERRED_CLASSES
        task = "classification" if text or (integral and few) else "regression"
    if task == "regression":
        if text:
            raise ConfigError(
                "dataset.task", task, f"classification, as target {target!r} holds text labels"
            )
        return y.reshape(len(y), -1), task
    if y.ndim != 1:
        raise ConfigError(
            "dataset.task", task, f"regression, as target {target!r} has {y.shape[1]} columns"
        )
    if not (text or integral):
        example = y[y != np.round(y)][0]
        raise ConfigError(
            "dataset.target",
            target,
            f"integer or text class labels for task=classification; it holds {example}",
        )
    if not count_classes:
        return (y if text else y.astype(np.int64)), task
    if len(np.unique(y)) < 2:
        raise ConfigError("dataset.target", target, "a target with at least 2 distinct classes")
    n_classes = len(np.unique(y))
    # many classes, most with one row or none: an id or a measurement, not a label (few rows
    # with few classes are the split's to refuse, with its own message)
    if n_classes > max(MAX_INFERRED_CLASSES, len(y) // MIN_ROWS_PER_CLASS):
        raise ConfigError(
            "dataset.target",
            target,
            f"labels that name classes: {n_classes} distinct values in {len(y)} rows "
            f"(a number to predict? set dataset.task=regression)",
        )
    return (y if text else y.astype(np.int64)), task  # int: messages say class 7, not 7.0


def _listing(names: list[str]) -> str:
    """Names joined for a message, cut short when there are many."""
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")
