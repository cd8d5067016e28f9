"""Atomic writes: a set of files appears in its folder complete, or not at all; no reader sees a partial file.

Every file AnoDODE writes (output maps, reports, figures, model bundles, training checkpoints and caches) goes
through :class:`StagedWrite`:

1. ``StagedWrite(folder)`` creates ``folder`` if needed, removes staging folders that earlier, killed runs left
   behind (see :func:`remove_stale_staging`), and makes one private staging folder inside ``folder``
   (``.anodode-staging-<host>-<pid>-<random>``: same file system, so the final moves are ``os.replace`` renames).
   A folder that cannot be written fails here, before any expensive work, with one line.
2. Each file is written into the staging folder under its final name (writers that pick the format from the
   extension, and detached-header formats such as .mhd/.nhdr that name their data file, work unchanged).
3. :meth:`StagedWrite.commit` first removes the set's *marker* (the file named last, e.g. the report) from the
   folder, then renames the other files into place and the marker last. A reader that takes a set as complete
   only when its marker exists never sees a mix of two runs or a partial set, even after SIGKILL.
4. On leaving the ``with`` block the staging folder is removed, on success, on error and on SIGINT/SIGTERM
   (both raise in the main thread); only SIGKILL leaves it, for the next run to remove.

Files named in ``protect`` (the run's inputs) are never replaced: :class:`OutputError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)
PathLike = str | os.PathLike

STAGING_PREFIX = ".anodode-staging-"
#: A staging folder older than this (seconds) is stale whoever made it (another host, or a reused pid).
STALE_AFTER_S = 24 * 3600.0
#: Staging folders of AnoDODE <= 0.x (one per file: ``.<name>.tmp-XXXXXXXX``); written for < 1 s, so one
#: older than LEGACY_STALE_AFTER_S seconds is debris of a killed run.
_LEGACY = re.compile(r"^\..+\.tmp-[A-Za-z0-9_]{8}$")
LEGACY_STALE_AFTER_S = 3600.0


class OutputError(ValueError):
    """An output that cannot be written where asked (folder missing or read-only, or it would replace an
    input); the message is one line, user-facing."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (POSIX signal 0); on Windows always True (os.kill would terminate it), so
    there a staging folder is judged by age alone."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_protect(path: PathLike, protect: Iterable[PathLike]) -> None:
    """:class:`OutputError` when ``path`` is (resolves to, or is a link to) one of ``protect``."""
    for p in protect:
        if _same_file(Path(path), Path(p)):
            raise OutputError(f"refusing to overwrite input {path}; choose another output path")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the duration: their handlers run right after, in arrival order.

    Python runs signal handlers in the main thread, whichever thread the kernel delivered the signal to, so
    swapping in a recorder for the duration defers them reliably (a thread's signal mask would not: a
    process-directed signal goes to any thread that does not block it). Outside the main thread, where
    handlers cannot be swapped, nothing is deferred.
    """
    pending: list[int] = []

    def record(signum: int, frame: object) -> None:
        pending.append(signum)

    try:
        previous = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in pending:
            handler = previous[s]
            if callable(handler):
                handler(s, None)
            elif handler != signal.SIG_IGN:
                signal.raise_signal(s)


def remove_stale_staging(folder: PathLike, now: float | None = None) -> list[Path]:
    """Remove staging folders in ``folder`` left by killed runs; returns those removed.

    A folder is stale when it was made on this host by a process that no longer runs, or is older than
    ``STALE_AFTER_S`` seconds (made elsewhere, or its pid was reused); a legacy per-file staging folder when it
    is older than ``LEGACY_STALE_AFTER_S`` seconds. Folders of runs still in progress are kept.
    """
    folder = Path(folder)
    now = time.time() if now is None else now
    host, removed = _host(), []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        try:
            if not entry.is_dir() or entry.is_symlink():
                continue
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        stale = False
        if name.startswith(STAGING_PREFIX):
            parts = name[len(STAGING_PREFIX) :].split("-")
            same_host = len(parts) >= 3 and parts[0] == host and parts[1].isdigit()
            stale = age > STALE_AFTER_S or (same_host and not _pid_alive(int(parts[1])))
        elif _LEGACY.match(name):
            stale = age > LEGACY_STALE_AFTER_S
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                logger.info("removed %s, left by an interrupted earlier run", entry)
                removed.append(entry)
    return removed


class StagedWrite:
    """Write a set of files into ``folder`` atomically (see the module docstring).

    ``with StagedWrite(folder, protect) as staged: write(staged.path(name)) ...; staged.commit()``. Files of
    the set are registered by :meth:`path` in the order they are to appear; the last registered is the
    set's marker. Nothing is moved unless :meth:`commit` is called.
    """

    def __init__(self, folder: PathLike, protect: Iterable[PathLike] = ()) -> None:
        self.folder = Path(folder) if str(folder) else Path(".")
        self.protect = [Path(p) for p in protect]
        self.staging: Path | None = None
        self.names: list[str] = []

    def __enter__(self) -> StagedWrite:
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"{self.folder}: the output folder is a file")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"{self.folder}: cannot create the output folder ({exc.strerror or exc})"
            ) from None
        remove_stale_staging(self.folder)
        try:
            self.staging = Path(
                tempfile.mkdtemp(dir=self.folder, prefix=f"{STAGING_PREFIX}{_host()}-{os.getpid()}-")
            )
        except OSError as exc:
            raise OutputError(
                f"{self.folder}: the output folder is not writable ({exc.strerror or exc})"
            ) from None
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def path(self, name: str) -> Path:
        """The staging path of the set's file ``name`` (a bare file name); registers it in the set."""
        if self.staging is None:
            raise RuntimeError("StagedWrite.path() outside its with block")
        if Path(name).name != name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a bare file name")
        check_protect(self.folder / name, self.protect)
        if name not in self.names:
            self.names.append(name)
        return self.staging / name

    def commit(self) -> list[Path]:
        """Move the set into the folder, the marker (last registered file) last; returns the final paths.

        Files a writer produced beside a registered one (e.g. the .raw of a .mhd) move before it.
        """
        if self.staging is None:
            raise RuntimeError("StagedWrite.commit() outside its with block")
        produced = {f.name for f in self.staging.iterdir()}
        missing = [n for n in self.names if n not in produced]
        if missing:
            raise OSError(f"{self.folder / missing[0]}: the writer produced no file")
        order = sorted(produced - set(self.names)) + self.names
        for name in order:
            check_protect(self.folder / name, self.protect)
        moved: list[Path] = []
        with _signals_deferred():  # SIGINT/SIGTERM wait until the set is in place (milliseconds of renames)
            try:
                if len(self.names) > 1:  # the old set is incomplete from here on (one file: a plain replace)
                    (self.folder / self.names[-1]).unlink(missing_ok=True)
                for name in order:
                    os.replace(self.staging / name, self.folder / name)
                    moved.append(self.folder / name)
            except BaseException:
                if len(self.names) > 1:  # all or none: a failed rename leaves no part of the new set
                    for path in moved:
                        path.unlink(missing_ok=True)
                raise
        return moved


def write_file(
    path: PathLike,
    write: Callable[[Path], None],
    protect: Iterable[PathLike] = (),
    create_folder: bool = False,
) -> Path:
    """Write one file atomically: ``write(staging_path)`` writes it, then it replaces ``path``.

    Raises :class:`OutputError` when ``path`` is one of ``protect``, or when its folder does not exist (and
    ``create_folder`` is False) or cannot be written.
    """
    path = Path(path)
    check_protect(path, protect)
    folder = path.parent if str(path.parent) else Path(".")
    if not create_folder and not folder.is_dir():
        raise OutputError(f"{path}: the output folder does not exist")
    with StagedWrite(folder, protect) as staged:
        write(staged.path(path.name))
        staged.commit()
    return path


def write_bytes(
    path: PathLike, data: bytes, protect: Iterable[PathLike] = (), create_folder: bool = False
) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`write_file`)."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return write_file(path, write, protect, create_folder)
