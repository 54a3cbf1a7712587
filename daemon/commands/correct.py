"""Correct movies once: gain, align, dose-weight, and write the sums next to a motion record.

For each MOVIE with stem S, writes into --out: S.mrc (aligned sum), S_DW.mrc (dose-weighted),
S_EVN.mrc and S_ODD.mrc (dose-weighted sums of the even and odd frames) and S.motion.json;
and RELION's S.star as each is corrected (naming the gain, written as polishing reads it,
with ``--gain``); at the end, also after Ctrl-C (status 130) or SIGTERM (143),
``corrected_micrographs.star`` of every movie in --out (the motion STARs of other movies, e.g.
the daemon's, are left as they are). A movie given twice is corrected once; one corrected
again overwrites its own outputs. A movie that fails prints one line ``motionwatch: <file>:
<reason>`` on stderr and the others are still corrected; the exit status is then 1, as it is
when a RELION file could not be written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from correction.report import pixel_size_warning
from correction.write import write_probe_error
from daemon import exitcodes
from daemon.commands.stem_claims import StemClaims, resolved_movie
from daemon.engine.outputs import remove_partial_outputs
from daemon.events import MovieGain, frame_mdoc_gains_apply, movie_params
from daemon.handoff.listener import add_relion_optics_arguments, relion_optics_from_args
from daemon.handoff.relion import (SINGLE_PARTICLE_STAR, UnwritableStarValue, motion_records_in,
                                   movie_motion, write_motion_star, write_single_particle_star)
from daemon.intake.frame_gain import (UnappliedDefectLists, find_frame_mdoc_gain,
                                      frame_mdoc_defects_notes, why_no_frame_mdoc_gain)
from daemon.settings.correction_options import add_correction_arguments, params_from_args
from daemon.settings.optics import OPTICS_KEY
from daemon.settings.voltage import (ASSUMED_VOLTAGE_NOTE, Voltage, files_voltage_kV,
                                     resolve_voltage)
from daemon.work.readahead import ReadAhead

__all__ = ["add_arguments", "run"]

EXAMPLES = """examples:
  motionwatch correct movie.mrc --dose-per-frame 1.0 --out corrected/
  motionwatch correct *.tif --gain gain.mrc --gain-rotate 1 --gain-flip updown \\
      --pixel-size 0.83 --total-dose 50 --out corrected/ --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``motionwatch correct``."""
    parser.add_argument("movies", nargs="+", type=Path, metavar="MOVIE",
                        help="movie files (MRC, TIFF, EER)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder (created if missing)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON summary line per movie on stdout")
    parser.add_argument("--scratch", type=Path, default=None, metavar="DIR",
                        help="folder for a compressed movie (LZW TIFF, EER) of more than 1 GiB "
                             "decoded, held there in an unnamed temporary file while it is "
                             "corrected (default: the output folder; give a local disk when "
                             "that is a network share)")
    add_correction_arguments(parser)
    add_relion_optics_arguments(parser.add_argument_group(
        "RELION files (corrected_micrographs.star, S.star), as motionwatch watch writes them"))


def _fail(movie: Path, exc: BaseException) -> str:
    """One-line error naming the movie (and the reference file, when that is the culprit)."""
    from correction.errors import CorrectionError, MissingPixelSizeError

    if isinstance(exc, CorrectionError):
        hint = "; give it with --pixel-size (Å)" if isinstance(exc, MissingPixelSizeError) else ""
        if exc.path is not None and Path(exc.path) == movie:
            return f"{exc}{hint}"
        return f"{movie}: {exc}{hint}"
    if isinstance(exc, OSError):
        name = Path(exc.filename).name if isinstance(exc.filename, (str, Path)) else ""
        if name.startswith(".") and ".tmp-" in name:  # a writer's hidden temporary: the folder
            return (f"{movie}: cannot write the outputs into {Path(exc.filename).parent}: "
                    f"{exc.strerror or exc}")
        return f"{movie}: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    text = " ".join(str(exc).split())
    return f"{movie}: internal error: {type(exc).__name__}: {text}"


def _writable_folder_problem(out: Path, what: str = "output folder") -> str | None:
    """Why files cannot be written into ``out`` (created if missing), or None.

    Writes and removes a hidden probe file, so a read-only folder, a read-only file system or
    missing permissions are found before any movie is corrected.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = ("exists and is not a folder" if out.exists() and not out.is_dir()
                  else exc.strerror or str(exc))
        return f"{out}: cannot create the {what}: {reason}"
    exc = write_probe_error(out)
    if exc is not None:
        return f"{out}: cannot write into the {what}: {exc.strerror or exc}"
    return None


@contextlib.contextmanager
def _warnings_as_lines(movie: Path) -> Iterator[None]:
    """Show Python warnings raised while correcting ``movie`` as ``motionwatch: <movie>:
    warning: ...`` lines (once each)."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        seen: set[str] = set()
        for w in caught:
            text = " ".join(str(w.message).split())
            if text not in seen:
                seen.add(text)
                print(f"motionwatch: {movie}: warning: {text}", file=sys.stderr, flush=True)


#: the motion record's note of the movie file ``correct`` read: ``size`` (bytes) and
#: ``mtime_ns``, which a move or an archive copy (``mv``, ``rsync -a``, ``cp -p``) keeps
MOVIE_FILE_KEY = "movie_file"


def _distinct_movies(movies: list[Path]) -> list[Path]:
    """``movies`` without repeats of a file (given twice, by overlapping globs, through a
    symbolic or a hard link): each is corrected once, under its first name."""
    seen: set[object] = set()
    distinct = []
    for movie in movies:
        try:
            st = movie.stat()
            key: object = (st.st_dev, st.st_ino)
        except OSError:  # missing, a link loop: its correction says so, once
            key = os.path.abspath(movie)  # Path.resolve raises on a loop (RuntimeError)
        if key not in seen:
            seen.add(key)
            distinct.append(movie)
    return distinct


def _movie_file(movie: Path) -> dict[str, int] | None:
    """``{"size", "mtime_ns"}`` of ``movie`` (None when it cannot be read)."""
    try:
        st = movie.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _output_stems(movies: list[Path], out_dir: Path,
                  held: dict[str, Path] | None = None) -> dict[Path, str]:
    """Each movie's output stem: its name without the last suffix, or with its extension added
    (``x_tif``, then ``x_tif_2`` ...) when that stem, or one whose outputs share a file name with
    it (``x`` and ``x_DW`` share ``x_DW.mrc``: :func:`correction.stems.stems_sharing_an_output`),
    is an earlier movie's of the same run, another movie's that a run still running holds
    (``held``: stem -> resolved movie, :mod:`daemon.commands.stem_claims`), or the motion record
    an earlier run left in ``out_dir`` names another movie, so no two movies write the same
    outputs. The same movie
    corrected again overwrites its own outputs: a record that names this file (by any path), or
    a file of its name, size and mtime that is no longer there (a session moved to an archive:
    the record's ``movie_file``), is its own; a record of another file of that name that is no
    longer there (another session's, a share unmounted) is not.
    Shortened when too long to name files (:func:`correction.stems.fit_output_stem`)."""
    from correction.stems import fit_output_stem, folder_file_stem, stems_sharing_an_output

    taken = dict(held or {})  # stem -> the resolved movie that has it
    stems = {}
    for movie in movies:
        key = resolved_movie(movie)
        ext = movie.suffix.lstrip(".").lower()
        candidates = [fit_output_stem(c) for c in [movie.stem, f"{movie.stem}_{ext}"]
                      + [f"{movie.stem}_{ext}_{n}" for n in range(2, 1000)]]

        def usable(c: str) -> bool:
            return not folder_file_stem(c) and all(
                taken.get(other, key) == key and _owned_by(out_dir, other, movie)
                for other in stems_sharing_an_output(c))

        # the stem whose record names this movie best (two grids' x.tif, copied at once, both
        # moved to an archive: each record fits either by name, size and mtime, and the first
        # stem took the other grid's outputs), else the first free one
        recorded = itertools.takewhile(
            lambda c: (out_dir / f"{c}.motion.json").exists(), candidates)
        owned = [(_ownership(out_dir, c, movie) or 0, -i, c) for i, c in enumerate(recorded)]
        best = max(((score, i, c) for score, i, c in owned if score > 0 and usable(c)),
                   default=None)
        stem = best[2] if best is not None else next(c for c in candidates if usable(c))
        taken[stem] = key
        stems[movie] = stem
    return stems


def _owned_by(out_dir: Path, stem: str, movie: Path) -> bool:
    """Whether ``movie`` may write the outputs of ``stem`` in ``out_dir``: no readable motion
    record of that stem, or one of this movie (the same file, or a file of its name, size and
    mtime no longer there)."""
    ownership = _ownership(out_dir, stem, movie)
    return ownership is None or ownership > 0


def _ownership(out_dir: Path, stem: str, movie: Path) -> int | None:
    """How well the motion record of ``stem`` names ``movie``: None when it names no movie (no
    readable record: the stem is free), 0 another file, most this very file, else (its file
    gone: moved to an archive, a file of its name, size and mtime noted) one more for each
    trailing folder the two paths share (``grid2/x.tif``)."""
    record = _record(out_dir, stem)
    recorded = _recorded_movie(record)
    if recorded is None:
        return None if record is None or "movie" not in record else 0
    if recorded.exists():
        try:
            return 1 << 16 if os.path.samefile(recorded, movie) else 0
        except OSError:
            return 0
    if recorded.name != movie.name or not _same_file_noted(record, _movie_file(movie)):
        return 0
    here = movie.resolve().parts[::-1]
    return 1 + sum(1 for _ in itertools.takewhile(lambda pair: pair[0] == pair[1],
                                                  zip(recorded.parts[::-1][1:], here[1:])))


#: a copy may keep a file's mtime only to this (FAT and some shares: 2 s)
_MTIME_SLACK_NS = 2_000_000_000


def _same_file_noted(record: dict[str, Any] | None, now: dict[str, int] | None) -> bool:
    """Whether the record notes a file of the size and mtime ``now`` has (``correct``'s
    ``movie_file``, or the daemon's ``source_file``), the mtime to within 2 s (a copy to a
    share that keeps whole or even seconds)."""
    if record is None or now is None:
        return False
    for key in (MOVIE_FILE_KEY, "source_file"):
        noted = record.get(key)
        if isinstance(noted, dict) and noted.get("size") == now["size"]:
            try:
                return abs(int(noted["mtime_ns"]) - now["mtime_ns"]) <= _MTIME_SLACK_NS
            except (KeyError, TypeError, ValueError):
                return False
    return False


def _recorded_movie(record: dict[str, Any] | None) -> Path | None:
    """The movie a motion record names, resolved (None: no record, or no usable name)."""
    try:
        return Path(record["movie"]).resolve() if record is not None else None
    except (KeyError, TypeError, ValueError, OSError, RuntimeError):  # RuntimeError: a loop
        return None


def _record(out_dir: Path, stem: str) -> dict[str, Any] | None:
    """The motion record ``out_dir/stem.motion.json`` (None: none readable)."""
    try:
        record = json.loads((out_dir / f"{stem}.motion.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _daemon_tilt(out_dir: Path, stem: str) -> str | None:
    """The series of the tilt a ``watch`` daemon corrected under ``stem`` in ``out_dir`` (its
    record's ``tilt``), or None: ``correct`` does not replace it, which would drop its series'
    pre-exposure and leave its series' stacks made of the old sums."""
    record = _record(out_dir, stem)
    tilt = record.get("tilt") if record is not None else None
    if isinstance(tilt, dict):
        return str(tilt.get("series") or "its series")
    return None


class _Terminated(BaseException):
    """SIGTERM (a batch system's time limit, ``timeout``): stop as at Ctrl-C, cleaning up."""


def _print_failure(movie: Path, message: str, *, as_json: bool) -> None:
    """One line on stderr (and a JSON line on stdout with ``--json``) for a failed movie."""
    print(f"motionwatch: {message}", file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps({"movie": str(movie), "status": "failed", "error": message}),
              flush=True)


def _warn_gain_orientation(movie: Path, record: dict[str, Any]) -> bool:
    """One line on stderr when the movie's raw sum says another gain orientation, or the
    gain's reciprocal, fits clearly better than the gain as given
    (:mod:`correction.gain_orientation`); True when said."""
    check = record.get("gain_orientation") or {}
    if check.get("inverted") and _gain_applied_as(record) == "reciprocal":
        advice = ("the gain file was applied as a count image (--eer-gain): give --eer-gain "
                  "multiplicative; said once per run")
    elif check.get("inverted"):
        advice = ("give its reciprocal (for an EER movie, --eer-gain reciprocal); said once "
                  "per run")
    elif check.get("clearly_better"):
        advice = ("check --gain-rotate/--gain-flip (MotionCor2's -RotGain/-FlipGain); said "
                  "once per run")
    else:
        return False
    print(f"motionwatch: {movie}: warning: {check.get('message')}: {advice}",
          file=sys.stderr, flush=True)
    return True


def _gain_applied_as(record: dict[str, Any]) -> str | None:
    """How the movie's gain file was applied (``references.gain_applied_as``)."""
    return (record.get("references") or {}).get("gain_applied_as")


def _note_eer_gain(movie: Path, record: dict[str, Any], eer_gain: str) -> bool:
    """One line on stderr saying how the gain file was applied to the first EER movie
    (``references.eer_gain_rule``: a count image as ``mean / gain``, or a multiplier;
    :func:`correction.gain.reference_for_movie`); True once nothing more is to be said in the
    run (the gain and its mode are the same for all its movies). Not said for EPU's ``.gain``
    file used as a multiplier by default, the case in which every peer agrees; said for any
    other file (MotionCor2 and RELION take it differently) and for a mode chosen
    (``eer_gain``, the run's ``--eer-gain``)."""
    references = record.get("references") or {}
    rule = references.get("eer_gain_rule")
    if not rule:
        return False
    gain_path = str((references.get("gain") or {}).get("path") or "")
    if gain_path.lower().endswith(".gain") and eer_gain == "multiplicative":
        return True  # nothing to say, and nothing later in the run will need saying
    print(f"motionwatch: {movie}: note: EER gain: {rule}; --eer-gain chooses; said once per run",
          file=sys.stderr, flush=True)
    return True


def _print_result(movie: Path, result: Any, wall_s: float, *, as_json: bool,
                  star_problem: str | None = None) -> None:
    """One line per corrected movie on stdout: a summary, or JSON with ``--json`` (with
    ``relion_star_error`` when its motion STAR could not be written: the line said "ok" and
    nothing else while the run exited 1 for it)."""
    rec = result.record
    if as_json:
        print(json.dumps({
            "movie": str(movie), "status": "ok", "frames": rec["frames"],
            "shape": rec["shape"], "pixel_size_A": rec["pixel_size_A"],
            "drift": rec["drift"], "outputs": {k: str(p) for k, p in result.outputs.items()},
            "wall_s": round(wall_s, 3),
            "predicted_peak_MB": rec.get("memory", {}).get("predicted_peak_MB"),
            **({"relion_star_error": star_problem} if star_problem else {})}),
            flush=True)
        return
    d = rec["drift"]
    print(f"{movie}: {rec['frames']} frames {rec['shape'][1]}x{rec['shape'][0]} "
          f"@ {rec['pixel_size_A']:.3f} Å, drift {d['total_A']:.1f} Å "
          f"(early {d['early_A']:.1f}, late {d['late_A']:.1f}, max jump "
          f"{d['max_frame_jump_A']:.1f}), {wall_s:.1f} s -> {result.outputs['sum']}",
          flush=True)


def movie_voltage(movie: Path, option_kV: float | None) -> Voltage:
    """A movie's voltage (:mod:`daemon.settings.voltage`): ``--voltage``, else its frame mdoc's
    (``<movie>.mdoc``), else EPU's metadata file's (``<name>.xml``), else its header's (FEI
    MRC), else 300 kV."""
    def found() -> Iterator[tuple[float | None, str]]:  # each read only when needed
        yield _frame_mdoc_voltage_kV(movie), "frame mdoc"
        yield from files_voltage_kV(movie)

    return resolve_voltage(option_kV, found())


def _frame_mdoc_voltage_kV(movie: Path) -> float | None:
    """``Voltage`` (kV) of the movie's SerialEM frame mdoc, or None (none, unreadable)."""
    from daemon.intake.validate import frame_mdoc_path
    from daemon.series.mdoc import read_mdoc
    from daemon.series.resolution import frame_mdoc_voltage_kV

    path = frame_mdoc_path(Path(movie))
    try:
        return frame_mdoc_voltage_kV(read_mdoc(path)) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _at_voltage(params: Any, voltage_kV: float) -> Any:
    """``params`` with the movie's voltage (kV): the same object when it is already theirs."""
    if params.dose.voltage_kV == voltage_kV:
        return params
    return dataclasses.replace(params, dose=dataclasses.replace(params.dose,
                                                                voltage_kV=voltage_kV))


def run(args: argparse.Namespace) -> int:
    """``motionwatch correct``: returns 0 when all movies were corrected, 1 when some failed,
    78 when none could be tried (a reference that cannot be read, an output or scratch folder
    that cannot be written), 2 for bad options."""
    from correction.allocator import movie_memory_settings
    from correction.errors import CorrectionError, ParameterError
    from correction.gain import load_gain_reference
    from correction.pipeline import correct_movie

    from daemon.system.logs import quiet_reader_logs

    quiet_reader_logs()  # the readers turn tifffile's complaints into one-line errors
    try:
        # an EER movie's header may give its dose (totalDose): a batch of EER movies needs no
        # dose option (one whose header has none fails on its own, naming the file); a
        # --fm-int-file without its DOSE column does (its help says so)
        params = params_from_args(args, dose_required=args.fm_int_file is not None or not all(
            Path(movie).suffix.lower() == ".eer" for movie in args.movies))
        optics = relion_optics_from_args(args)
    except (ParameterError, ValueError) as exc:
        print(f"motionwatch correct: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    try:
        gain = load_gain_reference(params.gain)  # once for all movies
    except CorrectionError as exc:
        print(f"motionwatch: {exc}", file=sys.stderr)
        for movie in args.movies:
            if args.json:
                print(json.dumps({"movie": str(movie), "status": "failed",
                                  "error": str(exc)}), flush=True)
        return exitcodes.CONFIG  # no movie was tried: the settings name a bad reference

    # once, before any work (as ``watch`` does): a folder that cannot be made or written into
    # fails every movie alike, before a movie is corrected for nothing
    message = _writable_folder_problem(args.out)
    if message is None and args.scratch is not None:
        message = _writable_folder_problem(args.scratch, "scratch folder")
    if message is not None:
        print(f"motionwatch: {message}", file=sys.stderr)
        for movie in args.movies:
            if args.json:
                print(json.dumps({"movie": str(movie), "status": "failed",
                                  "error": f"{movie}: {message}"}), flush=True)
        return exitcodes.CONFIG  # no movie was tried

    movies = _distinct_movies(args.movies)
    if len(movies) < len(args.movies):
        print(f"motionwatch: {len(args.movies)} movies given, {len(movies)} distinct (the same "
              "file given again, by name or through a link): each is corrected once",
              file=sys.stderr)
    failed = 0
    gain_warned = False  # a gain orientation that fits clearly better is named once per run
    pixel_warned = False  # a --pixel-size unlike the movie files' is named once per run
    eer_gain_noted = False  # how the gain file is applied to EER movies, said once per run
    voltage_noted = False  # 300 kV assumed for want of any voltage, said once per run
    claims = StemClaims(Path(args.out))  # two runs into one folder never share a stem
    stems = claims.claim(lambda held: _output_stems(movies, Path(args.out), held))
    if claims.unavailable is not None:
        print(f"motionwatch: warning: this run's output stems are not noted "
              f"({claims.unavailable}): a run into {args.out} at the same time may choose a "
              "stem of this run's for a movie of the same name", file=sys.stderr, flush=True)
    relion = _RelionFiles(Path(args.out), params, optics)
    own_gains = _FrameMdocGains(params, enabled=frame_mdoc_gains_apply(
        params, getattr(args, "frame_mdoc_gain", True)), why_not=why_no_frame_mdoc_gain(
        params, getattr(args, "frame_mdoc_gain", True)))
    read_ahead = ReadAhead()  # the next movie is read into the page cache meanwhile
    status = None
    termination = _Termination()
    previous_handler = termination.install()
    try:
        # one allocator setting around all the movies: each reuses the memory the one before
        # freed instead of faulting it in afresh (correction.allocator)
        with movie_memory_settings():
            for index, movie in enumerate(movies):
                t0 = time.perf_counter()
                claims.keep()  # a run of more than a week keeps its stems
                if index + 1 < len(movies):
                    read_ahead.hint(movies[index + 1])
                series = _daemon_tilt(Path(args.out), stems[movie])
                if series is not None:
                    failed += 1
                    _print_failure(movie, f"{movie}: a tilt of {series} that motionwatch watch "
                                          f"corrected into {args.out}: not replaced (its "
                                          "pre-exposure and its series' stacks are the daemon's; "
                                          "correct it into another --out)", as_json=args.json)
                    continue
                # a run killed while writing this movie's set left them; a running one's stay
                remove_partial_outputs(Path(args.out), stems[movie], dead_writers_only=True)
                voltage = movie_voltage(movie, getattr(args, "voltage", None))
                for said in (voltage.ignored, voltage.warning):
                    if said:
                        print(f"motionwatch: {movie}: warning: {said}", file=sys.stderr,
                              flush=True)
                try:
                    own = own_gains.lookup(Path(movie))
                    with _warnings_as_lines(movie):
                        result = correct_movie(
                            movie, args.out, _at_voltage(own.params, voltage.kV),
                            gain_reference=gain if own.gain is None else own.reference,
                            stem=stems[movie], scratch_dir=args.scratch,
                            extra_record={OPTICS_KEY: optics.record(),
                                          "voltage_source": voltage.source,
                                          MOVIE_FILE_KEY: _movie_file(movie), **own.record})
                except Exception as exc:  # noqa: BLE001 - one movie's failure must not stop others
                    failed += 1
                    _print_failure(movie, _fail(movie, exc), as_json=args.json)
                    continue
                with termination.deferred():  # its motion STAR names its gain, or none is left
                    star_problem = relion.corrected(movie, Path(result.outputs["motion"]),
                                                    result.record)
                _print_result(movie, result, time.perf_counter() - t0, as_json=args.json,
                              star_problem=star_problem)
                if voltage.source == "default" and not voltage_noted:  # once corrected at it
                    voltage_noted = True
                    print(f"motionwatch: {movie}: warning: {ASSUMED_VOLTAGE_NOTE}",
                          file=sys.stderr, flush=True)
                if not gain_warned:
                    gain_warned = _warn_gain_orientation(movie, result.record)
                pixel_warning = pixel_size_warning(result.record)
                if pixel_warning is not None and not pixel_warned:
                    pixel_warned = True
                    print(f"motionwatch: {movie}: warning: {pixel_warning}; said once per run",
                          file=sys.stderr, flush=True)
                if not eer_gain_noted:
                    eer_gain_noted = _note_eer_gain(movie, result.record, params.gain.eer_gain)
    except _Terminated:
        print("motionwatch: terminated (SIGTERM)", file=sys.stderr)
        status = exitcodes.TERMINATED
    finally:  # also at Ctrl-C: the movies corrected so far are listed for RELION
        try:
            with termination.finishing(previous_handler):  # a signal waits for the STAR
                read_ahead.close()
                relion.finish()
        finally:
            claims.release()  # also when the STAR could not be written
    if termination.interrupted:  # Ctrl-C while the STAR was written: said as at any time
        raise KeyboardInterrupt
    if status is None and termination.pending:
        print("motionwatch: terminated (SIGTERM)", file=sys.stderr)
        status = exitcodes.TERMINATED
    if status is not None:
        return status
    return exitcodes.SOME_FAILED if failed or relion.failed else exitcodes.OK


class _Termination:
    """SIGTERM stops the run as Ctrl-C does (temporaries removed, the movies corrected so far
    listed for RELION), except inside :meth:`deferred`, whose end it waits for: a movie's
    motion STAR written there names the gain RELION must apply (the gain exported first, a
    K3 super-resolution one in seconds); stopped half-way, the STAR written at the end for a
    movie without one named none, and an existing STAR is never replaced."""

    def __init__(self) -> None:
        self._deferring = False
        self._pending = False
        self._interrupted = False

    @property
    def pending(self) -> bool:
        """A SIGTERM came while deferred."""
        return self._pending

    @property
    def interrupted(self) -> bool:
        """A Ctrl-C (SIGINT) came inside :meth:`finishing`."""
        return self._interrupted

    def install(self) -> Any:
        """Take SIGTERM; the handler replaced (None: none set, ``correct`` run outside the
        main thread, where Python takes no signal handler)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        if self._deferring:
            self._pending = True
            return
        raise _Terminated()

    def _interrupt_handler(self, signum: int, frame: Any) -> None:
        if self._interrupted:  # a second Ctrl-C: the user will not wait
            raise KeyboardInterrupt
        self._interrupted = True
        print("motionwatch: interrupted: the STAR of the movies corrected so far is written "
              "first (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def finishing(self, previous_term: Any) -> Iterator[None]:
        """The run's last writes (the STAR of the movies corrected so far): SIGTERM and Ctrl-C
        inside wait for their end and are then told by :attr:`pending` and
        :attr:`interrupted` (a signal there killed the run before it wrote the STAR). At the
        end SIGTERM's handler before :meth:`install` (``previous_term``; None: none was
        installed) is put back."""
        # only the main thread takes handlers; a run started with SIGINT ignored (a background
        # job of a script) keeps it so
        take_int = (threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN)
        self._deferring = True
        previous_int = signal.signal(signal.SIGINT, self._interrupt_handler) if take_int \
            else None
        try:
            yield
        finally:
            if take_int:
                signal.signal(signal.SIGINT, previous_int)
            if previous_term is not None:
                signal.signal(signal.SIGTERM, previous_term)
            self._deferring = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A SIGTERM inside stops the run at its end."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending:
            raise _Terminated()


@dataclasses.dataclass(frozen=True)
class _OwnGain:
    """What one movie is corrected with under :class:`_FrameMdocGains`."""

    params: Any  # the run's CorrectionParams, with the frame mdoc's gain where it named one
    gain: MovieGain | None = None
    reference: Any = None  # the loaded reference of ``gain``
    record: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # into the record


class _FrameMdocGains:
    """The gain reference each movie's frame mdoc names (:mod:`daemon.intake.frame_gain`),
    for a run given no ``--gain``: loaded once per file and turn (the last one kept)."""

    def __init__(self, params: Any, *, enabled: bool, why_not: str | None = None) -> None:
        self.params = params
        self.enabled = enabled
        self.why_not = why_not or "none is applied"  # why no frame mdoc gain is
        self._loaded: tuple[Any, Any] | None = None  # (GainParams, reference)
        self._unapplied_lists = UnappliedDefectLists(
            configured=params.gain.defects_path is not None)

    def _tell_defects_not_applied(self, movie: Path, why: str) -> None:
        """One line on stderr per folder whose frame mdocs name a camera defect list that is
        not applied."""
        line = self._unapplied_lists.line(movie, why)
        if line is not None:
            print(f"motionwatch: {movie}: warning: {line}", file=sys.stderr, flush=True)

    def lookup(self, movie: Path) -> _OwnGain:
        """The movie's parameters and gain; raises ``GainReferenceError`` when its frame mdoc
        names a gain that is not there or does not read (the movie fails, the run goes on)."""
        from correction.errors import GainReferenceError
        from correction.gain import load_gain_reference

        if not self.enabled:
            self._tell_defects_not_applied(movie, self.why_not)
            return _OwnGain(self.params)
        found = find_frame_mdoc_gain(movie)
        if found.missing_reason is not None:
            raise GainReferenceError(movie, f"{found.missing_reason} (give --gain, or "
                                            "--no-frame-mdoc-gain)")
        if found.gain is None:
            if found.defects_named is not None:
                self._tell_defects_not_applied(movie, "it names no gain reference")
            return _OwnGain(self.params)
        own = found.gain
        if self.params.gain.defects_path is not None:  # --defects wins
            own = dataclasses.replace(own, defects=None)
        elif found.defects_missing is not None:
            print(f"motionwatch: {movie}: warning: {found.defects_missing}: corrected without "
                  "it", file=sys.stderr, flush=True)
        params = movie_params(self.params, gain=own)
        if self._loaded is None or self._loaded[0] != params.gain:
            self._loaded = None
            self._loaded = (params.gain, load_gain_reference(params.gain))
        return _OwnGain(params, own, self._loaded[1], {"frame_mdoc_gain": {
            **own.to_json(), "turn": found.turn, **frame_mdoc_defects_notes(found, self.params)}})


class _RelionFiles:
    """RELION's hand-off for this run: the gain as polishing reads it (the daemon's
    :func:`~correction.gain_export.write_relion_gain`, the same file when the daemon already
    wrote this gain into the folder, its own name otherwise; EER movies' a ``.gain``, which
    RELION does not invert), the motion STAR of each movie as soon as it is corrected, naming
    it, and at the end (also after Ctrl-C or SIGTERM) ``corrected_micrographs.star`` of every
    movie in the folder. The motion STARs of other movies (the daemon's, an earlier run's) are
    left as they are. ``failed``: a file was not written (said on stderr; the run's status 1)."""

    def __init__(self, out: Path, params: Any, optics: Any) -> None:
        self.out = out
        self.params = params
        self.optics = optics
        self.failed = False
        # (gain parameters, EER movie or not) -> the file named
        self._gain_names: dict[tuple[Any, bool], str | None] = {}

    def _gain_name(self, gain_params: Any, eer: bool) -> str | None:
        from correction.gain_export import write_relion_gain

        if gain_params.gain_path is None:
            return None
        key = (gain_params, eer)
        if key not in self._gain_names:
            self._gain_names[key] = None
            try:
                gain = write_relion_gain(self.out, gain_params, eer=eer)
                self._gain_names[key] = gain.name if gain is not None else None
            except (OSError, ValueError) as exc:
                self.failed = True
                print(f"motionwatch: the gain for RELION was not written into {self.out}: "
                      f"{exc}", file=sys.stderr)
        return self._gain_names[key]

    def corrected(self, movie: Path, motion_path: Path, record: dict[str, Any]) -> str | None:
        """Write the motion STAR of a movie just corrected (naming the gain its frame mdoc
        gave, where it was corrected with that one); the problem said when it could not be
        (None when written)."""
        try:
            motion = movie_motion(record, motion_path)
            gain_params = self.params.gain
            if motion.own_gain is not None:
                gain_params = motion.own_gain.onto(gain_params)
            write_motion_star(motion, gain_name=self._gain_name(
                gain_params, motion.eer_grouping is not None))
        except UnwritableStarValue as exc:  # the images are right; only RELION misses it
            problem = f"RELION motion STAR not written: {exc}"
        except (OSError, ValueError) as exc:
            self.failed = True
            problem = f"RELION motion STAR not written: {exc}"
        else:
            return None
        print(f"motionwatch: {movie}: {problem}", file=sys.stderr)
        return problem

    def finish(self) -> None:
        """Write ``corrected_micrographs.star`` of every movie corrected into the folder so far
        (a motion STAR only where one is missing)."""
        left_out: list[str] = []
        try:
            write_single_particle_star(self.out, motion_records_in(self.out), self.optics,
                                       left_out=left_out)
        except (OSError, ValueError) as exc:
            self.failed = True
            print(f"motionwatch: RELION files not written: {exc}", file=sys.stderr)
        for name in left_out:
            print(f"motionwatch: {SINGLE_PARTICLE_STAR}: {name!r} left out: a STAR row cannot "
                  "hold a tab or a line break", file=sys.stderr)
