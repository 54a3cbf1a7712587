"""The hand-off files kept up to date by the running service.

:class:`RelionListener` keeps, for every corrected movie, its motion record's path in memory
(seeded from the state database, read-only, when the service is ready; then replaced on each
``movie_done``, so a redone movie replaces its row and never duplicates it) and after each movie
or series event rewrites, atomically, what changed:

* the movie's RELION motion STAR ``S.star`` and its Warp layout (:mod:`daemon.handoff.warp`);
  at start-up also those of movies recorded done whose files are missing (a service killed
  between recording a movie and writing them);
* for a tilt-series movie: its series' ``OUT/<rel>/<series>/<series>.star`` and
  ``OUT/corrected_tilt_series.star`` (:mod:`daemon.handoff.tomo`); on ``series completed`` also
  the AreTomo3 names derived from the series mdoc (:func:`correction.stack.link_aretomo_inputs`),
  and at start-up those of every series the state database records complete (a service killed
  between assembling a series and linking them; the ``completed`` event is not sent again);
* otherwise ``OUT/corrected_micrographs.star`` (:mod:`daemon.handoff.relion`), which also
  keeps the movies another writer corrected into the output folder (``motionwatch correct
  --out OUT``: motion records directly in ``OUT`` that the state database never named), so
  that a rewrite never drops their rows; their motion STARs are theirs and left alone.

A movie whose outputs were adopted (found on disk, e.g. after the state database was lost)
arrives as a ``movie_done`` like a corrected one.

Every file is rebuilt from the current state, never appended to, so restarts, redone movies and
re-read mdocs update rows. The two folder-wide STARs (``corrected_tilt_series.star``,
``corrected_micrographs.star``) list every movie, so they are rewritten at most every
:data:`GLOBALS_EVERY_S` seconds while movies come (then at the next heartbeat, and at the
stop). A failure to write is logged once per file and reason and never stops
the service.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from correction.gain_export import relion_gain_content, write_relion_gain
from correction.report import file_sha256
from correction.params import GainParams
from daemon.events import (MovieEvent, SeriesEvent, ServiceInfo, ServiceListener,
                           output_dir_for)
from daemon.handoff.relion import (MOTION_SUFFIX, MovieMotion, RelionOptics, motion_star_path,
                                   motion_star_gain_name, motion_star_stamped,
                                   movie_motion, single_particle_blocks, write_motion_star,
                                   write_star, SINGLE_PARTICLE_STAR)
from daemon.handoff.tomo import (TILT_SERIES_STAR, TiltEntry, global_block, mdoc_facts,
                                 relion_tomo_names, series_block)
from daemon.handoff.warp import (warp_layout, warp_layout_displaced, warp_layout_in_place,
                                 warp_name, warp_name_taken, warp_remove_stem_layout,
                                 warp_series_mdoc)
from daemon.intake.frame_gain import relocated
from daemon.series.moved import moved_tilt
from daemon.series.resolution import split_qualified
from daemon.series.tilt_record import TiltRecord, read_motion_record
from daemon.settings.config import Config, ConfigError
from daemon.settings.optics import DEFAULT_AMPLITUDE_CONTRAST, DEFAULT_SPHERICAL_ABERRATION_MM

#: seconds between rewrites of the folder's global STAR files (each lists every movie)
GLOBALS_EVERY_S = 10.0
#: the cached motion records are looked at on disk again (gone, rewritten) at most this often (s)
RECORDS_CHECKED_EVERY_S = 60.0
#: motion STARs of an earlier convention written again per heartbeat (5-6 ms each): the first
#: start after an upgrade says READY at once, not after 20,000 of them (about 2 minutes here,
#: more on a share, against systemd's start timeout)
RESTAMPED_PER_BEAT = 200

__all__ = ["add_handoff_arguments", "add_relion_optics_arguments", "relion_optics_from_args",
           "handoff_options_from", "build_handoff_listener", "RelionListener"]


def add_handoff_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the hand-off files (``motionwatch watch``)."""
    g = parser.add_argument_group("hand-off to RELION 5, AreTomo3, IMOD, Warp")
    g.add_argument("--handoff", choices=("on", "off"), default="on",
                   help="keep corrected_micrographs.star, corrected_tilt_series.star, per-movie "
                        "RELION motion STARs and the Warp layout up to date (default on)")
    add_relion_optics_arguments(g)
    g.add_argument("--tomo-hand", type=int, choices=(1, -1), default=-1,
                   help="rlnTomoHand: -1 flips the defocus handedness (RELION's 'invert "
                        "defocus handedness', usual for SerialEM data; default -1)")
    g.add_argument("--warp-layout", choices=("on", "off"), default="on",
                   help="also link average/, average/even, average/odd and write a minimal "
                        "<movie>.xml for WarpTools ts_import (default on)")


def add_relion_optics_arguments(group: Any) -> None:
    """The RELION optics options, the same for ``watch`` and ``correct``: Cs, amplitude
    contrast, optics group name, the early/late motion dose cutoff."""
    group.add_argument("--spherical-aberration", type=float,
                       default=DEFAULT_SPHERICAL_ABERRATION_MM, metavar="MM",
                       help="Cs (mm), kept in each corrected movie's motion record and written "
                            "into the RELION files (default 2.7, as RELION's import job)")
    group.add_argument("--amplitude-contrast", type=float, default=DEFAULT_AMPLITUDE_CONTRAST,
                       metavar="FRACTION",
                       help="amplitude contrast, in [0, 1), kept in each corrected movie's "
                            "motion record and written into the RELION files (default 0.1, as "
                            "RELION's import job)")
    group.add_argument("--optics-group", default="optics1", metavar="NAME",
                       help="optics group name for the RELION files (default optics1; several "
                            "groups, one per distinct pixel size, voltage, Cs and amplitude "
                            "contrast, are numbered: "
                            "optics1, optics2, ...)")
    group.add_argument("--motionstats-dose-cutoff", type=float, default=4.0, metavar="E_A2",
                       help="dose separating early from late accumulated motion (e/Å²; "
                            "RELION's --dose_motionstats_cutoff, default 4)")


def relion_optics_from_args(args: argparse.Namespace) -> RelionOptics:
    """The :class:`RelionOptics` of ``motionwatch correct``'s options.

    Raises
    ------
    ValueError
        A bad value (negative Cs, amplitude contrast outside [0, 1), ...).
    """
    return RelionOptics(spherical_aberration_mm=float(args.spherical_aberration),
                        amplitude_contrast=float(args.amplitude_contrast),
                        optics_group_name=str(args.optics_group),
                        motionstats_dose_cutoff_e_A2=float(args.motionstats_dose_cutoff))


def handoff_options_from(config: Config) -> RelionOptics | None:
    """The :class:`RelionOptics` of ``config``; None with ``handoff = "off"``.

    Raises
    ------
    ConfigError
        A bad value (negative Cs, amplitude contrast outside [0, 1), ...).
    """
    options = config.options
    if options.get("handoff", "on") == "off":
        return None
    try:
        return RelionOptics(
            spherical_aberration_mm=float(options.get("spherical_aberration",
                                                      DEFAULT_SPHERICAL_ABERRATION_MM)),
            amplitude_contrast=float(options.get("amplitude_contrast",
                                                 DEFAULT_AMPLITUDE_CONTRAST)),
            optics_group_name=str(options.get("optics_group", "optics1")),
            tomo_hand=int(options.get("tomo_hand", -1)),
            tilt_axis_deg=(None if options.get("tilt_axis") is None
                           else float(options["tilt_axis"])),
            motionstats_dose_cutoff_e_A2=float(options.get("motionstats_dose_cutoff", 4.0)))
    except (TypeError, ValueError) as exc:
        raise ConfigError([f"hand-off: {exc}"]) from None


def build_handoff_listener(config: Config, *, logger: Any = None) -> RelionListener | None:
    """The hand-off listener of ``config``; None with ``handoff = "off"``.

    Raises
    ------
    ConfigError
        Bad hand-off options.
    """
    optics = handoff_options_from(config)
    if optics is None:
        return None
    return RelionListener(optics, warp=config.options.get("warp_layout", "on") != "off",
                          logger=logger)


def _content_now(gain: Any) -> tuple[tuple[str, str], ...]:
    """``(kind, SHA-256)`` of the gain, dark and defect files of ``gain`` as they are now (in
    the order of a record's ``references``)."""
    return tuple((kind, file_sha256(path)) for kind, path in gain.files())


def _renaming(metadata: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """From a moved movie's ledger metadata: the series it is in now (None: not a tilt) and
    the name it was recorded under before its last move."""
    metadata = metadata or {}
    tilt = (metadata.get("extra_record") or {}).get("tilt")
    series = tilt.get("series") if isinstance(tilt, Mapping) else None
    before = list(metadata.get("moved_from") or [])
    return series, (str(before[-1]) if before else None)


def _renamed_record(record: dict[str, Any], movie: str, series: str | None,
                    before: str | None, watch_dir: Path) -> dict[str, Any]:
    """A motion record as of its movie's new name: the movie, its mdoc and its series as they
    are called now (:func:`~daemon.series.moved.moved_tilt`, the rule the state database's
    rows follow; ``series``, the row's, when given)."""
    old = str(record.get("movie") or before or movie)
    record = {**record, "movie": movie}
    tilt = record.get("tilt")
    if isinstance(tilt, Mapping):
        tilt = moved_tilt(tilt, Path(old), Path(movie), watch_dir)
        if "movie" in tilt:
            tilt["movie"] = Path(movie).name
        if series:
            tilt["series"] = series
        record["tilt"] = tilt
    return record


def _stack_folder(stem: str, stacks: Mapping[str, str]) -> Path | None:
    """The folder of a series' stacks (named ``<stem>...``), None when none is listed."""
    for value in stacks.values():
        if value and Path(value).name.startswith(stem):
            return Path(value).parent
    return None


def _abs(path: str | Path) -> str:
    """A motion record's path in one spelling (absolute, normalised, links kept)."""
    return os.path.abspath(os.fspath(path))


def _star_current(motion: MovieMotion) -> bool:
    """Whether the movie's motion STAR is there and written since its motion record (a kill
    after a redo's record and before its STAR left the old correction's STAR, present)."""
    try:
        star = motion_star_path(motion.motion_path).stat().st_mtime_ns
        return star >= motion.motion_path.stat().st_mtime_ns
    except OSError:
        return False

def _star_names(motion: MovieMotion, movie: str) -> bool:
    """Whether the movie's motion STAR names it as ``movie`` already (a renamed movie's files,
    written again once under its new name, were written again at every start)."""
    try:
        text = motion_star_path(motion.motion_path).read_text(encoding="utf-8",
                                                              errors="replace")
    except OSError:
        return False
    return any(line.split()[1:2] == [movie] for line in text.splitlines()
               if line.startswith("_rlnMicrographMovieName"))


class _NullLog:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class RelionListener(ServiceListener):
    """Keeps the hand-off files of the output folder up to date (module docstring).

    Parameters
    ----------
    optics : RelionOptics
    warp : bool
        Also keep the Warp layout.
    logger : structlog-like logger, optional
        Defaults to the daemon's logger.
    """

    def __init__(self, optics: RelionOptics, *, warp: bool = True, logger: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.optics = optics
        self.warp = warp
        self._log = logger
        self._clock = clock
        # the folder's two global STARs list every movie: rewritten at most every
        # GLOBALS_EVERY_S (a night of 5,000 movies rewrote them 5,000 times, each pass over
        # all records), and at every heartbeat and at the stop when some are due
        self._globals_due = {"tomo": False, "single": False}
        self._globals_written_at: float | None = None
        self._out: Path | None = None
        self._watch: Path | None = None
        self._motions: dict[str, Path] = {}  # movie path -> motion record path
        # movies whose files could not be written (their record or folder out of reach):
        # tried again at each heartbeat
        self._unwritten: set[str] = set()
        #: motion STARs without this release's stamp (an earlier convention), to write again:
        #: this service's movies (by key) and another writer's (``correct --out``: its record)
        self._unstamped: list[str] = []
        self._unstamped_foreign: list[MovieMotion] = []
        self._completed: dict[str, Mapping[str, Any]] = {}  # series -> its state when ready
        # series -> the movies its stacks were assembled from (names below the watch folder),
        # while it is complete: its STAR lists those only
        self._assembled: dict[str, frozenset[str]] = {}
        # series -> its series mdoc (the tilt axis, the tilts' target defocus): a series made
        # from frame mdocs whose series mdoc came later has tilt records naming the frame
        # mdocs, which give neither (its STAR said axis 0)
        self._series_mdocs: dict[str, str] = {}
        self._cache: dict[str, tuple[float, MovieMotion, TiltRecord | None]] = {}
        self._records_checked_at: float | None = None  # every cached record's last look
        self._warned: set[tuple[str, str]] = set()
        self._gain_name: str | None = None
        self._gain_params: Any = None  # for the gain of EER movies, written at the first one
        self._gain_settings: Any = None  # the configured ones, gain file or not (own gains')
        # (gain settings, EER, content applied) -> the name of its file for RELION
        self._gain_exports: dict[tuple[Any, bool, tuple[tuple[str, str], ...]], str | None] = {}
        self._quiet_gains = False  # while the STARs of earlier movies are written again
        self._own: set[str] = set()  # every motion record the ledger or an event named
        self._foreign: dict[str, tuple[int, MovieMotion | None]] = {}  # path -> (mtime, view)
        # movies renamed after their record was written (movie path -> its series, or None):
        # their files name the movie, and the series, as they are called now
        self._renamed: dict[str, tuple[str | None, str | None]] = {}
        self._series_stars: dict[str, Path] = {}  # series -> the STAR last written for it
        # series -> the movies its last written STAR lists: a movie's new record may be loaded
        # (for another file) between its write and its event, so the series it leaves are
        # known from what was written, not from the record last loaded
        self._star_movies: dict[str, frozenset[str]] = {}
        self._tomo_names: dict[str, str] = {}  # series -> the data block its STAR has

    # --- service events -------------------------------------------------------------------
    def on_ready(self, info: ServiceInfo) -> None:
        self._out, self._watch = Path(info.out_dir), Path(info.watch_dir)
        if self._log is None:
            try:
                from daemon.system.logs import get_logger

                self._log = get_logger()
            except ImportError:  # pragma: no cover
                self._log = _NullLog()
        gain = self._guard(str(info.out_dir), "relion_gain", write_relion_gain, info.out_dir,
                           info.gain) if info.gain is not None else None
        self._gain_name = Path(gain).name if gain else None
        self._gain_params = info.gain
        self._gain_settings = info.gain_settings
        if gain is not None:  # the content of now: a movie with other content is news
            now = self._guard(str(info.gain.gain_path), "relion_gain", _content_now, info.gain)
            if now is not None:
                self._gain_exports[(info.gain, False, now)] = self._gain_name
        self._quiet_gains = True  # the STARs of movies corrected before: their gains are old
        try:
            self._seed(Path(info.state_dir))
            self._catch_up()
            every = self._entries()
            series = {t.series for _, t in every if t is not None}
            self._seed_tomo_names(series, every)
            for name in sorted(series):
                self._write_series(name)
            self._write_globals(tomo=bool(series), single=True)
            self._link_completed_series()
        finally:
            self._quiet_gains = False

    def on_movie_done(self, event: MovieEvent) -> None:
        motion_path = (event.outputs or {}).get("motion")
        if not motion_path or self._out is None:
            return
        # a record written for the movie where it is now (redone, adopted) names it, and its
        # series, as they are: no earlier move's override applies to it
        self._renamed.pop(str(event.path), None)
        self._write_after(str(event.path), motion_path)

    def on_movie_failed(self, event: MovieEvent) -> None:
        if event.status != "quarantined" or str(event.path) not in self._motions:
            return
        loaded = self._forget(str(event.path))
        tilt = loaded[2] if loaded else None
        if tilt is not None:
            self._write_series(tilt.series)
        self._write_globals(tomo=tilt is not None, single=tilt is None)

    def _write_after(self, key: str, motion_path: str | Path,
                     series: set[str] | None = None) -> None:
        """The movie ``key`` has its motion record at ``motion_path`` (written by this daemon):
        noted, its record loaded afresh (:meth:`_load`), and its files, its series' and
        ``series``' files and the folder's files written; so are those of the series its
        previous record named (a tilt redone as no tilt, or as another series' tilt, leaves it)."""
        self._motions[key] = Path(motion_path)
        self._own.update((_abs(motion_path), _abs(key)))
        previous = self._cache.pop(key, None)
        series = set(series or ())
        if previous is not None and previous[2] is not None:
            series.add(previous[2].series)
        series.update(name for name, movies in self._star_movies.items() if key in movies)
        loaded = self._load(key)
        if loaded is None:  # its record out of reach (the output folder moved away)?
            self._note_unwritten(key, written=False)
            return
        _, motion, tilt = loaded
        self._note_unwritten(key, written=self._write_movie_files(motion))
        if tilt is not None:
            series.add(tilt.series)
        for name in sorted(series):
            self._write_series(name)
        # a single movie redone as a tilt (its series mdoc came after it: Tomography 5) leaves
        # the micrographs' file, as a tilt redone as a single movie joins it
        was_single = previous is not None and previous[2] is None
        self._write_globals(tomo=bool(series), single=tilt is None or was_single)

    def _note_unwritten(self, key: str, *, written: bool) -> None:
        """Keep ``key`` to be written again at a heartbeat while its record's folder is out of
        reach (moved away, a share gone); a record that does not read, or a folder there
        that refuses the files, is not tried again and again (said once by ``_warn``)."""
        folder = self._motions[key].parent
        if written or folder.is_dir():
            self._unwritten.discard(key)
        else:
            self._unwritten.add(key)

    def _forget(self, key: str) -> tuple[float, MovieMotion, TiltRecord | None] | None:
        """The movie ``key`` is no longer listed; returns its record as it was loaded."""
        loaded = self._load(key)
        del self._motions[key]
        self._cache.pop(key, None)
        return loaded

    def on_movie_moved(self, event: MovieEvent) -> None:
        motion_path = (event.outputs or {}).get("motion")
        if not motion_path or self._out is None or event.status != "done":
            return
        key = str(event.path)
        series = set()
        for old, path in list(self._motions.items()):  # the same record under its old name
            if old != key and _abs(path) == _abs(motion_path):
                loaded = self._forget(old)
                if loaded is not None and loaded[2] is not None:
                    series.add(loaded[2].series)
        self._renamed[key] = _renaming(event.metadata)
        self._write_after(key, motion_path, series)

    def on_series_event(self, event: SeriesEvent) -> None:
        if self._out is None or event.kind == "warning":  # a warning changes no file
            return
        if event.mdoc:
            self._series_mdocs[event.series] = str(event.mdoc)
        if event.kind == "completed":
            self._assembled[event.series] = frozenset(event.tilts)
        elif event.kind in ("started", "reopened"):
            self._assembled.pop(event.series, None)
        entries = self._write_series(event.series)
        self._write_globals(tomo=True, single=False)
        if event.kind == "completed":
            self._guard(event.series, "aretomo_names", self._aretomo_names, event.series,
                        event.mdoc, event.stacks)
            if self.warp:
                self._guard(event.series, "warp_mdoc", self._warp_mdoc, event.series,
                            event.stacks, entries)

    # --- state ----------------------------------------------------------------------------
    def _seed(self, state_dir: Path) -> None:
        from daemon.state.ledger import DB_NAME, Ledger

        path = state_dir / DB_NAME
        if not path.exists():
            return
        try:
            with Ledger(path, read_only=True) as ledger:
                every = ledger.rows()
                series = ledger.series_states()
        except Exception as exc:  # noqa: BLE001 - hand-off must never stop the service
            self._warn("ledger", str(path), exc)
            return
        self._completed = {name: state for name, state in series.items()
                           if state.get("status") == "complete" and state.get("stacks")}
        self._assembled = {name: frozenset(state.get("assembled_movies") or ())
                           for name, state in self._completed.items()}
        self._series_mdocs = {name: str(state["mdoc"]) for name, state in series.items()
                              if state.get("mdoc")}
        # the ledger's movies, whatever became of them (a quarantined one stays out of the
        # micrographs STAR even when an earlier record of it is still on disk)
        self._own.update(_abs(row.key.path) for row in every)
        self._own.update(_abs(row.outputs["motion"]) for row in every
                         if (row.outputs or {}).get("motion"))
        rows = [row for row in every if row.status == "done"]
        latest: dict[str, Any] = {}
        for row in rows:
            prev = latest.get(row.key.path)
            if prev is None or (row.updated or 0) >= (prev.updated or 0):
                latest[row.key.path] = row
        for movie, row in latest.items():
            motion = (row.outputs or {}).get("motion")
            if motion:
                self._motions[movie] = Path(motion)
                if (row.metadata or {}).get("moved_from"):
                    self._renamed[movie] = _renaming(row.metadata)

    def _catch_up(self) -> None:
        """Write the per-movie files of movies recorded done that lack them: a service stopped
        (killed, power cut) after the ledger recorded a movie and before this listener heard
        of it leaves them unwritten, and no later event would bring them. A Warp name shared
        by movies of one folder is the one's whose record is newest (as when it was written);
        its layout is made again where it is not in place (an output folder of a release that
        named the layout by the output stem), and the others' stem-named layouts go."""
        loaded_all = {key: loaded for key in sorted(self._motions)
                      if (loaded := self._load(key)) is not None}
        warp_owner: dict[tuple[Path, str], tuple[float, str]] = {}  # the newest record names it
        for key, (mtime, motion, _) in loaded_all.items():
            place = (motion.motion_path.parent, warp_name(motion))
            warp_owner[place] = max(warp_owner.get(place, (mtime, key)), (mtime, key))
        for key, (_, motion, _) in loaded_all.items():
            owner = warp_owner[(motion.motion_path.parent, warp_name(motion))][1] == key
            renamed = key in self._renamed and not _star_names(motion, key)
            if renamed or not _star_current(motion) or (
                    self.warp and owner and not warp_layout_in_place(motion)):
                self._write_movie_files(motion, warp=owner)
            elif not motion_star_stamped(motion_star_path(motion.motion_path), motion):
                self._unstamped.append(key)  # written again from the heartbeats on
            if self.warp and not owner:  # an earlier release's layout of it, by its stem
                self._guard(str(motion.motion_path), "warp_layout", warp_remove_stem_layout,
                            motion)

    def _seed_tomo_names(self, series: Iterable[str],
                         every: list[tuple[MovieMotion, TiltRecord | None]]) -> None:
        """The ``rlnTomoName`` each series' STAR was written with by an earlier run (its data
        block): kept, so that a series met since does not take it (RELION jobs run on it)."""
        for name in sorted(series):
            entries = self._series_entries(name, every)
            if not entries:
                continue
            try:
                with self._series_star(name, entries).open(encoding="utf-8") as star:
                    block = next((line.rstrip("\r\n")[len("data_"):] for line in star
                                  if line.startswith("data_")), None)
            except (OSError, UnicodeDecodeError):
                continue
            if block:
                self._tomo_names[name] = block

    def _link_completed_series(self) -> None:
        """Give every series recorded complete the AreTomo3 names of its stacks (present ones
        are left alone): a service killed between assembling a series and linking them leaves
        them missing, and no later event would bring them."""
        for name, state in sorted(self._completed.items()):
            mdoc = state.get("mdoc") or next(
                (e.tilt.mdoc for e in self._series_entries(name) if e.tilt.mdoc), None)
            self._guard(name, "aretomo_names", self._aretomo_names, name, mdoc,
                        state.get("stacks") or {})

    def _load(self, key: str) -> tuple[float, MovieMotion, TiltRecord | None] | None:
        path = self._motions.get(key)
        if path is None:
            return None
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        cached = self._cache.get(key)
        if cached is not None and cached[0] == mtime:
            return cached
        record = read_motion_record(path)
        if record is None:
            return None
        if key in self._renamed and self._watch is not None:
            record = _renamed_record(record, key, *self._renamed[key], self._watch)
        try:
            motion = movie_motion(record, path)
        except ValueError as exc:
            self._warn("motion_record", str(path), exc)
            return None
        loaded = (mtime, motion, TiltRecord.from_json(record))
        self._cache[key] = loaded
        return loaded

    def _entries(self) -> list[tuple[MovieMotion, TiltRecord | None]]:
        """Every movie's record: those loaded before as loaded (this daemon rewrites a record
        only through :meth:`_write_after`, which loads it afresh), each looked at again on
        disk (gone, rewritten by hand) at most every :data:`RECORDS_CHECKED_EVERY_S`: each
        movie done looked at every record of the night, twice (1,640 stats a movie, 43 ms on
        a local disk; on a share, seconds of the main loop)."""
        now = self._clock()
        check = self._records_checked_at is None or (
            now - self._records_checked_at >= RECORDS_CHECKED_EVERY_S)
        if check:
            self._records_checked_at = now
        out = []
        for key in sorted(self._motions):
            loaded = None if check else self._cache.get(key)
            if loaded is None:
                loaded = self._load(key)
            if loaded is not None:
                out.append((loaded[1], loaded[2]))
        return out

    def _name_below_watch(self, movie: Path) -> str | None:
        """The movie's name below the watch folder (as series states name movies); None for
        one outside it (archived since), which is not looked up."""
        if self._watch is None:
            return None
        try:
            return Path(movie).relative_to(self._watch).as_posix()
        except ValueError:
            return None

    def _series_star(self, series: str, entries: list[TiltEntry]) -> Path:
        """``<series folder>/<name>.star`` beside the stacks: ``OUT/grid2/TS_01/TS_01.star``
        for the series ``grid2/TS_01`` of ``grid2/TS_01.mrc.mdoc``."""
        base = series.rpartition("/")[2]
        mdoc = next((e.tilt.mdoc for e in entries if e.tilt.mdoc), None)
        if mdoc and self._watch is not None and self._out is not None:
            folder = output_dir_for(Path(mdoc), watch_dir=self._watch, out_dir=self._out)
        else:
            folder = entries[0].motion.motion_path.parent
        return folder / base / f"{base}.star"

    def _series_entries(self, series: str, every: list[tuple[MovieMotion, TiltRecord | None]]
                        | None = None) -> list[TiltEntry]:
        """The series' tilts its STAR lists: those of the series' image shape and pixel size, as
        its stacks hold them (:func:`correction.stack.series_shape`: a movie of another camera
        setting or magnification is left out of both); of ``every`` (:meth:`_entries`) when
        the caller has them."""
        from correction.stack import image_geometry, series_shape

        entries = [TiltEntry(m, t) for m, t in (self._entries() if every is None else every)
                   if t is not None and t.series == series and t.tilt_deg is not None]
        assembled = self._assembled.get(series)
        if assembled:  # complete: the movies of its stacks (not a retaken tilt's discarded one)
            entries = [e for e in entries
                       if (name := self._name_below_watch(e.motion.movie)) is None
                       or name in assembled]

        def shape(e: TiltEntry) -> object:  # the sums' size and pixel, as the stacks compare them
            return image_geometry(e.motion.image_shape_yx
                                  or (tuple(e.motion.shape_yx), e.motion.bin_factor),
                                  e.motion.output_pixel_size_A)

        kept = series_shape([shape(e) for e in sorted(
            entries, key=lambda e: e.tilt.acquisition_index)])
        return [e for e in entries if shape(e) == kept]

    # --- writing --------------------------------------------------------------------------
    def _write_movie_files(self, motion: MovieMotion, *, warp: bool = True) -> bool:
        """The movie's RELION motion STAR and (when on, and ``warp``) its Warp layout, which
        takes its Warp name from any other movie of that name in the folder; False when the
        STAR could not be written."""
        written = self._guard(str(motion.motion_path), "motion_star", write_motion_star,
                              motion, gain_name=self._gain_name_for(motion)) is not None
        displaced = warp_layout_displaced(motion) if self.warp else None
        if displaced is not None:  # Warp would read this movie's sum as the other's average
            self._guard(str(displaced), "warp_layout", displaced.unlink, missing_ok=True)
            if self._log is not None:
                self._log.warning(
                    "warp_layout_removed", xml=str(displaced), movie=str(motion.movie),
                    note="this movie's sum is where that Warp layout had its average (a "
                         "watched folder named average): Warp no longer lists that movie")
        if self.warp and warp:
            if warp_name_taken(motion) and self._log is not None:
                self._log.warning(
                    "warp_name_reused", movie=str(motion.movie), name=warp_name(motion),
                    folder=str(motion.motion_path.parent),
                    note="Warp tells movies apart by file name only: the Warp layout of that "
                         "name in this folder (average/, .xml) is this movie's now, no longer "
                         "the one corrected there before")
            self._guard(str(motion.motion_path), "warp_layout", warp_layout, motion)
        return written

    def _gain_name_for(self, motion: MovieMotion) -> str | None:
        """The gain file a movie's motion STAR names: ``motionwatch_gain.mrc``, or for an EER
        movie the ``.gain`` RELION applies as it is (:func:`write_relion_gain` with ``eer``,
        written when the first EER movie comes); for a movie corrected with the gain its frame
        mdoc named, that gain as RELION reads it (written once per gain and turn). Each is the
        content the movie was corrected with (its record's hashes): a gain file written anew
        during the session has its own file for the movies corrected with it."""
        if self._out is None:
            return None
        eer = motion.eer_grouping is not None
        if motion.own_gain is not None:  # found again beside the movie when its folder
            # was renamed or moved since (by file name)
            params = relocated(motion.own_gain, motion.movie).onto(
                self._gain_settings or self._gain_params or GainParams())
        elif self._gain_params is None:
            return self._gain_name
        else:
            params = self._gain_params
        return self._exported_gain(params, eer=eer, motion=motion)

    def _exported_gain(self, params: Any, *, eer: bool, motion: MovieMotion) -> str | None:
        """The name of the RELION gain of ``params`` with the content ``motion`` was corrected
        with, written at the first movie that needs it; when that content is gone (the file
        written anew before the gain was written for RELION), the gain as it is now, said in
        the log (``relion_gain_not_kept``)."""
        applied = motion.reference_sha256
        key = (params, eer, applied)
        if key in self._gain_exports:
            return self._gain_exports[key]
        out = self._out

        def export() -> tuple[Path | None, bool]:
            found = write_relion_gain(out, params, eer=eer, applied_sha256=dict(applied))
            if found is None and applied:
                return write_relion_gain(out, params, eer=eer), True
            return found, False

        exported = self._guard(str(out), "relion_gain", export)
        if exported is None:  # failed (logged): tried again for the next movie
            return None
        gain, gone = exported
        name = Path(gain).name if gain else None
        if gone:
            (self._log or _NullLog()).warning(
                "relion_gain_not_kept", movie=str(motion.movie), gain=str(params.gain_path),
                relion_gain=name,
                note="the gain file was written anew after this movie was corrected and before "
                     "its gain was written for RELION: its STAR names the gain as it is now")
        elif not self._quiet_gains and self._current_content(params, applied) and any(
                k[:2] == key[:2] and v != name for k, v in self._gain_exports.items()):
            (self._log or _NullLog()).warning(
                "reference_rewritten", movie=str(motion.movie), gain=str(params.gain_path),
                relion_gain=name,
                note="the gain file was written anew: the movies corrected with its new "
                     f"content (this one is the first to finish) name it as {name} in their "
                     "STARs; those corrected before keep theirs")
        self._gain_exports[key] = name
        return name

    def _current_content(self, params: Any, applied: tuple[tuple[str, str], ...]) -> bool:
        """Whether ``applied`` (kind, SHA-256) is what the files of ``params`` hold now."""
        try:
            return relion_gain_content(params, dict(applied)) == relion_gain_content(params)
        except OSError:
            return False

    def _write_series(self, series: str) -> list[TiltEntry]:
        """The series' STAR rewritten from its tilts now; removed once it has none left (its
        tilts moved to another series' name, or were set aside), so that no STAR names movies
        that are gone. Returns the tilts it lists."""
        if self._out is None:
            return []
        every = self._entries()
        names = relion_tomo_names({t.series for _, t in every
                                   if t is not None and t.tilt_deg is not None},
                                  self._tomo_names)
        entries = self._series_entries(series, every)
        if entries:
            self._write_series_star(series, entries, names[series])
        else:
            self._remove_series_star(series)
        for other in sorted(self._tomo_names):  # named otherwise now: a series came or went
            if other in names and self._tomo_names.get(other, names[other]) != names[other]:
                self._write_series(other)
        return entries

    def _write_series_star(self, series: str, entries: list[TiltEntry], name: str) -> None:
        """Write the series' STAR (data block ``name``, its ``rlnTomoName``) from ``entries``."""
        if self._out is None:
            return
        mdoc = self._series_mdocs.get(series) or next(
            (e.tilt.mdoc for e in entries if e.tilt.mdoc), None)
        star = self._series_star(series, entries)
        if self._series_stars.get(series, star) != star:
            self._remove_series_star(series)
        self._series_stars[series] = star
        self._star_movies[series] = frozenset(
            key for key in self._motions
            if (loaded := self._cache.get(key)) is not None and loaded[2] is not None
            and loaded[2].series == series and loaded[2].tilt_deg is not None)
        table = series_block(entries, self._out, self.optics, mdoc_facts(mdoc))
        self._tomo_names[series] = name

        def write() -> None:
            star.parent.mkdir(parents=True, exist_ok=True)
            self._write_star(star, {name: table})

        self._guard(str(star), "series_star", write)

    def _remove_series_star(self, series: str) -> None:
        """Remove the STAR this listener last wrote for ``series`` (unless another series' STAR
        is now that file), and the series' folder when that leaves it empty (its stacks were
        removed before: a series whose tilts all moved away); removing a name is atomic, as the
        rewrites are."""
        self._star_movies.pop(series, None)
        self._tomo_names.pop(series, None)
        star = self._series_stars.pop(series, None)
        if star is None or star in self._series_stars.values():
            return

        def remove() -> None:
            star.unlink(missing_ok=True)
            if star.parent != self._out:
                with contextlib.suppress(OSError):  # not empty (the stacks), or gone
                    star.parent.rmdir()

        self._guard(str(star), "series_star", remove)

    def on_heartbeat(self, beat: Any) -> None:
        self._restamp(RESTAMPED_PER_BEAT)
        for key in sorted(self._unwritten):  # their folder back (moved away and back)
            if key in self._motions:
                self._write_after(key, self._motions[key])
            else:
                self._unwritten.discard(key)
        if self._globals_quiet():
            self._flush_globals()

    def on_stopped(self, exit_status: int) -> None:
        self._flush_globals()

    def _restamp(self, at_most: int) -> None:
        """Write again, from their records, up to ``at_most`` motion STARs of an earlier
        convention (the upgrade's first start found them; an upgrade from a release before
        fe60fee left STARs with the first frame at zero beside new ones in one session)."""
        foreign = self._unstamped_foreign[:at_most]
        self._unstamped_foreign = self._unstamped_foreign[at_most:]
        for motion in foreign:  # written by ``correct``: the gain it named stays
            star = motion_star_path(motion.motion_path)
            if star.exists() and not motion_star_stamped(star, motion):
                self._guard(str(motion.motion_path), "motion_star", write_motion_star, motion,
                            gain_name=motion_star_gain_name(star))
        at_most -= len(foreign)
        batch, self._unstamped = self._unstamped[:at_most], self._unstamped[at_most:]
        for key in batch:
            loaded = self._load(key)  # None: gone since
            if loaded is not None and not motion_star_stamped(
                    motion_star_path(loaded[1].motion_path), loaded[1]):
                self._guard(str(loaded[1].motion_path), "motion_star", write_motion_star,
                            loaded[1], gain_name=self._gain_name_for(loaded[1]))

    def _write_globals(self, *, tomo: bool, single: bool) -> None:
        """Mark the global STARs due; written now unless written less than GLOBALS_EVERY_S
        ago (then at the next heartbeat after that, or at the stop)."""
        self._globals_due["tomo"] |= tomo
        self._globals_due["single"] |= single
        if self._globals_quiet():
            self._flush_globals()

    def _globals_quiet(self) -> bool:
        """No global STAR written in the last GLOBALS_EVERY_S seconds."""
        return (self._globals_written_at is None
                or self._clock() - self._globals_written_at >= GLOBALS_EVERY_S)

    def _flush_globals(self) -> None:
        tomo, single = self._globals_due["tomo"], self._globals_due["single"]
        if not (tomo or single):
            return
        self._globals_due = {"tomo": False, "single": False}
        self._globals_written_at = self._clock()
        self._write_globals_now(tomo=tomo, single=single)

    def _write_globals_now(self, *, tomo: bool, single: bool) -> None:
        if self._out is None:
            return
        entries = self._entries()
        if tomo:
            by_series: dict[str, list[tuple[MovieMotion, TiltRecord | None]]] = {}
            for m, t in entries:
                if t is not None and t.tilt_deg is not None:
                    by_series.setdefault(t.series, []).append((m, t))
            rows = []
            for name, own in sorted(by_series.items()):
                # the tilts its STAR and stacks hold give its optics and pixel sizes, not a
                # tilt left out of them (another camera setting or pixel size)
                kept = self._series_entries(name, own)
                if kept:
                    first = min(kept, key=lambda e: e.tilt.acquisition_index)
                    rows.append((name, self._series_star(name, kept), first.motion))
            if rows:
                table = global_block(rows, self._out, self.optics, self._tomo_names)
                self._guard(TILT_SERIES_STAR, "tilt_series_star", self._write_star,
                            self._out / TILT_SERIES_STAR, {"global": table})
        if single:
            blocks = single_particle_blocks(
                self._out, [m for m, t in entries if t is None] + self._foreign_motions(),
                self.optics)
            star = self._out / SINGLE_PARTICLE_STAR
            if blocks is not None:
                self._guard(SINGLE_PARTICLE_STAR, "micrographs_star", self._write_star,
                            star, blocks)
            elif star.exists():  # its last movies are tilts now: it would list them still
                self._guard(SINGLE_PARTICLE_STAR, "micrographs_star", star.unlink,
                            missing_ok=True)

    def _foreign_motions(self) -> list[MovieMotion]:
        """Single-particle movies another writer corrected into the output folder (``correct
        --out OUT``): motion records directly in ``OUT`` of movies that neither the state
        database nor an event named (a movie this service quarantined stays out). Each record
        is read once per modification."""
        if self._out is None:
            return []
        try:
            paths = sorted(self._out.glob("*" + MOTION_SUFFIX))
        except OSError:
            return []
        out = []
        for path in paths:
            key = _abs(path)
            if key in self._own:
                continue
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                continue
            cached = self._foreign.get(key)
            if cached is None or cached[0] != mtime:
                record = read_motion_record(path)
                motion = None
                if record is not None and not record.get("tilt"):
                    try:
                        motion = movie_motion(record, path)
                    except ValueError:
                        motion = None
                if motion is not None and _abs(motion.movie) in self._own:
                    motion = None  # one of this service's movies (its record elsewhere)
                if motion is not None and not ({"sum", "dw"} & set(motion.outputs)):
                    motion = None
                star = None if motion is None else motion_star_path(motion.motion_path)
                if star is not None and star.exists() and not motion_star_stamped(star, motion):
                    self._unstamped_foreign.append(motion)  # an earlier release's correct
                cached = self._foreign[key] = (mtime, motion)
            if cached[1] is not None:
                out.append(cached[1])
        return out

    def _aretomo_names(self, series: str, mdoc: str | None, stacks: Mapping[str, str]) -> None:
        """Link the names AreTomo3 derives from the series mdoc to the assembled stacks."""
        from correction.stack import aretomo_name, link_aretomo_inputs

        stem = split_qualified(series)[1]  # "grid2/TS_01": stacks OUT/grid2/TS_01/TS_01.mrc
        folder = _stack_folder(stem, stacks)
        if folder is not None and mdoc:
            link_aretomo_inputs(folder, stem, aretomo_name(Path(mdoc).name))

    def _warp_mdoc(self, series: str, stacks: Mapping[str, str],
                   entries: list[TiltEntry]) -> None:
        """The series' mdoc for Warp's ``ts_import`` (:func:`warp_series_mdoc`), in the folder
        that holds most of its tilts' outputs (Warp's ``--frameseries``); ``entries``: its
        tilts, as its STAR was just written from them."""
        stem = split_qualified(series)[1]
        folder = _stack_folder(stem, stacks)
        stack_mdoc = None if folder is None else folder / f"{stem}.st.mdoc"
        if stack_mdoc is None or not stack_mdoc.is_file():
            return
        places = [e.motion.motion_path.parent for e in entries]
        if places:
            warp_series_mdoc(stack_mdoc, max(set(places), key=places.count), stem)

    def _write_star(self, star: Path, blocks: Mapping[str, Any]) -> None:
        """:func:`write_star`, saying once each name whose row it left out."""
        left_out: list[str] = []
        write_star(star, blocks, left_out=left_out)
        for name in left_out:
            key = ("star_row_left_out", f"{star}: {name}")
            if key not in self._warned and self._log is not None:
                self._warned.add(key)
                self._log.warning("star_row_left_out", path=str(star), name=name,
                                  note="a STAR row cannot hold a tab or a line break: RELION "
                                       "does not get this movie from this file")

    def _guard(self, what: str, step: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - logged; hand-off never stops the service
            self._warn(step, what, exc)
            return None

    def _warn(self, step: str, what: str, exc: BaseException) -> None:
        key = (step, f"{what}: {type(exc).__name__}: {exc}")
        if key in self._warned:
            return
        self._warned.add(key)
        log = self._log or _NullLog()
        log.warning("handoff_write_failed", step=step, path=what,
                    error=f"{type(exc).__name__}: {exc}")

