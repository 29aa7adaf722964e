"""Write a folder or a file atomically, and never delete what the user did not create.

One file (``atomic_write_text``): written under a hidden temporary name in the same folder, then
renamed over the target, so a reader or a resumed run never sees half a file.

A write builds the folder under a fresh temporary name beside the target, then renames it into
place. Readers (another replica, the PEFT loader, a crashed run's resume) see either the old
folder or the complete new one, never a half-written one.

What may be replaced at the target (``check_destination``):

- nothing there, or an empty folder: always;
- a previous output of the same kind (``FolderKind``: its marker file is present and every entry is
  a file that kind of output holds): always, it is what a rerun writes;
- any other folder: only with ``overwrite=True`` (``--overwrite`` on the command line);
- a file, a symbolic link, the working directory, the home folder, or any folder above either of
  them (``/`` included): never, not even with ``overwrite=True``.

Nothing outside the target folder is touched: the temporary folders are hidden siblings
(``.<name>.*``) that are removed on failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FolderKind:
    """One kind of output folder, recognised so that a rerun may replace its own earlier output.

    Args:
        name: what it is called in messages, e.g. ``"PEFT adapter"``.
        marker: the file every such folder holds, e.g. ``adapter_config.json``.
        files: every name such a folder may hold; a folder with anything else in it is not
            treated as a previous output (it may hold the user's files).
    """

    name: str
    marker: str
    files: frozenset[str]

    def __post_init__(self):
        if self.marker not in self.files:
            raise ValueError(f"FolderKind.files must include the marker {self.marker!r}")

    def holds(self, folder: Path) -> bool:
        """Whether ``folder`` is a previous output of this kind (and nothing else)."""
        entries = list(folder.iterdir())
        return (folder / self.marker).is_file() and all(
            e.name in self.files and e.is_file() and not e.is_symlink() for e in entries
        )


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def _protected(path: Path) -> str | None:
    """Why ``path`` (resolved) must never be replaced, or None."""
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if path == cwd:
        return "it is the working directory"
    if path in cwd.parents:
        return "it holds the working directory"
    if path == home:
        return "it is the home folder"
    if path in home.parents:
        return "it holds the home folder"
    if path.parent == path:
        return "it is a file-system root"
    return None


def check_destination(
    out_dir: str | Path, kind: FolderKind | None = None, overwrite: bool = False
) -> Path:
    """Raise unless ``out_dir`` may be written (see the module docstring); return it.

    Raises:
        FileExistsError: ``out_dir`` is a file or link, or a non-empty folder that is not a
            previous output of ``kind`` and ``overwrite`` is False.
        ValueError: ``out_dir`` is the working directory, home, or a folder above them.
    """
    shown_as, out_dir = out_dir, _absolute(out_dir)
    if out_dir.is_symlink():
        raise FileExistsError(f"{shown_as} is a symbolic link; refusing to replace it")
    if not out_dir.exists():
        return out_dir
    if not out_dir.is_dir():
        raise FileExistsError(f"{shown_as} exists and is not a folder; refusing to replace it")
    reason = _protected(out_dir.resolve())
    if reason:
        raise ValueError(f"refusing to replace {shown_as}: {reason} (not even with overwrite)")
    if overwrite or not any(out_dir.iterdir()) or (kind is not None and kind.holds(out_dir)):
        return out_dir
    names = sorted(e.name for e in out_dir.iterdir())
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    article = "an" if kind and kind.name[0].lower() in "aeiou" else "a"
    what = f"{article} {kind.name} folder" if kind else "a folder hypergen wrote"
    raise FileExistsError(
        f"{shown_as} is not empty and is not {what} ({len(names)} entries: {shown}); choose another "
        "folder, or replace it and everything in it with overwrite=True (--overwrite on the "
        "command line)"
    )


@contextmanager
def atomic_folder(
    out_dir: str | Path, kind: FolderKind | None = None, overwrite: bool = False
) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it takes the place of ``out_dir``.

    Args:
        out_dir: the folder to create or replace (checked with ``check_destination`` first).
        kind: what is being written; a previous output of this kind is replaced.
        overwrite: also replace any other folder (for callers that own ``out_dir``, such as a
            training run's checkpoints or the service's store, or when the user asked for it).

    On error the temporary folder is removed and ``out_dir`` is left as it was.
    """
    out_dir = _absolute(out_dir)  # '.' and 'x/..' have no usable name or parent
    check_destination(out_dir, kind, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        # mkdtemp makes 0700 folders; give the result the permissions a plain mkdir would have.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        check_destination(out_dir, kind, overwrite)  # it may have changed while we wrote
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(new: Path, out_dir: Path) -> None:
    """Rename ``new`` to ``out_dir``; an existing ``out_dir`` is moved aside first, then removed
    (and put back if the rename fails)."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
        os.replace(out_dir, old / "folder")
    try:
        os.replace(new, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old / "folder", out_dir)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; the parent folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)  # mkstemp makes owner-only files; give what open() would
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
