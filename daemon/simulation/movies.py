"""A simulated acquisition: synthetic movies written into a folder the way a detector writes them.

Like SerialEM's frame saving, each MRC movie is created under its final name with a header that
announces the EXPECTED frame count, frames are appended one by one over time (the partial file is
visible meanwhile), and the header is rewritten at the end with the ACTUAL count (which can be
smaller when the exposure stops early). Optionally SerialEM's per-movie frame ``.mdoc`` follows
the last frame. One movie can instead arrive by rename (written under ``<name>.part``, then
renamed), as a copy from a camera PC does. Pixels come from :mod:`correction.synthetic` (the
daemon does no pixel math). Used by the tests and by ``motionwatch demo``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from correction.mdoc_text import format_mdoc
from correction.write import atomic_write

__all__ = ["SimulatedMovie", "mrc_movie_header", "write_movie_progressively", "write_frame_mdoc",
           "simulate_session"]


@dataclass(frozen=True, slots=True)
class SimulatedMovie:
    """One movie the simulator wrote, with its truth.

    Attributes
    ----------
    path : Path
    n_frames : int
        Frames actually written (the final header's count).
    shape_yx : (int, int)
    shifts_yx_px : ndarray, shape (n_frames, 2)
        True specimen displacement per frame (:mod:`correction.conventions`).
    complete : bool
        False for a movie deliberately left unfinished.
    """

    path: Path
    n_frames: int
    shape_yx: tuple[int, int]
    shifts_yx_px: np.ndarray
    complete: bool = True


def mrc_movie_header(n_frames: int, shape_yx: tuple[int, int], *, pixel_size_A: float) -> bytes:
    """A 1024-byte MRC2014 header for an int16 (mode 1) stack of ``n_frames`` frames."""
    import mrcfile

    from correction.write import mrc_header_bytes

    raw = bytearray(mrc_header_bytes((n_frames, *shape_yx), pixel_size_A=pixel_size_A,
                                     stats=(0.0, 0.0, 0.0, 0.0)))
    header = np.frombuffer(raw, dtype=mrcfile.dtypes.HEADER_DTYPE.newbyteorder("="), count=1)
    header["mode"] = 1
    # a detector's movie, not an output of motionwatch's (which an output may replace)
    header["label"][0, 0] = b"SerialEM: a movie simulated for motionwatch's demo".ljust(80)
    return bytes(raw)


def write_movie_progressively(path: Path, frames: np.ndarray, *, pixel_size_A: float,
                              frame_interval_s: float = 0.05,
                              expected_frames: int | None = None,
                              stop_after: int | None = None, via_rename: bool = False,
                              sleep: Callable[[float], None] = time.sleep) -> int:
    """Write ``frames`` (int16) into an MRC movie frame by frame, as a detector does.

    Parameters
    ----------
    path : Path
        Final name of the movie.
    frames : ndarray, shape (n_frames, ny, nx)
    pixel_size_A : float
    frame_interval_s : float
        Pause between frames (s); the header is rewritten right after the last one.
    expected_frames : int, optional
        Frame count in the first header (default ``len(frames)``); the header is rewritten with
        the actual count at the end.
    stop_after : int, optional
        Stop after this many frames WITHOUT rewriting the header: a movie that never completes.
    via_rename : bool
        Write everything under ``<name>.part`` and rename it to ``path`` at the end.

    Returns
    -------
    int
        Frames written.
    """
    data = np.ascontiguousarray(frames, dtype=np.int16)
    n, ny, nx = data.shape
    expected = n if expected_frames is None else expected_frames
    target = path.with_name(path.name + ".part") if via_rename else path
    written = 0
    with open(target, "wb") as fh:
        fh.write(mrc_movie_header(expected, (ny, nx), pixel_size_A=pixel_size_A))
        fh.flush()
        for frame in data:
            if stop_after is not None and written >= stop_after:
                return written
            if written:
                sleep(frame_interval_s)
            fh.write(frame.tobytes())
            fh.flush()
            written += 1
        fh.seek(0)
        fh.write(mrc_movie_header(written, (ny, nx), pixel_size_A=pixel_size_A))
        fh.flush()
        os.fsync(fh.fileno())
    if via_rename:
        os.replace(target, path)
    return written


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _serialem_datetime(t: time.struct_time) -> str:
    """``DateTime`` as SerialEM writes it (``07-Jun-23  00:11:09``: English month, whatever
    the locale)."""
    return f"{t.tm_mday:02d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year % 100:02d}  " \
           f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


def write_frame_mdoc(movie: Path, n_frames: int, *, pixel_size_A: float,
                     dose_per_frame_e_A2: float) -> Path:
    """SerialEM's per-movie ``<movie>.mdoc`` (``[FrameSet = 0]``), written after the frames,
    with the keys SerialEM writes in that order (stage at 0 degrees; ``DateTime`` now, local
    time, in SerialEM's format)."""
    path = movie.with_name(movie.name + ".mdoc")
    payload = format_mdoc(
        [("PixelSpacing", pixel_size_A), ("ImageFile", movie.name)],
        [[("TiltAngle", 0.0), ("ExposureDose", n_frames * dose_per_frame_e_A2),
          ("PixelSpacing", pixel_size_A), ("SubFramePath", movie.name),
          ("NumSubFrames", n_frames), ("FrameDosesAndNumber", (dose_per_frame_e_A2, n_frames)),
          ("DateTime", _serialem_datetime(time.localtime()))]],
        section_key="FrameSet").encode()
    atomic_write(path, lambda fh: fh.write(payload))
    return path


def simulate_session(folder: Path, *, n_movies: int, rng: np.random.Generator,
                     shape_yx: tuple[int, int] = (256, 256), n_frames: int = 6,
                     pixel_size_A: float = 1.1, electrons_per_px_per_frame: float = 1.0,
                     frame_interval_s: float = 0.05, movie_interval_s: float = 0.1,
                     rename_indices: Sequence[int] = (1,), early_stop_indices: Sequence[int] = (),
                     frame_mdoc: bool = False, name: str = "movie_{index:03d}.mrc",
                     gain: np.ndarray | None = None,
                     sleep: Callable[[float], None] = time.sleep) -> list[SimulatedMovie]:
    """Write ``n_movies`` synthetic movies into ``folder``, one after another.

    Parameters
    ----------
    folder : Path
    n_movies : int
    rng : numpy.random.Generator
    shape_yx, n_frames, pixel_size_A, electrons_per_px_per_frame
        What each movie looks like (see :func:`correction.synthetic.render_movie`).
    frame_interval_s, movie_interval_s : float
        Pause after each frame and between movies (s).
    rename_indices : sequence of int
        Movies that arrive by rename instead of being written in place.
    early_stop_indices : sequence of int
        Movies whose header first announces ``n_frames + 2`` frames, then is rewritten with
        ``n_frames`` (the exposure stopped early).
    frame_mdoc : bool
        Write SerialEM's per-movie frame mdoc after each movie.
    gain : ndarray, optional
        Gain pattern to render with (None: no gain, flat detector).

    Returns
    -------
    list of SimulatedMovie
    """
    from correction.synthetic import render_movie

    folder.mkdir(parents=True, exist_ok=True)
    movies = []
    for index in range(n_movies):
        synthetic = render_movie(rng, shape_yx=shape_yx, n_frames=n_frames,
                                 electrons_per_px_per_frame=electrons_per_px_per_frame,
                                 pixel_size_A=pixel_size_A,
                                 gain=gain if gain is not None else None,
                                 n_hot_pixels=0 if gain is None else 5, dtype=np.int16)
        path = folder / name.format(index=index)
        expected = n_frames + 2 if index in early_stop_indices else None
        written = write_movie_progressively(path, synthetic.frames, pixel_size_A=pixel_size_A,
                                            frame_interval_s=frame_interval_s,
                                            expected_frames=expected,
                                            via_rename=index in rename_indices, sleep=sleep)
        if frame_mdoc:
            write_frame_mdoc(path, written, pixel_size_A=pixel_size_A,
                             dose_per_frame_e_A2=electrons_per_px_per_frame / pixel_size_A ** 2)
        movies.append(SimulatedMovie(path, written, shape_yx, synthetic.shifts_yx_px))
        sleep(movie_interval_s)
    return movies
