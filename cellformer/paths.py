"""One rule for the files a command writes, checked before the command does any work.

Every ``cellformer`` command that writes files passes its outputs and its inputs to :func:`check_outputs`:

* an output is a file name: not an existing directory, and its folder is not a file;
* no output is one of the command's inputs (the same path once resolved, or the same file under another
  name: a link), and no two outputs are the same file;
* an existing output is overwritten only with ``--force`` (the outputs named in ``may_exist`` excepted,
  e.g. the state of a screen that ``--resume`` continues).

A refusal is a :class:`~cellformer.errors.UserError` naming the option and the file. ``-`` (stdout) and
unset options are not files. Outputs are written next to their final name and renamed into place
(:func:`write_text_atomic`, :func:`staged_directory`), so a failed command leaves no half-written file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from cellformer.errors import UserError

PathLike = str | os.PathLike
#: An option's value: one path, several paths (repeated options), or unset.
Paths = PathLike | Iterable[PathLike] | None


def _paths(value: Paths) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, str | os.PathLike):
        value = [value]
    return [Path(v) for v in value if v is not None and str(v) not in {"", "-"}]


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file: the same file on disk where both exist (links
    included), else the same absolute path once resolved."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return a.absolute() == b.absolute()


def _check_writable_name(label: str, path: Path) -> None:
    if path.is_dir():
        raise UserError(f"{label} {path} is a directory; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{label} {path}: {parent} is a file, not a directory")
            break


def check_outputs(
    outputs: Mapping[str, Paths],
    inputs: Mapping[str, Paths] | None = None,
    *,
    force: bool = False,
    may_exist: Iterable[str] = (),
) -> None:
    """Apply the rule of the module docstring to a command's ``outputs`` and ``inputs`` (option name ->
    path(s)); raises :class:`UserError` on the first violation."""
    keep = set(may_exist)
    outs = [(label, p) for label, v in outputs.items() for p in _paths(v)]
    ins = [(label, p) for label, v in (inputs or {}).items() for p in _paths(v)]
    for i, (label, out) in enumerate(outs):
        _check_writable_name(label, out)
        for in_label, src in ins:
            if same_file(out, src):
                raise UserError(f"{label} {out} is the input file itself ({in_label}); write to another file")
        for other_label, other in outs[:i]:
            if same_file(out, other):
                raise UserError(f"{label} {out} is also {other_label}; give the outputs different names")
    for label, out in outs:
        if label not in keep and out.exists() and not force:
            raise UserError(f"{label} {out} already exists; pass --force to overwrite it")


def check_output_dir(
    label: str,
    directory: PathLike,
    files: Iterable[str],
    inputs: Mapping[str, Paths] | None = None,
    *,
    force: bool = False,
) -> Path:
    """:func:`check_outputs` for the ``files`` a command writes into ``directory`` (which must not be a file)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{label} {directory} is a file; give a directory")
    for parent in directory.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{label} {directory}: {parent} is a file, not a directory")
            break
    check_outputs({f"{label} file": [directory / f for f in files]}, inputs, force=force)
    return directory


def _tmp_name(path: Path, tag: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{tag}")


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_directory(directory: PathLike) -> Iterator[Path]:
    """A temporary folder next to ``directory`` to write a command's files into.

    When the block ends normally its files are moved into ``directory`` (created if needed); when it
    raises, the temporary folder is removed and ``directory`` is left as it was (not created).
    """
    directory = Path(directory).absolute()  # "." has no name to put the temporary folder beside
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(directory, "partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        directory.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, directory / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["check_output_dir", "check_outputs", "same_file", "staged_directory", "write_text_atomic"]
