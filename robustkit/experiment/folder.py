"""A run folder: one run at a time, paths that stay inside it, and a list of what
robustkit wrote there, so ``--fresh`` deletes that and nothing else.

- **The lock.** A run holds an exclusive ``flock`` on ``<root>/.robustkit.lock`` (the pid
  written in it) from before it deletes or writes anything until it ends, also on an
  error. A second run on the same folder, with or without ``--fresh``, is refused with
  the pid that holds it. The kernel releases the lock when the process dies, even by
  SIGKILL; the file itself stays (it is only a place to lock).
- **Many processes.** Under torchrun the run's rank 0 takes the lock and holds it until
  the results and the report are written; the other ranks never try to take it (a
  ``flock`` held by a sibling would refuse them) and start only once rank 0 holds it and
  has cleaned and claimed the folder (so :meth:`RunFolder.remove_stale` never meets a
  rank's temporary file in flight). They write only unit files and checkpoints, inside
  ``units/`` and ``models/`` (listed whole by rank 0), through atomic writes whose
  temporary names carry their own pid, and never touch ``.robustkit-files``. A second
  run on the folder, of any number of processes, is refused by the lock on its rank 0,
  and its other ranks stop with rank 0's message.
- **What robustkit wrote.** ``<root>/.robustkit-files`` lists, one a line, each path
  robustkit wrote (``config.toml``, ``results.json``, ``models/mlp-s0.pt`` ...) and,
  ending in ``/``, the folders it created itself (``units/``, ``models/``, ``figures/``).
  A path is listed before it is written, so a run killed at any moment leaves nothing
  unlisted. ``--fresh`` deletes the folders robustkit created, whole, and the listed
  files; a file of the user's (``notes.txt``, a link pointing elsewhere) is never touched,
  and no link is followed. A run refuses a folder where one of the names it writes
  (``units/``, ``models/``, ``figures/``, ``config.toml``, ``results.json``,
  ``manifest.json``, ``index.html``, ``README.md``) is taken by something robustkit did
  not write, so the user's own ``README.md`` or ``models/`` is never overwritten.
- **Inside.** Every path robustkit builds (unit files in the store, checkpoints in the
  context) is checked to resolve inside the folder.

Example:
    >>> folder = RunFolder("reports/quickstart")        # doctest: +SKIP
    >>> with folder.locked():                           # doctest: +SKIP
    ...     folder.clean()                              # what --fresh does
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from robustkit.core import check_writable_dir
from robustkit.errors import RobustkitError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".robustkit.lock"
LEDGER = ".robustkit-files"
#: The folders robustkit writes into.
FOLDERS = ("units", "models", "figures")
#: The files robustkit writes at the top of a run folder.
FILES = ("config.toml", "results.json", "manifest.json", "index.html", "README.md")
#: A temporary file of robustkit's atomic writes: ``.NAME.PID.tmp`` beside ``NAME``.
_TMP = re.compile(r"\.(.+)\.\d+\.tmp")


@contextmanager
def lock(root: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of run folder ``root`` (created if missing) while inside.

    Raises:
        RobustkitError: another process (or another ``lock`` in this one) holds it; the
            message names the pid written in the lock file.

    Example:
        >>> with lock("reports/quickstart"):     # doctest: +SKIP
        ...     pass                             # no other run can use the folder here
    """
    folder = Path(root)
    check_writable_dir(folder, "run folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                     0o644)
    except OSError as err:
        raise RobustkitError(f"cannot lock run folder {folder}: {err.strerror}") from None
    try:
        _acquire(fd, folder)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield folder
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(fd: int, folder: Path) -> None:
    if fcntl is None:  # pragma: no cover - Windows
        warnings.warn("no fcntl on this platform: the run folder is not locked", stacklevel=3)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        raise RobustkitError(
            f"run folder {folder} is in use by another run (pid {holder}); wait for it to "
            f"finish, or choose another --out") from None


class RunFolder:
    """The run folder ``root``: its lock, its layout, and what robustkit wrote there.

    Args:
        root: the folder (used as given: the user chose it).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._listed: set[str] | None = None

    @contextmanager
    def locked(self) -> Iterator[Path]:
        """Hold the folder's lock (see :func:`lock`); what robustkit wrote is read afresh
        once it is held."""
        with lock(self.root) as root:
            self._listed = None
            yield root

    def check_layout(self) -> None:
        """Refuse, before any work, a folder robustkit cannot write into: the root or one
        of its folders is a file or a link, or one of its files is a folder."""
        check_writable_dir(self.root, "run folder")
        for name in FOLDERS:
            p = self.root / name
            if p.is_symlink():
                raise RobustkitError(f"{p} is a link; robustkit writes only into a real "
                                     "folder there (remove the link, or choose another --out)")
            if p.exists() and not p.is_dir():
                raise RobustkitError(f"{p} is a file, not a folder; robustkit needs the name "
                                     "for its own folder (move it, or choose another --out)")
        for name in (*FILES, LOCK, LEDGER):
            p = self.root / name
            if p.is_dir() and not p.is_symlink():
                raise RobustkitError(f"{p} is a folder; robustkit needs the name for its "
                                     "own file (move it, or choose another --out)")

    # -- what robustkit wrote ----------------------------------------------------
    def is_ours(self, relative: str) -> bool:
        """Whether robustkit listed ``relative``, or a folder above it, as its own."""
        if self._listed is None:
            self._listed = set(self.ledger())
        parts = relative.rstrip("/").split("/")
        return relative in self._listed or any(
            "/".join(parts[:i]) + "/" in self._listed for i in range(1, len(parts)))

    def wrote(self, relative: str) -> None:
        """List ``relative`` (a file, or a folder robustkit created, ending in ``/``) as
        robustkit's, before it is written. Paths inside a listed folder need no line."""
        if not relative or self.is_ours(relative):
            return
        assert self._listed is not None  # filled by is_ours
        self._listed.add(relative)
        path = self.root / LEDGER
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                         | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                os.write(fd, f"{relative}\n".encode())
            finally:
                os.close(fd)
        except OSError as err:
            raise RobustkitError(f"cannot write {path}: {err.strerror}") from None

    def make_folder(self, name: str) -> Path:
        """``root/name``, created and listed as robustkit's when it is not there yet."""
        p = self.root / name
        if not p.exists() and not p.is_symlink():
            self.wrote(f"{name}/")
            p.mkdir(parents=True, exist_ok=True)
        return p

    def ledger(self) -> list[str]:
        """The listed paths that are safe to act on (relative, no ``..``, no NUL)."""
        path = self.root / LEDGER
        if path.is_symlink() or not path.is_file():
            return []
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
        safe = []
        for line in lines:
            parts = line.rstrip("/").split("/")
            if line and not line.startswith("/") and "\0" not in line \
                    and all(p not in ("", ".", "..") for p in parts):
                safe.append(line)
        return list(dict.fromkeys(safe))

    def clean(self) -> list[str]:
        """Delete what robustkit wrote here (``--fresh``); return the paths deleted.

        Folders robustkit created go whole (links inside them are removed, never
        followed); listed files go one by one, and only when they are plain files whose
        folder resolves inside the run folder. A folder from before this list existed
        (no ``.robustkit-files``, but ``units/``, ``config.toml`` and ``results.json`` or
        ``manifest.json``) is taken to hold robustkit's known names.
        """
        listed = self.ledger() or self.legacy()
        deleted = []
        for rel in listed:
            p = self.root / rel.rstrip("/")
            if rel.endswith("/"):
                if p.is_dir() and not p.is_symlink() and self._parent_inside(p):
                    shutil.rmtree(p)
                    deleted.append(rel)
            elif p.is_file() and not p.is_symlink() and self._parent_inside(p):
                p.unlink()
                deleted.append(rel)
        (self.root / LEDGER).unlink(missing_ok=True)
        self._listed = set()
        return deleted

    def _parent_inside(self, p: Path) -> bool:
        try:
            p.parent.resolve().relative_to(self.root.resolve())
            return True
        except ValueError:
            return False

    def legacy(self) -> list[str]:
        """robustkit's known names, when the folder is a run folder from before
        ``.robustkit-files`` existed (``units/``, ``config.toml`` and ``results.json`` or
        ``manifest.json``); else nothing."""
        r = self.root
        if not ((r / "units").is_dir() and (r / "config.toml").is_file()
                and ((r / "results.json").is_file() or (r / "manifest.json").is_file())):
            return []
        return [f"{name}/" for name in FOLDERS] + list(FILES)

    def remove_stale(self) -> None:
        """Delete the temporary files (``.NAME.PID.tmp``) a killed run left beside files
        robustkit writes; only the lock holder calls this, so none is another run's."""
        for name in ("units", "models"):
            top = self.root / name
            if not top.is_dir() or top.is_symlink():
                continue
            for folder, _, files in os.walk(top):  # never follows links
                for f in files:
                    found = _TMP.fullmatch(f)
                    rel = (Path(folder) / (found.group(1) if found else f)
                           ).relative_to(self.root).as_posix()
                    if found and self.is_ours(rel):
                        (Path(folder) / f).unlink(missing_ok=True)
