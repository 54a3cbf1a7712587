"""Demonstrate motionwatch on a simulated tilt-series acquisition, watched by the daemon.

By default a simulated SerialEM session writes a small dose-symmetric tilt series (7 tilts of
512 x 512 x 8 frames, 0, +3, -3, +6 ... degrees) into FOLDER/frames: each movie frame by frame,
the series .mdoc growing by one section per tilt, a .openTS lock while acquiring. The watch
daemon corrects every movie into FOLDER/motioncorr with its series' pre-exposure, then
assembles the angle-sorted stacks into FOLDER/motioncorr/TS_01/. Ends with a summary: per
tilt the pre-exposure against the truth and the shift error against the rendered drift.

--single corrects one synthetic 1024 x 1024 x 10-frame movie without the daemon; --session
simulates a single-particle session of independent movies.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["add_arguments", "run", "DemoResult", "demo_single_movie", "demo_session",
           "demo_tilt_series"]

EXAMPLES = """examples:
  motionwatch demo
  motionwatch demo /tmp/mw-tomo --tilts 11 --size 256
  motionwatch demo /tmp/mw-demo --single --size 512 --seed 3
  motionwatch demo /tmp/mw-session --session --movies 8 --size 512
"""


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

    folder = Path(folder)
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
    import time

    import mrcfile
    import numpy as np

    from correction.gain import GainReference, load_gain_reference
    from correction.params import CorrectionParams, DoseParams, GainParams
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


def demo_session(folder: Path, *, n_movies: int = 8, seed: int = 0, size_px: int = 512,
                 n_frames: int = 8, pixel_size_A: float = 1.1,
                 electrons_per_px_per_frame: float = 1.0,
                 say: Callable[[str], None] = print) -> int:
    """Simulate an acquisition session watched and corrected by the daemon; return movies done.

    A detector simulator (:func:`daemon.simulate.simulate_session`) writes ``n_movies``
    synthetic movies into ``folder/frames`` the way SerialEM does (header first, frames appended
    over time, header rewritten at the end, one movie arriving by rename, a frame ``.mdoc``
    after each), while :class:`daemon.service.Service` watches the folder and corrects each
    movie into ``folder/motioncorr``. Ends with a summary: per movie the drift and the RMS error
    of the found shifts against the truth.
    """
    import threading
    import time

    import numpy as np

    from correction.params import CorrectionParams, DoseParams, GainParams

    from daemon.settings.config import Config
    from daemon.system.logs import configure_logging
    from daemon.engine.service import Service
    from daemon.events import ServiceListener
    from daemon.simulation.movies import simulate_session

    watch, out, rng, gain, gain_path = _session_folders(folder, seed=seed, size_px=size_px,
                                                         say=say)
    dose = electrons_per_px_per_frame / pixel_size_A**2
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=dose),
                              gain=GainParams(gain_path=gain_path))
    config = Config(watch, out, out, params, settle_time_s=0.5, scan_interval_s=0.25,
                    heartbeat_s=0.5, incomplete_grace_s=30.0, log_level="warning")
    configure_logging(level="warning", stream=sys.stderr)
    simulated: list = []
    writer = threading.Thread(target=lambda: simulated.extend(simulate_session(
        watch, n_movies=n_movies, rng=rng, shape_yx=(size_px, size_px), n_frames=n_frames,
        pixel_size_A=pixel_size_A, electrons_per_px_per_frame=electrons_per_px_per_frame,
        frame_interval_s=0.1, movie_interval_s=0.3, rename_indices=(1,), frame_mdoc=True,
        gain=gain, name="demo_{index:03d}.mrc")), daemon=True)
    started = time.perf_counter()

    class Report(ServiceListener):
        def on_ready(self, info):  # noqa: ANN001
            say(f"daemon watching {watch} (discovery: {info.discovery_mode}); the simulator "
                f"writes {n_movies} movies of {size_px}x{size_px}x{n_frames} frame by frame")
            writer.start()

        def on_movie_done(self, event):  # noqa: ANN001
            drift = event.record.get("drift", {})
            say(f"  corrected {event.path.name}: drift {drift.get('total_A', float('nan')):.1f} Å "
                f"in {event.timings_s.get('worker_wall', 0.0):.2f} s")

        def on_movie_failed(self, event):  # noqa: ANN001
            say(f"  {event.status} {event.path.name}: {event.error}")

        def on_heartbeat(self, beat):  # noqa: ANN001
            finished = beat.counts.get("done", 0) + beat.counts.get("quarantined", 0)
            if writer.ident and not writer.is_alive() and finished >= n_movies \
                    and not beat.in_flight:
                service.request_stop("demo session complete")

    service = Service(config, listeners=[Report()])
    service.run()
    writer.join(timeout=5)

    import json

    say(f"session summary ({time.perf_counter() - started:.1f} s):")
    done = 0
    for movie in simulated:
        motion = out / f"{movie.path.stem}.motion.json"
        if not motion.is_file():
            say(f"  {movie.path.name}: not corrected")
            continue
        record = json.loads(motion.read_text())
        found = np.array(record["global_shifts_px"], dtype=float)[:, ::-1]  # [dx,dy] -> [dy,dx]
        rms = _shift_error_rms(found, movie.shifts_yx_px)
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

    :func:`daemon.simulate_series.simulate_tilt_series` writes a dose-symmetric series
    ``TS_01`` into ``folder/frames`` (movies frame by frame, the mdoc growing, a ``.openTS``
    lock, two movies arriving in the opposite order of their acquisition, the mdoc re-sorted by
    angle at the end) while :class:`daemon.service.Service` with the tilt-series resolver
    corrects each movie into ``folder/motioncorr`` and assembles ``folder/motioncorr/TS_01/``.

    Returns
    -------
    bool
        Every tilt corrected, every recorded pre-exposure equal to the truth, stacks written.
    """
    import json
    import threading
    import time

    import numpy as np

    from correction.params import CorrectionParams, DoseParams, GainParams

    from daemon.settings.config import Config
    from daemon.system.logs import configure_logging
    from daemon.engine.service import Service
    from daemon.events import ServiceListener
    from daemon.simulation.tilt_series import simulate_tilt_series
    from daemon.series.options import resolver_from_config

    watch, out, rng, gain, gain_path = _session_folders(folder, seed=seed, size_px=size_px,
                                                         say=say)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              gain=GainParams(gain_path=gain_path))
    config = Config(watch, out, out, params, settle_time_s=0.5, scan_interval_s=0.25,
                    heartbeat_s=0.5, incomplete_grace_s=30.0, log_level="warning",
                    options={"tilt_series": "on", "metadata_wait": 60.0, "mdoc_quiet": 10.0})
    configure_logging(level="warning", stream=sys.stderr)
    simulated: list = []
    swap = (3, 4) if n_tilts >= 5 else None
    writer = threading.Thread(target=lambda: simulated.extend(simulate_tilt_series(
        watch, rng=rng, name="TS_01", n_tilts=n_tilts, shape_yx=(size_px, size_px),
        n_frames=n_frames, pixel_size_A=pixel_size_A,
        electrons_per_px_per_frame=electrons_per_px_per_frame, frame_interval_s=0.05,
        tilt_interval_s=0.3, swap_arrival=swap, resort_at_end=True, gain=gain)), daemon=True)
    started = time.perf_counter()
    completed: dict = {}

    class Report(ServiceListener):
        def on_ready(self, info):  # noqa: ANN001
            say(f"daemon watching {watch}; the simulated microscope acquires a dose-symmetric "
                f"series of {n_tilts} tilts ({size_px}x{size_px}x{n_frames}), movies written "
                f"frame by frame, mdoc growing by one section per tilt"
                + (f", tilts {swap[0]} and {swap[1]} arriving in reverse order" if swap else ""))
            writer.start()

        def on_movie_done(self, event):  # noqa: ANN001
            tilt = event.record.get("tilt") or {}
            say(f"  corrected {event.path.name}: tilt {tilt.get('tilt_deg', float('nan')):+.1f}°,"
                f" acquired #{tilt.get('acquisition_index')}, pre-exposure "
                f"{tilt.get('pre_exposure_e_A2', float('nan')):.2f} e/Å², drift "
                f"{event.record.get('drift', {}).get('total_A', float('nan')):.1f} Å")

        def on_movie_failed(self, event):  # noqa: ANN001
            say(f"  {event.status} {event.path.name}: {event.error}")

        def on_series_event(self, event):  # noqa: ANN001
            if event.kind in ("started", "completed", "reopened"):
                say(f"  series {event.series} {event.kind}"
                    + (f": {event.n_done} tilts assembled" if event.kind == "completed" else ""))
            if event.kind == "completed":
                completed.update(event.stacks)
                service.request_stop("demo series complete")

        def on_heartbeat(self, beat):  # noqa: ANN001
            if writer.ident and not writer.is_alive() and time.perf_counter() - started > 300:
                service.request_stop("demo timed out")

    resolver = resolver_from_config(config)
    service = Service(config, listeners=[Report()], resolver=resolver)
    service.run()
    writer.join(timeout=5)

    say(f"session summary ({time.perf_counter() - started:.1f} s):")
    say("  tilt   acq  pre-exposure (recorded / truth, e/Å²)  drift (Å)  shift error (px RMS)")
    corrected = exact = 0
    for t in sorted(simulated, key=lambda t: t.tilt_deg):
        motion = out / f"{t.movie.path.stem}.motion.json"
        if not motion.is_file():
            say(f"  {t.tilt_deg:+5.1f}  {t.acquisition_index:3d}  not corrected")
            continue
        record = json.loads(motion.read_text())
        found = np.array(record["global_shifts_px"], dtype=float)[:, ::-1]  # [dx,dy] -> [dy,dx]
        rms = _shift_error_rms(found, t.movie.shifts_yx_px)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``motionwatch demo``."""
    parser.add_argument("folder", nargs="?", type=Path, default=Path("motionwatch-demo"),
                        help="folder for the synthetic data and results "
                             "(default ./motionwatch-demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=None, metavar="PX",
                        help="frame size in pixels (default 512; 1024 with --single)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per movie (default 8; 10 with --single)")
    parser.add_argument("--tilts", type=int, default=7, metavar="N",
                        help="tilts of the simulated tilt series (default 7)")
    parser.add_argument("--single", action="store_true",
                        help="correct one synthetic movie directly, without the daemon")
    parser.add_argument("--session", action="store_true",
                        help="simulate an acquisition session: movies written frame by frame "
                             "into FOLDER/frames while the watch daemon corrects them into "
                             "FOLDER/motioncorr")
    parser.add_argument("--movies", type=int, default=8, metavar="N",
                        help="movies in the simulated session (default 8)")


def run(args: argparse.Namespace) -> int:
    """``motionwatch demo``: 0 on success, 1 when the correction failed."""
    from correction.errors import CorrectionError

    from daemon import exitcodes

    size = args.size if args.size is not None else (1024 if args.single else 512)
    frames = args.frames if args.frames is not None else (10 if args.single else 8)
    args.size, args.frames = size, frames
    if args.size < 64 or args.frames < 2 or args.tilts < 1:
        print("motionwatch demo: --size must be >= 64, --frames >= 2 and --tilts >= 1",
              file=sys.stderr)
        return exitcodes.USAGE
    try:
        if not args.single and not args.session:
            ok = demo_tilt_series(args.folder, n_tilts=args.tilts, seed=args.seed,
                                  size_px=args.size, n_frames=args.frames)
            return exitcodes.OK if ok else exitcodes.SOME_FAILED
        if args.session:
            done = demo_session(args.folder, seed=args.seed, size_px=args.size,
                                n_frames=args.frames, n_movies=args.movies)
            return exitcodes.OK if done == args.movies else exitcodes.SOME_FAILED
        demo_single_movie(args.folder, seed=args.seed, size_px=args.size, n_frames=args.frames)
    except (CorrectionError, OSError) as exc:
        print(f"motionwatch demo: {exc}", file=sys.stderr)
        return exitcodes.SOME_FAILED
    return exitcodes.OK
