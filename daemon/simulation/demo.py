"""The demos of ``motionwatch demo``: one synthetic movie corrected directly, and simulated
acquisitions (a single-particle session, a dose-symmetric tilt series) written the way a detector
and SerialEM write them while the watch service corrects them.

The two simulated acquisitions share one harness (:func:`_watch_while_writing`): a writer thread
runs the simulator once the service is ready, a listener reports each movie and stops the service
when the demo is complete, and the summary compares the records with the simulated truth.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from correction.params import CorrectionParams, DoseParams, GainParams
from correction.report import read_motion_record

from daemon.engine.service import Service
from daemon.events import (Heartbeat, MetadataResolver, MovieEvent, SeriesEvent, ServiceInfo,
                           ServiceListener)
from daemon.handoff.listener import build_handoff_listener
from daemon.series.options import resolver_from_config
from daemon.settings.config import Config
from daemon.settings.optics import DEFAULT_AMPLITUDE_CONTRAST, DEFAULT_SPHERICAL_ABERRATION_MM
from daemon.simulation.movies import simulate_session
from daemon.simulation.tilt_series import simulate_tilt_series
from daemon.system.logs import configure_logging

__all__ = ["DemoResult", "demo_single_movie", "demo_session", "demo_tilt_series"]


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What :func:`demo_single_movie` wrote and measured.

    Attributes
    ----------
    movie, gain : Path
        The synthetic movie and gain reference.
    outputs : dict
        Output kind -> Path (see :func:`correction.pipeline.correct_movie`).
    rms_error_px : float
        RMS distance between found and true shifts after removing the common offset (px).
    wall_s : float
        Seconds the correction took.
    """

    movie: Path
    gain: Path
    outputs: dict
    rms_error_px: float
    wall_s: float


def _shift_error_rms(found_yx: Any, truth_yx: Any) -> float:
    """RMS distance (px) between found and true shifts, shape (n_frames, 2), once each has its
    mean removed (a common offset is not an error)."""
    import numpy as np

    found = np.asarray(found_yx, dtype=float)
    truth = np.asarray(truth_yx, dtype=float)
    error = (found - found.mean(axis=0)) - (truth - truth.mean(axis=0))
    return float(np.sqrt(np.mean(np.sum(error**2, axis=1))))


def _clear_previous_demo(folder: Path, say: Callable[[str], None] | None = None) -> None:
    """Remove a previous demo's ``frames/`` and ``motioncorr/`` from ``folder``.

    A rerun into the same folder must start from scratch: the previous run's state database
    would otherwise count its movies as done and its tilt series as already assembled. Only a
    folder a demo wrote (it holds ``demo_gain.mrc``) is cleared; any other folder that holds
    ``frames/`` or ``motioncorr/`` is refused, so that no one's data is deleted or watched.

    Raises
    ------
    FileExistsError
        ``folder`` holds ``frames/`` or ``motioncorr/`` but was not written by a demo.
    """
    import shutil

    folder = Path(folder)
    leftovers = [p for p in (folder / "frames", folder / "motioncorr") if p.exists()]
    if not leftovers:
        return
    if not (folder / "demo_gain.mrc").is_file():
        raise FileExistsError(f"{folder}: holds {' and '.join(p.name + '/' for p in leftovers)}"
                              f" that no earlier demo wrote; give an empty or new folder")
    if say is not None:
        say(f"removing the previous demo's {' and '.join(p.name + '/' for p in leftovers)} "
            f"in {folder}")
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _session_folders(folder: Path, *, seed: int, size_px: int,
                     say: Callable[[str], None] | None = None) -> tuple[Path, Path, Any, Any,
                                                                         Path]:
    """Set up a simulated session in ``folder``: ``frames/`` (watched) and ``motioncorr/``
    (outputs), the random generator, and a synthetic float32 gain reference written as
    ``demo_gain.mrc``. A previous demo's ``frames/`` and ``motioncorr/`` are removed first
    (:func:`_clear_previous_demo`).

    Returns
    -------
    watch, out, rng, gain, gain_path
    """
    import mrcfile
    import numpy as np

    from correction.synthetic import gain_pattern

    # absolute: the state database and the gain path in the parameters name what a later
    # `watch` of the same folder (its paths made absolute) names, so it finds them corrected
    folder = Path(folder).expanduser().absolute()
    _clear_previous_demo(folder, say)
    watch, out = folder / "frames", folder / "motioncorr"
    watch.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    gain = gain_pattern(rng, (size_px, size_px)).astype(np.float32)
    gain_path = folder / "demo_gain.mrc"
    with mrcfile.new(gain_path, overwrite=True) as mrc:
        mrc.set_data(gain)
    return watch, out, rng, gain, gain_path


def demo_single_movie(folder: Path, *, seed: int = 0, size_px: int = 1024, n_frames: int = 10,
                      electrons_per_px_per_frame: float = 1.0, pixel_size_A: float = 1.1,
                      say: Callable[[str], None] = print) -> DemoResult:
    """Render one synthetic movie and gain reference into ``folder`` and correct them.

    Parameters
    ----------
    folder : Path
        Created if missing; the movie is ``demo_movie.mrc``, the gain ``demo_gain.mrc``, the
        results go to ``folder/corrected``.
    seed : int
        Seed of the random generator (same seed, same movie).
    size_px, n_frames, electrons_per_px_per_frame, pixel_size_A
        What the movie looks like.
    say : callable
        Where progress lines go.
    """
    import mrcfile
    import numpy as np

    from correction.gain import GainReference, load_gain_reference
    from correction.pipeline import correct_movie
    from correction.synthetic import render_movie

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    say(f"rendering a {size_px}x{size_px}x{n_frames} movie at {electrons_per_px_per_frame} "
        f"e/px/frame, {pixel_size_A} Å/px, with a gain pattern and hot pixels (seed {seed})")
    synthetic = render_movie(rng, shape_yx=(size_px, size_px), n_frames=n_frames,
                             electrons_per_px_per_frame=electrons_per_px_per_frame,
                             pixel_size_A=pixel_size_A, dtype=np.int16)
    movie_path = folder / "demo_movie.mrc"
    gain_path = folder / "demo_gain.mrc"
    with mrcfile.new(movie_path, overwrite=True) as mrc:
        mrc.set_data(synthetic.frames)
        mrc.voxel_size = pixel_size_A
    with mrcfile.new(gain_path, overwrite=True) as mrc:
        mrc.set_data(synthetic.gain)
    say(f"wrote {movie_path} and {gain_path}")

    dose = electrons_per_px_per_frame / pixel_size_A**2
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=dose),
                              gain=GainParams(gain_path=gain_path))
    gain: GainReference | None = load_gain_reference(params.gain)
    out_dir = folder / "corrected"
    say(f"correcting (dose {dose:.3f} e/Å² per frame, 300 kV) into {out_dir}")
    t0 = time.perf_counter()
    result = correct_movie(movie_path, out_dir, params, gain_reference=gain)
    wall = time.perf_counter() - t0

    truth = synthetic.shifts_yx_px - synthetic.shifts_yx_px.mean(axis=0)
    found = result.shifts_yx_px - result.shifts_yx_px.mean(axis=0)
    rms = _shift_error_rms(found, truth)
    say(f"corrected in {wall:.2f} s; {result.record['alignment']['hot_pixels']} hot pixels "
        f"replaced; drift {result.drift.total_A:.1f} Å (early {result.drift.early_A:.1f} Å)")
    say("frame   true dx    true dy   found dx   found dy   (px, specimen displacement)")
    for i, (t, f) in enumerate(zip(truth, found)):
        say(f"{i:5d} {t[1]:9.3f} {t[0]:9.3f} {f[1]:10.3f} {f[0]:10.3f}")
    say(f"RMS error of the found shifts: {rms:.4f} px")
    for kind, path in result.outputs.items():
        say(f"  {kind:6s} {path}")
    return DemoResult(movie=movie_path, gain=gain_path, outputs=dict(result.outputs),
                      rms_error_px=rms, wall_s=wall)


class _DemoListener(ServiceListener):
    """Starts the simulator once the service is ready, reports each movie, stops the service
    when ``complete(beat)`` says so (or, for a tilt series, when it is assembled)."""

    def __init__(self, *, say: Callable[[str], None], intro: str, writer: threading.Thread,
                 describe: Callable[[MovieEvent], str],
                 complete: Callable[[Heartbeat], bool]) -> None:
        self.say, self.intro, self.writer = say, intro, writer
        self.describe, self.complete = describe, complete
        self.stop: Callable[[str], None] | None = None  # the service's request_stop
        self.stacks: dict[str, str] = {}

    def on_ready(self, info: ServiceInfo) -> None:
        self.say(self.intro)
        self.writer.start()

    def on_movie_done(self, event: MovieEvent) -> None:
        self.say(self.describe(event))

    def on_movie_failed(self, event: MovieEvent) -> None:
        self.say(f"  {event.status} {event.path.name}: {event.error}")

    def on_series_event(self, event: SeriesEvent) -> None:
        if event.kind == "assembly_failed":
            self.say(f"  series {event.series}: stacks not written: {event.reason}")
        if event.kind in ("started", "completed", "reopened"):
            self.say(f"  series {event.series} {event.kind}"
                     + (f": {event.n_done} tilts assembled" if event.kind == "completed" else ""))
        if event.kind == "completed" and self.stop is not None:
            self.stacks.update(event.stacks)
            self.stop("demo series complete")

    def on_heartbeat(self, beat: Heartbeat) -> None:
        if self.stop is not None and self.complete(beat):
            self.stop("demo complete")


def _watch_while_writing(config: Config, write: Callable[[], None], *, intro: str,
                         describe: Callable[[MovieEvent], str],
                         complete: Callable[[Heartbeat, threading.Thread], bool],
                         resolver: MetadataResolver | None = None,
                         say: Callable[[str], None]) -> dict[str, str]:
    """Run the service on ``config`` while ``write`` simulates the acquisition in a thread;
    returns the assembled stacks (tilt series) once the demo is complete."""
    configure_logging(level="warning", stream=sys.stderr)
    writer = threading.Thread(target=write, daemon=True)
    listener = _DemoListener(say=say, intro=intro, writer=writer, describe=describe,
                             complete=lambda beat: complete(beat, writer))
    handoff = build_handoff_listener(config)  # RELION 5, AreTomo3, IMOD and Warp files too
    service = Service(config, listeners=[listener] + ([handoff] if handoff else []),
                      resolver=resolver)
    listener.stop = service.request_stop
    service.run()
    writer.join(timeout=5)
    return listener.stacks


def _demo_config(watch: Path, out: Path, gain_path: Path, dose_per_frame_e_A2: float,
                 **options: Any) -> Config:
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=dose_per_frame_e_A2),
                              gain=GainParams(gain_path=gain_path))
    # as `watch` has them (its defaults): every motion record keeps the optics
    options = {"spherical_aberration": DEFAULT_SPHERICAL_ABERRATION_MM,
               "amplitude_contrast": DEFAULT_AMPLITUDE_CONTRAST, **options}
    return Config(watch, out, out, params, settle_time_s=0.5, scan_interval_s=0.25,
                  heartbeat_s=0.5, incomplete_grace_s=30.0, log_level="warning",
                  options=options)


def _found_shifts_yx_px(record: dict[str, Any]) -> Any:
    import numpy as np

    return np.array(record["global_shifts_px"], dtype=float)[:, ::-1]  # [dx,dy] -> [dy,dx]


def demo_session(folder: Path, *, n_movies: int = 8, seed: int = 0, size_px: int = 512,
                 n_frames: int = 8, pixel_size_A: float = 1.1,
                 electrons_per_px_per_frame: float = 1.0,
                 say: Callable[[str], None] = print) -> int:
    """Simulate a single-particle session watched and corrected by the daemon; return movies
    done.

    The detector simulator (:func:`daemon.simulation.movies.simulate_session`) writes
    ``n_movies`` synthetic movies into ``folder/frames`` the way SerialEM does (header first,
    frames appended over time, header rewritten at the end, one movie arriving by rename, a frame
    ``.mdoc`` after each) while the service corrects each into ``folder/motioncorr``. Ends with a
    summary: per movie the drift and the RMS error of the found shifts against the truth.
    """
    watch, out, rng, gain, gain_path = _session_folders(folder, seed=seed, size_px=size_px,
                                                         say=say)
    config = _demo_config(watch, out, gain_path, electrons_per_px_per_frame / pixel_size_A**2)
    simulated: list = []
    started = time.perf_counter()

    def write() -> None:
        simulated.extend(simulate_session(
            watch, n_movies=n_movies, rng=rng, shape_yx=(size_px, size_px), n_frames=n_frames,
            pixel_size_A=pixel_size_A, electrons_per_px_per_frame=electrons_per_px_per_frame,
            frame_interval_s=0.1, movie_interval_s=0.3, rename_indices=(1,), frame_mdoc=True,
            gain=gain, name="demo_{index:03d}.mrc"))

    def complete(beat: Heartbeat, writer: threading.Thread) -> bool:
        finished = beat.counts.get("done", 0) + beat.counts.get("quarantined", 0)
        return (writer.ident is not None and not writer.is_alive() and finished >= n_movies
                and not beat.in_flight)

    _watch_while_writing(
        config, write, say=say, complete=complete,
        intro=(f"daemon watching {watch}; the simulator writes {n_movies} movies of "
               f"{size_px}x{size_px}x{n_frames} frame by frame"),
        describe=lambda e: (f"  corrected {e.path.name}: drift "
                            f"{e.record.get('drift', {}).get('total_A', float('nan')):.1f} Å in "
                            f"{e.timings_s.get('worker_wall', 0.0):.2f} s"))
    say(f"session summary ({time.perf_counter() - started:.1f} s):")
    done = 0
    for movie in simulated:
        motion = out / f"{movie.path.stem}.motion.json"
        if not motion.is_file():
            say(f"  {movie.path.name}: not corrected")
            continue
        record = read_motion_record(motion) or {}
        rms = _shift_error_rms(_found_shifts_yx_px(record), movie.shifts_yx_px)
        done += 1
        say(f"  {movie.path.name}: {record['frames']} frames, drift "
            f"{record['drift']['total_A']:.1f} Å, shift error {rms:.3f} px RMS")
    say(f"{done} of {n_movies} movies corrected into {out}; state: motionwatch status {out}")
    return done


def demo_tilt_series(folder: Path, *, n_tilts: int = 7, seed: int = 0, size_px: int = 512,
                     n_frames: int = 8, pixel_size_A: float = 1.1,
                     electrons_per_px_per_frame: float = 1.0,
                     say: Callable[[str], None] = print) -> bool:
    """Simulate a tilt-series acquisition watched, corrected and assembled by the daemon.

    :func:`daemon.simulation.tilt_series.simulate_tilt_series` writes a dose-symmetric series
    ``TS_01`` into ``folder/frames`` (movies frame by frame, the mdoc growing, a ``.openTS``
    lock, two movies arriving in the opposite order of their acquisition, the mdoc re-sorted by
    angle at the end) while the service with the tilt-series resolver corrects each movie into
    ``folder/motioncorr`` and assembles ``folder/motioncorr/TS_01/``.

    Returns
    -------
    bool
        Every tilt corrected, every recorded pre-exposure equal to the truth, stacks written.
    """
    watch, out, rng, gain, gain_path = _session_folders(folder, seed=seed, size_px=size_px,
                                                         say=say)
    config = _demo_config(watch, out, gain_path, 1.0, tilt_series="on", metadata_wait=60.0,
                          mdoc_quiet=10.0)
    simulated: list = []
    swap = (3, 4) if n_tilts >= 5 else None
    started = time.perf_counter()

    def write() -> None:
        simulated.extend(simulate_tilt_series(
            watch, rng=rng, name="TS_01", n_tilts=n_tilts, shape_yx=(size_px, size_px),
            n_frames=n_frames, pixel_size_A=pixel_size_A,
            electrons_per_px_per_frame=electrons_per_px_per_frame, frame_interval_s=0.05,
            tilt_interval_s=0.3, swap_arrival=swap, resort_at_end=True, gain=gain))

    def describe(event: MovieEvent) -> str:
        tilt = event.record.get("tilt") or {}
        return (f"  corrected {event.path.name}: tilt {tilt.get('tilt_deg', float('nan')):+.1f}°,"
                f" acquired #{tilt.get('acquisition_index')}, pre-exposure "
                f"{tilt.get('pre_exposure_e_A2', float('nan')):.2f} e/Å², drift "
                f"{event.record.get('drift', {}).get('total_A', float('nan')):.1f} Å")

    def complete(beat: Heartbeat, writer: threading.Thread) -> bool:  # a safety net only
        return writer.ident is not None and not writer.is_alive() and \
            time.perf_counter() - started > 300

    completed = _watch_while_writing(
        config, write, say=say, describe=describe, complete=complete,
        resolver=resolver_from_config(config),
        intro=(f"daemon watching {watch}; the simulated microscope acquires a dose-symmetric "
               f"series of {n_tilts} tilts ({size_px}x{size_px}x{n_frames}), movies written "
               f"frame by frame, mdoc growing by one section per tilt"
               + (f", tilts {swap[0]} and {swap[1]} arriving in reverse order" if swap else "")))
    say(f"session summary ({time.perf_counter() - started:.1f} s):")
    say("  tilt   acq  pre-exposure (recorded / truth, e/Å²)  drift (Å)  shift error (px RMS)")
    corrected = exact = 0
    for t in sorted(simulated, key=lambda t: t.tilt_deg):
        motion = out / f"{t.movie.path.stem}.motion.json"
        if not motion.is_file():
            say(f"  {t.tilt_deg:+5.1f}  {t.acquisition_index:3d}  not corrected")
            continue
        record = read_motion_record(motion) or {}
        rms = _shift_error_rms(_found_shifts_yx_px(record), t.movie.shifts_yx_px)
        pre = record["dose"]["pre_exposure_e_A2"]
        corrected += 1
        exact += abs(pre - t.pre_exposure_e_A2) < 1e-6
        say(f"  {t.tilt_deg:+5.1f}  {t.acquisition_index:3d}  {pre:8.4f} / "
            f"{t.pre_exposure_e_A2:8.4f}{'':17s}{record['drift']['total_A']:7.1f}  {rms:10.3f}")
    say(f"{corrected} of {n_tilts} movies corrected into {out}; {exact} pre-exposures exact")
    if completed:
        say(f"assembled series: {out / 'TS_01'} (stacks sorted by angle, .tlt, .csv, .mdoc):")
        for kind, path in completed.items():
            say(f"  {kind:5s} {path}")
    else:
        say("the series was not assembled")
    say(f"state: motionwatch status {out}")
    return corrected == n_tilts == exact and bool(completed)
