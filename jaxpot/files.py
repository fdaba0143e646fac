"""Safe file output: atomic writes, CSV tables, and never writing over an input.

This module sits at the bottom of jaxpot's layers (it imports no other jaxpot module), so any
layer that writes files uses the same three rules:

- :func:`atomic_write` / :func:`atomic_write_bytes` / :func:`atomic_write_text`: the bytes go
  to a temporary file in the destination's directory, which is flushed, synced and renamed over
  the destination, so a crash mid-write leaves the previous file intact;
- :func:`write_csv` writes a whole table atomically; :func:`append_csv_row` appends one row to
  a growing log (a metrics file) and refuses a row whose columns disagree with the file's header;
- :func:`check_outputs` refuses, before any work, output paths that are the same file as an
  input (symlinks and hard links resolved) or as another output.

Example::

    from jaxpot import files

    files.check_outputs({"--log": "md.csv"}, {"STRUCTURE": "start.xyz"})
    files.write_csv("md.csv", ["step", "energy_ev"], [[0, -1.5], [10, -1.4]])
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_csv",
    "append_csv_row",
    "check_outputs",
    "same_file",
]

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", *, make_dirs: bool = False
                 ) -> Iterator[Any]:
    """Open a temporary file next to ``path``; on success rename it over ``path``.

    If the body raises, the temporary file is removed and ``path`` is left as it was.

    Args:
      path: destination file.
      mode: ``"wb"`` (bytes) or ``"w"`` (text, UTF-8, no newline translation).
      make_dirs: create the destination's directory if it is missing; otherwise a missing
        directory is a ``FileNotFoundError`` naming it.

    Yields:
      The open temporary file.

    Raises:
      FileNotFoundError: the destination directory does not exist (and ``make_dirs`` is off).
      ValueError: ``mode`` is not ``"w"`` or ``"wb"``.

    Example::

        with atomic_write("out.csv", "w") as f:
            f.write("a,b\\n")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if make_dirs:
        os.makedirs(directory, exist_ok=True)
    elif not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {directory!r} does not exist (writing {path!r})")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    try:
        kwargs = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes, *, make_dirs: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb", make_dirs=make_dirs) as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, *, make_dirs: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w", make_dirs=make_dirs) as f:
        f.write(text)


def _cell(value: Any) -> Any:
    """A CSV cell: None → empty; floats keep every digit (``repr``); the rest as written."""
    if value is None:
        return ""
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        return repr(float(value))
    return value


def write_csv(path: PathLike, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
              make_dirs: bool = False) -> None:
    """Write a whole CSV table atomically.

    Args:
      path: destination file (replaced only once the new table is complete).
      columns: header names.
      rows: rows of cells, each as long as ``columns``; None becomes an empty cell, floats
        are written with ``repr`` (round-trip exact).
      make_dirs: create a missing destination directory.

    Raises:
      ValueError: a row whose length differs from the header's (names the row index).
    """
    columns = list(columns)
    with atomic_write(path, "w", make_dirs=make_dirs) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for i, row in enumerate(rows):
            row = list(row)
            if len(row) != len(columns):
                raise ValueError(f"{os.fspath(path)!r}: row {i} has {len(row)} cells, the "
                                 f"header {columns} has {len(columns)}")
            writer.writerow([_cell(v) for v in row])


def append_csv_row(path: PathLike, row: Mapping[str, Any], fields: Sequence[str]) -> None:
    """Append ``row`` to the CSV log at ``path``, writing the header first if the file is new.

    Keys of ``row`` outside ``fields`` are ignored; missing or None values are empty cells.

    Raises:
      ValueError: the existing file's header is not ``fields`` (appending would mix columns);
        the message names the file and both headers.
    """
    path = os.fspath(path)
    fields = list(fields)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    if not new:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if header != fields:
            raise ValueError(f"{path!r}: its header {header} differs from the columns being "
                             f"appended {fields}; write the log to a new file")
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        if new:
            writer.writerow(fields)
        writer.writerow([_cell(row.get(k)) for k in fields])


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file (symlinks and hard links resolved).

    Paths that do not exist yet are compared after resolving their directories' symlinks.
    """
    a, b = os.fspath(a), os.fspath(b)
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(os.path.abspath(a)) == os.path.realpath(os.path.abspath(b))


def _labelled(paths: Mapping[str, Any] | Iterable[Any] | None) -> list[tuple[str, str]]:
    if paths is None:
        return []
    items = paths.items() if isinstance(paths, Mapping) else ((None, p) for p in paths)
    out = []
    for label, p in items:
        if p is None:
            continue
        p = os.fspath(p)
        out.append((f"{label} {p!r}" if label else repr(p), p))
    return out


def check_outputs(outputs: Mapping[str, Any] | Iterable[Any],
                  inputs: Mapping[str, Any] | Iterable[Any] | None = None) -> None:
    """Refuse outputs that would overwrite an input, or each other, before any work is done.

    Args:
      outputs: paths about to be written, as ``{label: path}`` (labels such as ``"--log"``
        appear in the message) or a sequence of paths; None entries are skipped.
      inputs: paths that are read, in the same forms.

    Raises:
      ValueError: an output is the same file as an input, or two outputs are the same file;
        the message names both paths (and their labels).

    Example::

        check_outputs({"--traj": "start.xyz"}, {"STRUCTURE": "start.xyz"})  # ValueError
    """
    outs, ins = _labelled(outputs), _labelled(inputs)
    for name, path in outs:
        for in_name, in_path in ins:
            if same_file(path, in_path):
                raise ValueError(f"output {name} is the input {in_name}; refusing to overwrite "
                                 f"an input: choose another output path")
    for i, (name, path) in enumerate(outs):
        for other_name, other in outs[:i]:
            if same_file(path, other):
                raise ValueError(f"outputs {other_name} and {name} are the same file; "
                                 f"give each output its own path")
