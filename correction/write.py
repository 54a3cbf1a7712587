"""Atomic writers for results: float32 MRC images/stacks and JSON records.

Each writer writes to a dotfile in the target folder (``.S.mrc.tmp-<pid>``, invisible to
watchers that skip dotfiles), flushes and fsyncs it, renames it over the target with
``os.replace`` and fsyncs the folder, so a reader sees either the old file or the complete new
one, never a partial one. On any error the temporary file is removed and the target is left
as it was. A target that exists and is a file of a kind detectors write (MRC, TIFF, EER)
that motionwatch did not write (its marks: the ``motionwatch`` label of its MRC files, the word
in its TIFFs' description) is never replaced: :class:`~correction.errors.ForeignOutputError`
(a raw movie of the same name in an output folder that is a frames folder).

:func:`write_output_set` (and :class:`OutputSet`) does the same for a movie's whole set of
outputs: every file is written and fsynced under its temporary name first (the files of a set
at the same time, in a few threads: the writes and fsyncs of one overlap the others'), and only
when all are written are they renamed into place, in order (the motion record last, so a record
on disk means its images are there). A failed write (a full disk, a read-only folder) removes
every temporary and leaves no file of the set behind; the ``OSError`` keeps its ``errno``
(``ENOSPC``, ``EACCES`` ...).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, Any

import mrcfile.dtypes
import mrcfile.utils
import numpy as np

from .errors import ForeignOutputError

__all__ = ["write_mrc_atomic", "write_json_atomic", "mrc_header_bytes", "atomic_write",
           "write_output_set", "OutputSet", "mrc_writer", "json_writer", "temporary_name", "plain",
           "open_new_file", "write_probe_error", "replace_with_hard_link",
           "text_bytes", "written_by_motionwatch"]

#: writes one file's whole content to the binary handle it is given
Writer = Callable[[IO[bytes]], None]

_LABEL = b"motionwatch"
_WRITE_THREADS = 4  # files of a set written at once
_ROW_BLOCK_BYTES = 4 << 20  # rows written (and a cropped image's rows copied) at a time
_HEADER_BYTES = mrcfile.dtypes.HEADER_DTYPE.itemsize  # 1024: no extended header
_LABELS_AT, _LABEL_BYTES, _N_LABELS = 224, 80, 10  # the MRC header's text labels
#: suffixes (lower case) of the files detectors and their software write: an output of such a
#: name replaces only a file motionwatch wrote
_GUARDED_MRC = frozenset({".mrc", ".mrcs", ".st", ".ali"})
_GUARDED_TIFF = frozenset({".tif", ".tiff", ".gain"})
_GUARDED_OTHER = frozenset({".eer", ".dm4", ".dm3"})  # motionwatch writes none of these
_TIFF_MARK_BYTES = 64 << 10  # a TIFF's description (tifffile writes it before the pixels)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories
    finally:
        os.close(fd)


def temporary_name(path: str | Path) -> Path:
    """The hidden temporary a writer uses for ``path``: ``.<name>.tmp-<pid>`` beside it (the
    daemon removes such files left by a killed process); ``.<name>.tmp-<pid>.<k>`` for a second
    set of this process writing ``path`` at the same time (:class:`_TemporariesInUse`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def replace_with_hard_link(target: str | Path, link: str | Path) -> None:
    """Make ``link`` a hard link to ``target``, replacing what was there atomically; nothing to
    do when it already is one.

    The new name is made under the writers' hidden temporary (:func:`temporary_name`), then
    renamed over ``link``: a process killed in between leaves a ``.<name>.tmp-<pid>`` that the
    daemon removes at its next start (the hand-off's links had a name of their own, and a
    third name of a stack stayed in ``aretomo3/`` for good).
    """
    target, link = Path(target), Path(link)
    with contextlib.suppress(OSError):  # no link yet (or no target: os.link says so)
        if os.path.samefile(target, link):
            return
    tmp = temporary_name(link)
    tmp.unlink(missing_ok=True)
    os.link(target, tmp)
    os.replace(tmp, link)


class _TemporariesInUse:
    """The temporaries the output sets of this process are writing. Threads share a pid, so two
    sets writing one name at once (two movies of one name, corrected in two threads into one
    folder) would write one temporary; the second gets a numbered one instead. ``renaming``
    is held while a set is renamed into place, so the sets of one process never interleave
    their renames (one set's sum beside another's record)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use: set[Path] = set()
        self.renaming = threading.Lock()

    def take(self, path: Path) -> Path:
        """A temporary for ``path`` that no other set of this process is writing."""
        base = temporary_name(path)
        with self._lock:
            candidate, k = base, 1
            while candidate in self._in_use:
                candidate, k = base.with_name(f"{base.name}.{k}"), k + 1
            self._in_use.add(candidate)
        return candidate

    def give_back(self, temporaries: Sequence[Path]) -> None:
        with self._lock:
            self._in_use.difference_update(temporaries)


#: one per process, as the pid in the temporaries' names is
_TEMPORARIES = _TemporariesInUse()


def written_by_motionwatch(path: str | Path) -> bool:
    """Whether the file at ``path`` (which exists) is motionwatch's, as far as an output of
    its name may replace it: an MRC with the ``motionwatch`` label, a TIFF that names it in its
    first 64 KiB (its description), any file of a kind detectors do not write (JSON, STAR,
    text ...). False for an EER or DM file, for a folder, and for a file that cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _GUARDED_OTHER:
        return False
    if suffix not in _GUARDED_MRC and suffix not in _GUARDED_TIFF:
        return not path.is_dir()
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER_BYTES if suffix in _GUARDED_MRC else _TIFF_MARK_BYTES)
    except OSError:
        return False
    if suffix in _GUARDED_TIFF:
        return _LABEL in head
    labels = head[_LABELS_AT:_LABELS_AT + _N_LABELS * _LABEL_BYTES]
    return any(labels[i:i + _LABEL_BYTES].startswith(_LABEL)
               for i in range(0, len(labels), _LABEL_BYTES))


def _refuse_foreign(paths: Sequence[Path]) -> None:
    """Raise :class:`ForeignOutputError` for the first of ``paths`` that exists and is not
    motionwatch's (:func:`written_by_motionwatch`), before any is replaced."""
    for path in paths:
        if os.path.lexists(path) and not written_by_motionwatch(path):
            raise ForeignOutputError(path, "an output's name, but not a file motionwatch wrote "
                                           "(a raw movie? is the output folder a frames "
                                           "folder?): not replaced")


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Defer SIGINT and SIGTERM for the block (a few renames): a Ctrl-C or a batch system's
    SIGTERM arriving meanwhile is raised again after it, so it never stops a set half renamed
    (new images beside the old record). Python runs signal handlers in the main thread
    whichever thread the signal reached, so handlers that only note the signal are installed
    for the block. Outside the main thread (a daemon's writer thread), nothing is changed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, lambda signum, frame: caught.append(signum))
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        for number in dict.fromkeys(caught):
            signal.raise_signal(number)


def open_new_file(path: str | Path, flags: int = os.O_WRONLY) -> int:
    """An fd of a file made anew at ``path`` (mode 0o666 less the umask, as ``open``): whatever
    is there already (a temporary of a writer that was killed, or a symbolic link another
    account planted in a shared output folder, to make this process write a file elsewhere) is
    removed first, never written through."""
    flags |= os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, 0o666)
    except FileExistsError:
        os.unlink(path)  # a link itself, not what it points to
        return os.open(path, flags, 0o666)


def write_probe_error(folder: str | Path) -> OSError | None:
    """Whether this process can write into ``folder``: a hidden probe file made anew
    (:func:`open_new_file`) and removed; the error when it cannot, None when it can."""
    probe = Path(folder) / f".motionwatch-write-test-{os.getpid()}"
    try:
        os.close(open_new_file(probe))
        probe.unlink()
    except OSError as exc:
        return exc
    return None


def _write_synced(tmp: Path, write: Writer) -> None:
    with open(tmp, "wb", opener=lambda path, flags: open_new_file(path)) as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_output_set(files: Sequence[tuple[str | Path, Writer]]) -> list[Path]:
    """Write several files as one set: all or none of them appear under their names.

    Each file is written to its temporary name (:func:`temporary_name`) and fsynced; only when
    every one is written are they renamed into place with ``os.replace``, in the order given
    (put the file whose presence says "done", e.g. the motion record, last), and the folders
    fsynced. The files are written at the same time, in a few threads (:class:`OutputSet`).

    Parameters
    ----------
    files : sequence of (path, writer)
        Final names (their folders must exist) and the functions writing their contents.

    Returns
    -------
    list of Path
        The final paths, in the order given.

    Raises
    ------
    ForeignOutputError
        A name is taken by a file motionwatch did not write (a raw movie): nothing replaced.
    OSError
        A write, fsync or rename failed (``errno`` kept: ``ENOSPC``, ``EDQUOT``, ``EACCES``,
        ``EROFS`` ...). Every temporary is removed; no file of the set was renamed into place
        unless the failure was in a rename itself, and then the files before it in the order
        given are in place and the later ones (the record) are not.
    """
    with OutputSet() as output_set:
        for path, write in files:
            output_set.add(path, write)
        return output_set.commit()


class OutputSet:
    """A set of files that appear together or not at all, written while the caller goes on.

    :meth:`add` starts writing a file to its temporary name at once, in a few threads (e.g. a
    movie's images are written while its pictures are drawn); :meth:`commit` waits for every
    write and renames the files into place in the order they were added (the motion record
    last), then fsyncs their folders. At the first failed write the writes not yet begun are
    dropped (a full disk is not written to further): a write that comes to its turn after a
    failure does not open its file. Leaving the ``with`` block without a commit, or with an
    error, waits for the writes in progress and removes every temporary.

    ``threads``: files written at once (default ``_WRITE_THREADS``, read when the set is made).
    """

    def __init__(self, threads: int | None = None) -> None:
        count = _WRITE_THREADS if threads is None else threads
        self._pool = ThreadPoolExecutor(max_workers=max(1, count), thread_name_prefix="write")
        self._paths: list[Path] = []
        self._temps: list[Path] = []
        self._futures: list[Future] = []
        self._failed = threading.Event()
        self._done = False

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self._discard()

    def add(self, path: str | Path, write: Writer) -> None:
        """Start writing ``path`` (its folder must exist) with ``write``."""
        if self._done:
            raise RuntimeError("the output set is already committed or discarded")
        path = Path(path)
        self._paths.append(path)
        self._temps.append(_TEMPORARIES.take(path))
        if self._failed.is_set():
            return  # a write has failed: nothing more is written; commit raises its error
        self._futures.append(self._pool.submit(self._write, self._temps[-1], write))

    def _write(self, tmp: Path, write: Writer) -> None:
        """One file, in a writing thread; skipped (never opened) once another has failed."""
        if self._failed.is_set():
            return
        try:
            _write_synced(tmp, write)
        except BaseException:
            self._failed.set()
            raise

    def commit(self) -> list[Path]:
        """Wait for every write and rename the files into place in order; the final paths.

        Raises the first failed write's ``OSError`` (every temporary removed), as
        :func:`write_output_set` does, or :class:`ForeignOutputError` (nothing replaced) when a
        name is taken by a file motionwatch did not write."""
        try:
            wait(self._futures, return_when=FIRST_EXCEPTION)
            self._pool.shutdown(wait=True, cancel_futures=True)
            for future in self._futures:
                if not future.cancelled() and future.exception() is not None:
                    raise future.exception()
            with _TEMPORARIES.renaming:  # another thread's set of these names waits
                _refuse_foreign(self._paths)
                with _stop_signals_held():  # a set renamed in part is a set of two versions
                    for tmp, path in zip(self._temps, self._paths):
                        os.replace(tmp, path)
        except BaseException:
            self._discard()
            raise
        self._done = True
        _TEMPORARIES.give_back(self._temps)
        for folder in dict.fromkeys(p.parent for p in self._paths):
            _fsync_dir(folder)
        return list(self._paths)

    def _discard(self) -> None:
        self._done = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        for tmp in self._temps:
            _unlink_quietly(tmp)
        _TEMPORARIES.give_back(self._temps)


def text_bytes(text: str) -> bytes:
    """``text`` as UTF-8 for a file a program reads names from (STAR, csv, mdoc): a file name
    that is not valid UTF-8 (a share mounted with another iocharset; Python holds its bytes as
    surrogate escapes, as :func:`os.fsdecode` does) is written as the bytes it has on disk."""
    return text.encode("utf-8", "surrogateescape")


def atomic_write(path: str | Path, write: Writer) -> Path:
    """Run ``write(fh)`` on a temporary file next to ``path``, then rename it into place.

    Parameters
    ----------
    path : str or Path
        Final name; its folder must exist.
    write : callable
        Writes the whole content to the binary file handle it is given.

    Returns
    -------
    Path
        ``path``.
    """
    return write_output_set([(path, write)])[0]


class _RunningStats:
    """min, max, mean and rms deviation of float32 data seen block by block, for the header.

    Each block's mean and sum of squared deviations (float32 pairwise sum and dot product on
    the block, in cache) are merged in float64 (Chan et al.'s pairwise update), which keeps
    the relative error near 1e-6 without a float64 copy of the data.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.low = math.inf
        self.high = -math.inf
        self._dev: np.ndarray | None = None

    def add(self, block: np.ndarray) -> None:
        """Merge a C-contiguous float32 block."""
        flat = block.reshape(-1)
        n_b = flat.size
        if n_b == 0:
            return
        if self._dev is None or self._dev.size < n_b:
            self._dev = np.empty(n_b, np.float32)
        mean_b = float(np.add.reduce(flat, dtype=np.float32)) / n_b
        dev = self._dev[:n_b]
        np.subtract(flat, np.float32(mean_b), out=dev)
        m2_b = float(np.dot(dev, dev))
        total = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * self.n * n_b / total
        self.n = total
        self.low = min(self.low, float(flat.min()))
        self.high = max(self.high, float(flat.max()))

    def result(self) -> tuple[float, float, float, float]:
        """(dmin, dmax, dmean, rms)."""
        return self.low, self.high, self.mean, math.sqrt(self.m2 / max(1, self.n))


def _as_rows(data: np.ndarray) -> np.ndarray:
    """``data`` as a 2-D array of its rows (a view: contiguous data, or an image whose rows
    are contiguous, e.g. a crop ``image[:, :nx]``)."""
    return data if data.ndim == 2 else data.reshape(-1, data.shape[-1])


def _rows_per_block(rows: np.ndarray) -> int:
    return max(1, _ROW_BLOCK_BYTES // max(1, rows.shape[1] * rows.itemsize))


def mrc_header_bytes(shape: tuple[int, ...], *, pixel_size_A: float | None,
                     stats: tuple[float, float, float, float],
                     labels: tuple[str, ...] = ()) -> bytes:
    """An MRC2014 header for float32 (mode 2) data of ``shape`` (ny, nx) or (nz, ny, nx).

    Parameters
    ----------
    shape : tuple of int
    pixel_size_A : float or None
        Stored as ``cella = n * pixel_size_A``; None stores 0 (unknown).
    stats : tuple of float
        (dmin, dmax, dmean, rms).
    labels : tuple of str
        Up to 9 extra 80-character labels (ASCII).
    """
    if len(shape) == 2:
        nz, (ny, nx) = 1, shape
    else:
        nz, ny, nx = shape
    hdr = np.zeros((), dtype=mrcfile.dtypes.HEADER_DTYPE.newbyteorder("="))
    hdr["nx"], hdr["ny"], hdr["nz"] = nx, ny, nz
    hdr["mode"] = 2
    hdr["mx"], hdr["my"], hdr["mz"] = nx, ny, nz
    pix = float(pixel_size_A) if pixel_size_A else 0.0
    hdr["cella"]["x"], hdr["cella"]["y"], hdr["cella"]["z"] = nx * pix, ny * pix, nz * pix
    hdr["cellb"]["alpha"] = hdr["cellb"]["beta"] = hdr["cellb"]["gamma"] = 90.0
    hdr["mapc"], hdr["mapr"], hdr["maps"] = 1, 2, 3
    hdr["dmin"], hdr["dmax"], hdr["dmean"], hdr["rms"] = stats
    hdr["ispg"] = 0  # image or image stack
    hdr["nversion"] = 20141
    hdr["map"] = b"MAP "
    hdr["machst"] = mrcfile.utils.machine_stamp_from_byte_order("=")
    all_labels = [_LABEL] + [s.encode("ascii", "replace")[:80] for s in labels][:9]
    for i, label in enumerate(all_labels):
        hdr["label"][i] = label.ljust(80)
    hdr["nlabl"] = len(all_labels)
    return hdr.tobytes()


def mrc_writer(data: np.ndarray, *, pixel_size_A: float | None,
               labels: tuple[str, ...] = ()) -> Writer:
    """A writer of ``data`` as a float32 MRC (mode 2) file, for :class:`OutputSet`.

    The writer writes the data in blocks of rows (a cropped image's rows copied into a block
    in cache: no full-size copy), gathers the statistics as it goes, and writes the header
    last (it runs in a writing thread of the set, not in the caller's).

    Parameters
    ----------
    data : ndarray, shape (ny, nx) or (nz, ny, nx)
        Converted to float32 (native byte order) if needed; a 2-D view whose rows are
        contiguous (``image[:, :nx]``) is written as it is.
    pixel_size_A : float or None
        Voxel size written to the header (Å); None leaves it 0 (unknown).
    labels : tuple of str
        Extra header labels (e.g. the source movie), up to 9.
    """
    data = np.asarray(data)
    if data.ndim not in (2, 3):
        raise ValueError(f"MRC data must be 2-D or 3-D, got shape {data.shape}")
    rows_contiguous = (data.ndim == 2 and data.dtype == np.float32 and data.dtype.isnative
                       and data.strides[1] == data.itemsize)
    if not rows_contiguous:
        data = np.ascontiguousarray(data, dtype=np.float32)

    def write(fh: IO[bytes]) -> None:
        rows = _as_rows(data)
        step = _rows_per_block(rows)
        copy = None if rows.flags.c_contiguous else np.empty((step, rows.shape[1]), np.float32)
        stats = _RunningStats()
        fh.seek(_HEADER_BYTES)
        for r in range(0, len(rows), step):
            block = rows[r:r + step]
            if copy is not None:
                block = copy[:len(block)]
                np.copyto(block, rows[r:r + step])
            stats.add(block)
            fh.write(memoryview(block).cast("B"))
        fh.seek(0)
        fh.write(mrc_header_bytes(data.shape, pixel_size_A=pixel_size_A, stats=stats.result(),
                                  labels=labels))

    return write


def write_mrc_atomic(path: str | Path, data: np.ndarray, *, pixel_size_A: float | None,
                     labels: tuple[str, ...] = ()) -> Path:
    """Write a float32 MRC (mode 2) image or stack atomically.

    Parameters
    ----------
    path : str or Path
    data : ndarray, shape (ny, nx) or (nz, ny, nx)
        Converted to float32 (native byte order) if needed.
    pixel_size_A : float or None
        Voxel size written to the header (Å); None leaves it 0 (unknown).
    labels : tuple of str
        Extra header labels (e.g. the source movie), up to 9.

    Returns
    -------
    Path
        ``path``.
    """
    return atomic_write(path, mrc_writer(data, pixel_size_A=pixel_size_A, labels=labels))


def plain(value: Any) -> Any:
    """A JSON-safe copy of ``value``: numpy scalars and arrays to Python numbers and lists,
    paths to str, datetimes to ISO text, non-finite floats to None, mapping keys to str, other
    objects to their str. The one sanitiser of the project (motion records, the live feed, the
    configuration summary, worker outcomes)."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, np.generic)):
        return plain(value.tolist())
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def json_writer(obj: Mapping[str, Any] | list[Any]) -> Writer:
    """A writer of ``obj`` as indented UTF-8 JSON (numpy values and Paths allowed), for
    :func:`write_output_set`; the text is produced here, so an unserialisable object raises
    (``TypeError``/``ValueError``) before any file is created."""
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=False) + "\n"
    payload = text.encode("utf-8")

    def write(fh: IO[bytes]) -> None:
        fh.write(payload)

    return write


def write_json_atomic(path: str | Path, obj: Mapping[str, Any] | list[Any]) -> Path:
    """Write ``obj`` as indented UTF-8 JSON atomically (numpy values and Paths allowed).

    The text is produced before the temporary file is created, so an unserialisable object
    leaves nothing behind.
    """
    return atomic_write(path, json_writer(obj))
