"""A simulated tilt-series acquisition, written the way SerialEM writes one.

Dose-symmetric order (0, +step, -step, +2 step, -2 step, ...; Hagen et al. 2017). At the start
the stack's ``<name>.mrc.openTS`` lock and the series ``<name>.mrc.mdoc`` (global values and
titles, no section yet) appear. Then per tilt: the movie is written frame by frame
(:func:`daemon.simulation.movies.write_movie_progressively`: header announcing the frames, frames
appended, header rewritten at the end) and one ``[ZValue = n]`` section is appended to the mdoc,
with ``TiltAngle``, ``ExposureDose``, ``PriorRecordDose`` (SerialEM's running sum),
``SubFramePath`` as a Windows path, ``NumSubFrames``, ``FrameDosesAndNumber``, ``TimeStamp``
and ``DateTime`` (a simulated acquisition clock, one tilt every ``tilt_period_s``). At the end
the lock is removed and, optionally, the mdoc is rewritten sorted by angle (ZValue then follows
angle), as SerialEM does after a dose-symmetric series. Two tilts can be made to *arrive* in the
opposite order of their acquisition (the later tilt's movie is written first), as a slow copy
from the camera PC does. Pixels come from :mod:`correction.synthetic`.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from correction.mdoc_text import MdocValue, format_mdoc
from correction.write import atomic_write

from daemon.series.mdoc import TIMESTAMP_EPOCH  # the reader's epoch: written stamps read back exactly
from daemon.simulation.movies import SimulatedMovie, write_movie_progressively

__all__ = ["SimulatedTilt", "dose_symmetric_angles", "simulate_tilt_series", "series_mdoc_text",
           "TIMESTAMP_EPOCH"]


@dataclass(frozen=True, slots=True)
class SimulatedTilt:
    """One tilt the simulator acquired, with its truth.

    Attributes
    ----------
    movie : SimulatedMovie
    tilt_deg : float
    acquisition_index : int
        0 = first exposed.
    dose_e_A2, pre_exposure_e_A2 : float
        Its dose and the dose of every tilt acquired before it (e/Å²).
    acquired_at : datetime.datetime
        The simulated acquisition time written in the mdoc.
    """

    movie: SimulatedMovie
    tilt_deg: float
    acquisition_index: int
    dose_e_A2: float
    pre_exposure_e_A2: float
    acquired_at: _dt.datetime


def dose_symmetric_angles(n_tilts: int, step_deg: float = 3.0) -> list[float]:
    """0, +step, -step, +2 step, -2 step, ... (``n_tilts`` angles, degrees)."""
    out = [0.0]
    k = 1
    while len(out) < n_tilts:
        out.append(k * step_deg)
        if len(out) < n_tilts:
            out.append(-k * step_deg)
        k += 1
    return out


def _section(tilt: SimulatedTilt, *, pixel_size_A: float, n_frames: int,
             frames_folder: str) -> list[tuple[str, MdocValue]]:
    """The keys SerialEM writes for one tilt (values as the simulated acquisition set them)."""
    t = tilt.acquired_at
    return [("TiltAngle", f"{tilt.tilt_deg:.2f}"), ("StagePosition", (12.5, -40.25)),
            ("StageZ", -31.8), ("Magnification", 64000), ("Intensity", 0.121),
            ("ExposureDose", f"{tilt.dose_e_A2:.4f}"), ("PixelSpacing", pixel_size_A),
            ("SpotSize", 8), ("Defocus", -3.5), ("ImageShift", (0, 0)),
            ("RotationAngle", 85.3), ("ExposureTime", 1), ("Binning", 1), ("CameraIndex", 1),
            ("DividedBy2", 0), ("MagIndex", 31), ("CountsPerElectron", 1),
            ("TargetDefocus", -3.5), ("PriorRecordDose", f"{tilt.pre_exposure_e_A2:.4f}"),
            ("SubFramePath", f"{frames_folder}\\{tilt.movie.path.name}"),
            ("NumSubFrames", n_frames), ("FrameDosesAndNumber", (tilt.dose_e_A2 / n_frames,
                                                                 n_frames)),
            ("TimeStamp", int((t - TIMESTAMP_EPOCH).total_seconds())), ("DateTime", t)]


def series_mdoc_text(name: str, tilts: Sequence[SimulatedTilt], *, pixel_size_A: float,
                     shape_yx: tuple[int, int], n_frames: int, sort_by_angle: bool = False,
                     frames_folder: str = r"X:\frames", voltage_kV: float = 300) -> str:
    """The series mdoc listing ``tilts`` (acquisition order, or by angle when re-sorted), written
    by the one mdoc writer (:func:`correction.mdoc_text.format_mdoc`); ``voltage_kV`` is its
    global ``Voltage`` (kV)."""
    order = sorted(tilts, key=lambda t: t.tilt_deg) if sort_by_angle else list(tilts)
    return format_mdoc(
        [("PixelSpacing", pixel_size_A), ("Voltage", voltage_kV), ("ImageFile", f"{name}.mrc"),
         ("ImageSize", (shape_yx[1], shape_yx[0])), ("DataMode", 1)],
        [_section(t, pixel_size_A=pixel_size_A, n_frames=n_frames, frames_folder=frames_folder)
         for t in order],
        titles=["SerialEM: Digitized on a simulated Krios    01-Jan-2026  00:00:00    ",
                "    Tilt axis angle = 85.3, binning = 1  spot = 8  camera = 1"])


def _replace_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically (temporary, fsync, rename), as SerialEM rewrites an mdoc."""
    payload = text.encode()
    atomic_write(path, lambda fh: fh.write(payload))


def simulate_tilt_series(folder: Path, *, rng: np.random.Generator, name: str = "TS_01",
                         n_tilts: int = 7, step_deg: float = 3.0,
                         shape_yx: tuple[int, int] = (256, 256), n_frames: int = 6,
                         pixel_size_A: float = 1.1, electrons_per_px_per_frame: float = 1.0,
                         dose_growth: float = 0.1, frame_interval_s: float = 0.02,
                         tilt_interval_s: float = 0.1, tilt_period_s: float = 30.0,
                         swap_arrival: tuple[int, int] | None = None,
                         resort_at_end: bool = False, lock: bool = True,
                         gain: np.ndarray | None = None,
                         start: _dt.datetime = _dt.datetime(2026, 1, 1, 9, 0, 0),
                         on_tilt: Callable[[SimulatedTilt], None] | None = None,
                         sleep: Callable[[float], None] = time.sleep) -> list[SimulatedTilt]:
    """Acquire a simulated dose-symmetric tilt series into ``folder``.

    Parameters
    ----------
    folder : Path
        Movies ``<name>_<index:03d>_<angle>.mrc``, the mdoc ``<name>.mrc.mdoc`` and the lock
        ``<name>.mrc.openTS`` go here.
    rng : numpy.random.Generator
    name : str
    n_tilts, step_deg
        Dose-symmetric angles (:func:`dose_symmetric_angles`).
    shape_yx, n_frames, pixel_size_A, electrons_per_px_per_frame
        What each movie looks like (:func:`correction.synthetic.render_movie`).
    dose_growth : float
        ``ExposureDose`` of the k-th acquired tilt = base x (1 + dose_growth x k), base =
        ``n_frames x electrons_per_px_per_frame / pixel_size_A**2``, rounded to 4 decimals (as
        written): unequal doses, so that a pre-exposure summed in the wrong order is visibly
        wrong.
    frame_interval_s, tilt_interval_s : float
        Real pauses between frames and between tilts (s).
    tilt_period_s : float
        Simulated time between tilts in the mdoc's ``TimeStamp``/``DateTime`` (s).
    swap_arrival : (int, int), optional
        Acquisition indices ``(i, i + 1)`` whose movies arrive in the opposite order (the later
        tilt's movie is written first); the mdoc sections stay in acquisition order.
    resort_at_end : bool
        Rewrite the mdoc sorted by angle after the last tilt.
    lock : bool
        Create ``<name>.mrc.openTS`` at the start, remove it at the end.
    gain : ndarray, optional
        Gain pattern to render with.
    on_tilt : callable, optional
        Called after each tilt's movie and mdoc section are written.

    Returns
    -------
    list of SimulatedTilt
        In acquisition order.
    """
    from correction.synthetic import render_movie

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mdoc = folder / f"{name}.mrc.mdoc"
    lock_path = folder / f"{name}.mrc.openTS"
    if lock:
        lock_path.write_text("")
    kwargs = dict(pixel_size_A=pixel_size_A, shape_yx=shape_yx, n_frames=n_frames)
    _replace_text(mdoc, series_mdoc_text(name, [], **kwargs))
    base = n_frames * electrons_per_px_per_frame / pixel_size_A ** 2
    angles = dose_symmetric_angles(n_tilts, step_deg)
    tilts: list[SimulatedTilt] = []
    rendered = []
    running = 0.0
    for k, angle in enumerate(angles):
        synthetic = render_movie(rng, shape_yx=shape_yx, n_frames=n_frames,
                                 electrons_per_px_per_frame=electrons_per_px_per_frame,
                                 pixel_size_A=pixel_size_A, gain=gain,
                                 n_hot_pixels=0 if gain is None else 5, dtype=np.int16)
        path = folder / f"{name}_{k:03d}_{angle:.1f}.mrc"
        dose = round(base * (1.0 + dose_growth * k), 4)  # as written in the mdoc
        movie = SimulatedMovie(path, n_frames, shape_yx, synthetic.shifts_yx_px)
        tilts.append(SimulatedTilt(movie, angle, k, dose, running,
                                   start + _dt.timedelta(seconds=tilt_period_s * k)))
        rendered.append(synthetic.frames)
        running += dose

    order = list(range(n_tilts))
    if swap_arrival is not None:
        i, j = swap_arrival
        order[i], order[j] = order[j], order[i]
    listed: list[SimulatedTilt] = []
    for k in order:
        t = tilts[k]
        write_movie_progressively(t.movie.path, rendered[k], pixel_size_A=pixel_size_A,
                                  frame_interval_s=frame_interval_s, sleep=sleep)
        # the mdoc lists acquired tilts in acquisition order: a tilt acquired before one that
        # arrives early is listed with it
        new = tilts[len(listed):max(order[: order.index(k) + 1]) + 1]
        with open(mdoc, "a") as fh:  # SerialEM appends; the file is rewritten only at the end
            fh.write(format_mdoc([], [_section(s, frames_folder=r"X:\frames", n_frames=n_frames,
                                               pixel_size_A=pixel_size_A) for s in new],
                                 first_index=len(listed)))
        listed.extend(new)
        if on_tilt is not None:
            on_tilt(t)
        sleep(tilt_interval_s)
    if resort_at_end:
        _replace_text(mdoc, series_mdoc_text(name, tilts, sort_by_angle=True, **kwargs))
    if lock:
        lock_path.unlink()
    return tilts
