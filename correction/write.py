"""Atomic writers for results: float32 MRC images/stacks and JSON records.

Each writer writes to a dotfile in the target folder (``.S.mrc.tmp-<pid>``, invisible to
watchers that skip dotfiles), flushes and fsyncs it, renames it over the target with
``os.replace`` and fsyncs the folder, so a reader sees either the old file or the complete new
one, never a partial one. On any error the temporary file is removed and the target is left
as it was.

:func:`write_output_set` does the same for a movie's whole set of outputs: every file is
written and fsynced under its temporary name first (the files of a set at the same time, in a
few threads: the writes and fsyncs of one overlap the others'), and only when all are written
are they renamed into place, in order (the motion record last, so a record on disk means its images are
there). A failed write (a full disk, a read-only folder) removes every temporary and leaves no
file of the set behind; the ``OSError`` keeps its ``errno`` (``ENOSPC``, ``EACCES`` ...).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, Any

import mrcfile.dtypes
import mrcfile.utils
import numpy as np

__all__ = ["write_mrc_atomic", "write_json_atomic", "mrc_header_bytes", "atomic_write",
           "write_output_set", "mrc_writer", "json_writer", "temporary_name", "plain"]

#: writes one file's whole content to the binary handle it is given
Writer = Callable[[IO[bytes]], None]

_LABEL = b"motionwatch"
_WRITE_THREADS = 4  # files of a set written at once
_ROW_BLOCK_BYTES = 4 << 20  # rows of a strided image copied (in cache) and written at a time


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
    daemon removes such files left by a killed process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _write_synced(tmp: Path, write: Writer) -> None:
    with open(tmp, "wb") as fh:
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
    fsynced.

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
    OSError
        A write, fsync or rename failed (``errno`` kept: ``ENOSPC``, ``EDQUOT``, ``EACCES``,
        ``EROFS`` ...). Every temporary is removed; no file of the set was renamed into place
        unless the failure was in a rename itself, and then the files before it in the order
        given are in place and the later ones (the record) are not.
    """
    paths = [Path(p) for p, _ in files]
    temps = [temporary_name(p) for p in paths]
    try:
        _write_all(temps, [write for _, write in files])
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            _unlink_quietly(tmp)
        raise
    for folder in dict.fromkeys(p.parent for p in paths):
        _fsync_dir(folder)
    return paths


def _write_all(temps: Sequence[Path], writers: Sequence[Writer]) -> None:
    """Write and fsync every temporary, several at once. At the first error the writes not
    yet started are dropped (a full disk is not written to further) and the error is raised
    once the writes in progress have ended, so no thread writes a temporary after the caller
    has removed it."""
    if len(temps) <= 1:
        for tmp, write in zip(temps, writers):
            _write_synced(tmp, write)
        return
    pool = ThreadPoolExecutor(max_workers=min(len(temps), _WRITE_THREADS),
                              thread_name_prefix="write")
    try:
        futures = [pool.submit(_write_synced, tmp, write) for tmp, write in zip(temps, writers)]
        wait(futures, return_when=FIRST_EXCEPTION)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for future in futures:
        if not future.cancelled() and future.exception() is not None:
            raise future.exception()


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


def _stats(data: np.ndarray) -> tuple[float, float, float, float]:
    """min, max, mean and rms deviation of float32 ``data`` for the header.

    The mean is numpy's pairwise float32 sum; the deviation is summed about that mean in
    blocks of 2**20 values (float32 dot products, added in float64), which keeps the relative
    error near 1e-6 at a fraction of the cost of a float64 copy.
    """
    rows = _as_rows(data)
    n = rows.size
    blocks = [rows[r:r + _rows_per_block(rows)] for r in range(0, len(rows), _rows_per_block(rows))]
    mean = sum(float(np.add.reduce(b, axis=None, dtype=np.float32)) for b in blocks) / n
    buf = np.empty(blocks[0].shape, dtype=np.float32)
    total_sq = 0.0
    m32 = np.float32(mean)
    for chunk in blocks:
        dev = buf[:len(chunk)]
        np.subtract(chunk, m32, out=dev)
        flat = dev.reshape(-1)
        total_sq += float(np.dot(flat, flat))
    return (min(float(b.min()) for b in blocks), max(float(b.max()) for b in blocks), mean,
            math.sqrt(total_sq / n))


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
    """A writer of ``data`` as a float32 MRC (mode 2) file, for :func:`write_output_set`.

    The header (with the statistics) is computed here, before anything is written.

    Parameters
    ----------
    data : ndarray, shape (ny, nx) or (nz, ny, nx)
        Converted to float32 (native byte order) if needed.
    pixel_size_A : float or None
        Voxel size written to the header (Å); None leaves it 0 (unknown).
    labels : tuple of str
        Extra header labels (e.g. the source movie), up to 9.
    """
    data = np.asarray(data)
    if data.ndim not in (2, 3):
        raise ValueError(f"MRC data must be 2-D or 3-D, got shape {data.shape}")
    strided_rows = (data.ndim == 2 and data.dtype == np.float32 and data.dtype.isnative
                    and data.strides[1] == data.itemsize and not data.flags.c_contiguous)
    if not strided_rows:  # a cropped image is written as it is, rows copied in blocks
        data = np.ascontiguousarray(data, dtype=np.float32)
    header = mrc_header_bytes(data.shape, pixel_size_A=pixel_size_A, stats=_stats(data),
                              labels=labels)

    def write(fh: IO[bytes]) -> None:
        fh.write(header)
        if data.flags.c_contiguous:
            fh.write(memoryview(data).cast("B"))
            return
        step = _rows_per_block(data)
        buf = np.empty((step, data.shape[1]), np.float32)
        for r in range(0, len(data), step):
            block = buf[:len(data[r:r + step])]
            np.copyto(block, data[r:r + step])
            fh.write(memoryview(block).cast("B"))

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
