"""Tilt series in the watch daemon: mdocs read as they grow, dose bookkeeping, assembled stacks.

:class:`TiltSeriesResolver` is the service's :class:`~daemon.service.MetadataResolver` (and a
:class:`~daemon.service.ServiceObserver` of its movie events). At every scan it

1. re-reads each ``.mdoc`` whose size or mtime changed (:func:`daemon.mdoc.read_mdoc`), keeps
   the last good parse when a read fails, and records in the ledger since when each one's
   content is unchanged (so a restart keeps the mdoc's quiet time);
2. resolves every movie of the session - those on disk and every one in the ledger, whatever
   its status - with :func:`daemon.series.resolve`, so each tilt's dose and pre-exposure are a
   function of the metadata alone, never of processing order, restarts or late arrivals;
3. compares each corrected movie's recorded tilt (its ``S.motion.json`` ``tilt`` object) with
   the new resolution (:func:`daemon.series.assignment_change`): a moved dose, frame dose or
   pre-exposure makes the movie be **redone** (log event ``movie_redo_metadata_changed``; the new
   dose makes a new ledger key);
4. advances each series' completion state (:func:`daemon.series.update_series_state`; the
   ``<stack>.openTS`` lock next to the mdoc, the mdoc's quiet time, the idle timeout) and
   assembles a completed series (:func:`correction.stack.assemble_series`) in a separate worker
   process into ``OUT_DIR/<series>/``; a series re-opens when more movies arrive, or when one of
   its movies is redone, and is then assembled again (files replaced atomically).

A movie waits (``wait_reason``) while its metadata is pending (mdoc section not written yet, an
earlier tilt without dose ...); after ``--metadata-wait`` without metadata the file-name
pattern and ``--dose-per-tilt`` are used, with the fallback recorded; a movie that matches no
series is corrected alone with the configured dose and no pre-exposure.

``--tilt-series auto`` (default) turns this on once a tilt-series mdoc is seen in the watched
tree or a dose per tilt is configured; before that, movies are corrected at once as
single-particle movies (no wait for metadata).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import signal
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from daemon.settings.config import Config, ConfigError
from daemon.intake.discover import ScanResult
from daemon.series.mdoc import MdocFile, read_mdoc
from daemon.series.resolution import (DEFAULT_FILENAME_PATTERN, MdocObservation, MovieObservation, Resolution,
                     SeriesConfig, SeriesObservation, SeriesState, SeriesSummary,
                     assignment_change, classify_mdocs, resolve, update_series_state)
from daemon.engine.service import (MovieEvent, MovieMetadata, SeriesEvent, ServiceObserver, output_dir_for)
from daemon.intake.settle import Observation

__all__ = ["TiltSeriesResolver", "add_series_arguments", "lock_paths"]

_FINISHED = ("done", "quarantined")
_STACK_REASON = "a tilt-series stack (its .mdoc is a series mdoc), not a movie: not corrected"


def add_series_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the tilt-series integration (each has a TOML key, e.g. ``dose_per_tilt``)."""
    g = parser.add_argument_group("tilt series")
    g.add_argument("--tilt-series", choices=("auto", "on", "off"), default="auto",
                   help="tilt-series dose bookkeeping: on once a series mdoc is seen or "
                        "--dose-per-tilt is given (auto), always (on), never (off)")
    g.add_argument("--filename-pattern", default=DEFAULT_FILENAME_PATTERN, metavar="REGEX",
                   help="movie-name pattern with named groups series and angle (and index) for "
                        "movies without metadata")
    g.add_argument("--dose-per-tilt", type=float, default=None, metavar="E_A2",
                   help="dose of one tilt (e/Å²) when the metadata gives none")
    g.add_argument("--metadata-wait", type=float, default=60.0, metavar="S",
                   help="wait this long for a movie's mdoc section before the file-name "
                        "fallback (default 60 s)")
    g.add_argument("--mdoc-quiet", type=float, default=120.0, metavar="S",
                   help="a series without .openTS lock is complete once its mdoc is unchanged "
                        "this long (default 120 s)")
    g.add_argument("--series-idle-timeout", type=float, default=1800.0, metavar="S",
                   help="complete a series with nothing new for this long (default 1800 s)")
    g.add_argument("--exposure-filtered", action=argparse.BooleanOptionalAction, default=False,
                   help="also write a stack exposure-filtered by accumulated dose (S_EF.mrc)")


def lock_paths(mdoc_path: Path, series: str) -> tuple[Path, Path]:
    """SerialEM's acquisition lock of a series: ``<stack>.openTS`` (the mdoc's name without
    ``.mdoc``), or ``<series>.openTS``, next to the mdoc."""
    name = mdoc_path.name[:-5] if mdoc_path.name.lower().endswith(".mdoc") else mdoc_path.name
    return mdoc_path.with_name(name + ".openTS"), mdoc_path.with_name(series + ".openTS")


@dataclass(frozen=True, slots=True)
class _Mdoc:
    size: int
    mtime_ns: int
    parsed: MdocFile
    unchanged_since_s: float


def _ignore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _assemble_job(series: str, tilts: list[dict[str, Any]], out_dir: str, voltage_kV: float,
                  exposure_filtered: bool) -> dict[str, Any]:
    """Worker-process side of an assembly: plain data in, plain data out."""
    from correction.stack import StackTilt, assemble_series

    rows = [StackTilt(**{**t, "outputs": {k: Path(v) for k, v in t["outputs"].items()}})
            for t in tilts]
    result = assemble_series(series, rows, out_dir, voltage_kV=voltage_kV,
                             exposure_filtered=exposure_filtered)
    stacks = {k: str(v) for k, v in result.stacks.items()}
    stacks.update(tlt=str(result.tlt_path), csv=str(result.csv_path),
                  mdoc=str(result.mdoc_paths[0]) if result.mdoc_paths else "")
    return {"folder": str(result.folder), "stacks": stacks, "order": list(result.order),
            "warnings": list(result.warnings)}


_INFO_KEYS = ("expected_tilts", "mdoc", "folder")


def _state_dict(state: SeriesState, stacks: Mapping[str, str] | None = None,
                info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ledger's JSON of a series: its state, its stacks and, for ``motionwatch status``,
    ``expected_tilts`` (tilts its mdoc lists; None without one), ``mdoc`` and ``folder`` (where
    its stacks are assembled)."""
    return {"status": state.status, "generation": state.generation, "lock_seen": state.lock_seen,
            "assembled_movies": sorted(state.assembled_movies), "reason": state.reason,
            "stacks": dict(stacks or {}), **{k: (info or {}).get(k) for k in _INFO_KEYS}}


def _state_from(name: str, d: Mapping[str, Any]) -> SeriesState:
    return SeriesState(name, status=d.get("status", "open"), generation=int(d.get("generation", 0)),
                       lock_seen=bool(d.get("lock_seen", False)),
                       assembled_movies=frozenset(d.get("assembled_movies", ())),
                       reason=d.get("reason"))


class TiltSeriesResolver(ServiceObserver):
    """Tilt-series metadata, dose bookkeeping and series assembly for :class:`Service`.

    Parameters
    ----------
    series_config : SeriesConfig
    mode : {"auto", "on", "off"}
    exposure_filtered : bool
        Also assemble the exposure-filtered stack.
    """

    def __init__(self, series_config: SeriesConfig, *, mode: str = "auto",
                 exposure_filtered: bool = False) -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"mode must be auto, on or off, got {mode!r}")
        self.series_config = series_config
        self.mode = mode
        self.exposure_filtered = exposure_filtered
        self._service: Any = None
        self._log: Any = None
        self._mdocs: dict[str, _Mdoc] = {}
        self._stored_mdocs: dict[str, dict[str, Any]] = {}
        self._first_seen: dict[str, float] = {}
        self._res: Resolution | None = None
        self._active = mode == "on" or (mode == "auto" and series_config.dose_per_tilt_e_A2
                                          is not None)
        self._states: dict[str, SeriesState] = {}
        self._stacks: dict[str, dict[str, str]] = {}
        self._assembling: dict[str, tuple[Future, SeriesState, str]] = {}
        self._executor: ProcessPoolExecutor | None = None
        self._once: set[tuple[str, str]] = set()
        self._stack_files: set[str] = set()
        self._rows: dict[str, Any] = {}
        self._info: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_config(cls, config: Config) -> TiltSeriesResolver:
        """Build from ``Config.options`` (defaults for options absent there).

        Raises
        ------
        ConfigError
            A bad pattern (not a regular expression, no ``series``/``angle`` groups) or value.
        """
        o = config.options
        try:
            sc = SeriesConfig(
                filename_pattern=o.get("filename_pattern") or DEFAULT_FILENAME_PATTERN,
                dose_per_tilt_e_A2=o.get("dose_per_tilt"),
                metadata_wait_s=float(o.get("metadata_wait", 60.0)),
                mdoc_quiet_s=float(o.get("mdoc_quiet", 120.0)),
                idle_timeout_s=float(o.get("series_idle_timeout", 1800.0)))
            return cls(sc, mode=o.get("tilt_series", "auto") or "auto",
                       exposure_filtered=bool(o.get("exposure_filtered", False)))
        except ValueError as exc:
            raise ConfigError([f"tilt series: {exc}"]) from None

    # --- wiring ---------------------------------------------------------------------------
    def bind(self, service: Any) -> None:
        """Called by the service once its ledger is open: read the persisted mdoc and series
        state."""
        self._service = service
        self._log = service._log  # noqa: SLF001 - the service's logger, bound per event below
        sc = self.series_config
        self._log.info("tilt_series_config", mode=self.mode, active=self._active,
                       filename_pattern=sc.filename_pattern, dose_per_tilt=sc.dose_per_tilt_e_A2,
                       metadata_wait_s=sc.metadata_wait_s, mdoc_quiet_s=sc.mdoc_quiet_s,
                       series_idle_timeout_s=sc.idle_timeout_s,
                       exposure_filtered=self.exposure_filtered)
        try:
            self._stored_mdocs = service.ledger.mdoc_states()
            for name, d in service.ledger.series_states().items():
                self._states[name] = _state_from(name, d)
                self._stacks[name] = dict(d.get("stacks") or {})
                self._info[name] = {k: d.get(k) for k in _INFO_KEYS}
        except Exception as exc:  # noqa: BLE001 - an unreadable state only costs a re-assembly
            self._log.error("series_state_unreadable", error=f"{type(exc).__name__}: {exc}")

    def busy(self) -> bool:
        """An assembly is running (the service must not exit as idle)."""
        return bool(self._assembling)

    def _now(self) -> float:
        return self._service._wall()  # noqa: SLF001

    def _once_log(self, level: str, event: str, subject: str, reason: str, **kw: Any) -> None:
        if (subject, reason) in self._once:
            return
        self._once.add((subject, reason))
        getattr(self._log, level)(event, reason=reason, **kw)

    def _emit(self, kind: str, name: str, stacks: Mapping[str, str] | None = None) -> None:
        summary = self._res.series.get(name) if self._res is not None else None
        n_done = n_failed = 0
        for row in self._rows.values():
            if (row.metadata.get("log_context") or {}).get("series") != name:
                continue
            n_done += row.status == "done"
            n_failed += row.status in ("failed", "quarantined")
        n_expected = dose = None
        mdoc = None
        if summary is not None:
            if summary.match_source == "series_mdoc":
                n_expected = len(summary.tilts)
                mdoc = summary.mdoc_path
            doses = [d for _, _, d in summary.tilts]
            dose = sum(doses) if doses and all(d is not None for d in doses) else None
        self._service.notify_series(SeriesEvent(kind, name, n_expected, n_done, n_failed, dose,
                                                mdoc, dict(stacks or {})))

    def _refresh_rows(self) -> None:
        """Newest ledger row per movie path (real movies only)."""
        latest: dict[str, Any] = {}
        for row in self._service.ledger.rows():  # by mtime, then insertion: the last is newest
            if row.key.size >= 0:
                latest[row.key.path] = row
        self._rows = latest

    # --- MetadataResolver -----------------------------------------------------------------
    def observe(self, scan: ScanResult) -> Iterable[Path] | None:
        if self._service is None or self.mode == "off":
            return None
        now = self._now()
        self._poll_assemblies()
        self._read_mdocs(scan, now)
        movies = {str(o.path): o for o in scan.observations if o.kind == "movie"}
        for p in movies:
            self._first_seen.setdefault(p, now)
        stacks = {k[:-5] for k, m in self._mdocs.items() if m.parsed.kind in ("tilt_series", "empty")}
        self._stack_files = {p for p in movies if p in stacks}  # TS_01.mrc beside TS_01.mrc.mdoc
        if not self._active and any(m.parsed.kind == "tilt_series" for m in self._mdocs.values()):
            self._active = True
            self._log.info("tilt_series_on", note="a tilt-series mdoc was seen: movies now wait "
                           "for their metadata and get their series' pre-exposure")
        if not self._active:
            return None
        self._refresh_rows()
        observations: dict[str, MovieObservation] = {}
        for path, row in self._rows.items():
            if path in self._stack_files:
                continue
            name = Path(path).name
            observations[name] = MovieObservation(name, row.first_seen, row.key.mtime_ns)
        for path, o in movies.items():
            if path in self._stack_files:
                continue
            name = o.path.name
            first = self._first_seen[path]
            if name in observations:
                first = min(first, observations[name].first_seen_s)
            observations[name] = MovieObservation(name, first, o.mtime_ns)
        series_obs, frame_map, _ = classify_mdocs(
            [MdocObservation(m.parsed, m.unchanged_since_s) for m in self._mdocs.values()])
        res = resolve(list(observations.values()), series_obs, frame_map,
                      config=self.series_config, now_s=now)
        self._res = res
        for path, why in res.ignored_mdocs.items():
            self._once_log("info", "mdoc_ignored", path, why, mdoc=path)
        for w in res.warnings:
            self._once_log("warning", "series_warning", "", w)

        changed = self._redo_check(movies, res)
        self._advance_series(res, movies, changed, now)
        return [Path(p) for p in changed]

    def resolve(self, movie: Observation, params: Any) -> MovieMetadata:
        if not self._active or self._res is None:
            return MovieMetadata()
        name = movie.path.name
        if str(movie.path) in self._stack_files:
            return self._ignore_stack(movie)
        res = self._res
        if name in res.pending:
            return MovieMetadata(wait_reason=res.pending[name])
        a = res.assignments.get(name)
        if a is None:
            if name in res.standalone:
                return MovieMetadata(log_context={"series": None})
            return MovieMetadata(wait_reason="not resolved yet (seen after this scan's metadata)")
        n_frames = None
        if a.frame_doses_e_A2 is not None:
            from correction.io.complete import check_complete

            c = check_complete(movie.path)
            n_frames = c.n_frames if c.complete else None
        dose = a.dose_params(voltage_kV=params.dose.voltage_kV, n_frames=n_frames)
        for w in a.warnings:
            self._once_log("warning", "movie_metadata_warning", str(movie.path), w,
                           movie=str(movie.path), series=a.series)
        if a.match_source == "filename":
            self._once_log("warning", "movie_metadata_fallback", str(movie.path),
                           f"no mdoc section or frame mdoc within "
                           f"{self.series_config.metadata_wait_s:g} s: series and angle from the "
                           f"file name, dose {a.dose_e_A2:g} e/Å² ({a.dose_source})",
                           movie=str(movie.path), series=a.series)
        return MovieMetadata(dose=dose, extra_record={"tilt": a.record()},
                             log_context={"series": a.series, "tilt_deg": a.tilt_deg})

    def _ignore_stack(self, movie: Observation) -> MovieMetadata:
        """A SerialEM stack beside its series mdoc is not a movie: ignored (not waiting, so
        ``--exit-when-idle`` still fires in a tilt-series folder). While its ``.openTS`` lock is
        present SerialEM is still appending tilts, and it waits."""
        if any(lock.exists() for lock in lock_paths(Path(str(movie.path) + ".mdoc"),
                                                     movie.path.stem)):
            return MovieMetadata(wait_reason=_STACK_REASON + " (being written: .openTS lock)")
        return MovieMetadata(ignore_reason=_STACK_REASON)

    # --- steps ----------------------------------------------------------------------------
    def _read_mdocs(self, scan: ScanResult, now: float) -> None:
        ledger = self._service.ledger
        seen = set()
        for o in scan.observations:
            if o.kind != "metadata" or not o.path.name.lower().endswith(".mdoc"):
                continue
            key = str(o.path)
            seen.add(key)
            prev = self._mdocs.get(key)
            if prev is not None and (prev.size, prev.mtime_ns) == (o.size, o.mtime_ns):
                continue
            try:
                md = read_mdoc(o.path)
            except OSError as exc:
                self._once_log("warning", "mdoc_unreadable", key, exc.strerror or str(exc),
                               mdoc=key, note="the last content read is kept")
                continue
            stored = self._stored_mdocs.get(key)
            if prev is not None and prev.parsed.sha256 == md.sha256:
                since = prev.unchanged_since_s
            elif prev is None and stored is not None and stored["sha256"] == md.sha256:
                since = float(stored["unchanged_since"])
            else:
                since = now
            self._mdocs[key] = _Mdoc(o.size, o.mtime_ns, md, since)
            try:
                ledger.set_mdoc_state(key, sha256=md.sha256, size=o.size, mtime_ns=o.mtime_ns,
                                      kind=md.kind, unchanged_since=since)
            except Exception as exc:  # noqa: BLE001 - sqlite trouble: the quiet time restarts
                self._once_log("error", "ledger_write_failed", key, str(exc))
            for w in md.warnings:
                self._once_log("warning", "mdoc_warning", key, w, mdoc=key)
            for s in md.sections:
                if s.complete:
                    for w in s.warnings:
                        self._once_log("warning", "mdoc_warning", key, w, mdoc=key)
        if scan.errors:
            return  # a folder could not be listed: absent mdocs may only be hidden
        for key in [k for k in self._mdocs if k not in seen]:
            del self._mdocs[key]
            self._log.warning("mdoc_vanished", mdoc=key,
                              note="its tilts are resolved without it from now on")
            try:
                ledger.forget_mdoc(key)
            except Exception:  # noqa: BLE001
                pass

    def _recorded_tilt(self, row: Any) -> dict[str, Any] | None:
        tilt = (row.metadata.get("extra_record") or {}).get("tilt")
        if tilt is None:  # adopted outputs: the row has no metadata, the motion record has it
            record = self._motion_record(row)
            tilt = record.get("tilt") if record else None
        return tilt

    @staticmethod
    def _motion_record(row: Any) -> dict[str, Any] | None:
        path = (row.outputs or {}).get("motion")
        if not path:
            return None
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _redo_check(self, movies: Mapping[str, Observation], res: Resolution) -> list[str]:
        changed = []
        for path, o in movies.items():
            row = self._rows.get(path)
            if row is None or row.status != "done" or (row.key.size, row.key.mtime_ns) != (
                    o.size, o.mtime_ns):
                continue
            a = res.assignments.get(o.path.name)
            if a is None:
                continue
            reason = assignment_change(self._recorded_tilt(row), a,
                                       tolerance_e_A2=self.series_config.change_tolerance_e_A2)
            if reason:
                self._once_log("warning", "movie_redo_metadata_changed", path, reason,
                               movie=path, series=a.series,
                               note="its metadata changed after correction: redone with the "
                                    "new dose and pre-exposure")
                changed.append(path)
        return changed

    def _advance_series(self, res: Resolution, movies: Mapping[str, Observation],
                        changed: list[str], now: float) -> None:
        by_name = {Path(p).name: p for p in movies}
        by_name.update({Path(p).name: p for p in self._rows if Path(p).name not in by_name})
        changed_names = {Path(p).name for p in changed}
        for name, summary in res.series.items():
            state = self._states.get(name)
            if state is None:
                state = SeriesState(name)
                self._states[name] = state
                self._persist(name, state)
                self._log.info("series_started", series=name, source=summary.match_source,
                               mdoc=summary.mdoc_path)
                self._emit("started", name)
            if name in self._assembling:
                continue
            known = {m for m, a in res.assignments.items() if a.series == name}
            known |= {m for m in summary.listed_movies if m in by_name}
            finished = {m for m in known | summary.listed_movies
                        if m in by_name and m not in changed_names
                        and (row := self._rows.get(by_name[m])) is not None
                        and row.status in _FINISHED}
            lock = False
            mdoc_since = None
            folder_of = Path(by_name[sorted(known)[0]]) if known else None
            if summary.mdoc_path is not None:
                mpath = Path(summary.mdoc_path)
                lock = any(p.exists() for p in lock_paths(mpath, name))
                m = self._mdocs.get(summary.mdoc_path)
                mdoc_since = m.unchanged_since_s if m is not None else None
                folder_of = mpath
            self._update_info(name, state, summary, folder_of)
            times = [self._first_seen.get(by_name[m], 0.0) for m in known if m in by_name]
            times += [r.first_seen for m in known if (r := self._rows.get(by_name.get(m, "")))]
            if mdoc_since is not None:
                times.append(mdoc_since)
            obs = SeriesObservation(frozenset(summary.listed_movies), frozenset(known),
                                    frozenset(finished), lock, mdoc_since,
                                    max(times) if times else now)
            if state.status == "complete" and changed_names & state.assembled_movies:
                new, assemble = replace(state, status="open", reason="re-opened: metadata of "
                                        f"{sorted(changed_names & state.assembled_movies)[0]} "
                                        "changed"), False
            else:
                new, assemble = update_series_state(state, obs, now_s=now,
                                                    config=self.series_config)
            if state.status == "complete" and new.status == "open":
                self._log.info("series_reopened", series=name, reason=new.reason)
                self._states[name] = new
                self._persist(name, new)
                self._emit("reopened", name)
                continue
            if assemble and folder_of is not None and self._service.config is not None:
                self._submit(name, new, summary, by_name, folder_of)
                continue
            if new != state:
                self._states[name] = new
                self._persist(name, new)

    def _update_info(self, name: str, state: SeriesState, summary: SeriesSummary,
                     folder_of: Path | None) -> None:
        """Record what ``motionwatch status`` shows of a series (written only when it changes)."""
        cfg = self._service.config
        folder = None
        if folder_of is not None and cfg is not None:
            folder = str(output_dir_for(folder_of, watch_dir=cfg.watch_dir,
                                        out_dir=cfg.out_dir) / name)
        info = {"expected_tilts": len(summary.tilts) if summary.match_source == "series_mdoc"
                else None, "mdoc": summary.mdoc_path, "folder": folder}
        if self._info.get(name) != info:
            self._info[name] = info
            self._persist(name, state)

    def _persist(self, name: str, state: SeriesState) -> None:
        try:
            self._service.ledger.set_series_state(
                name, _state_dict(state, self._stacks.get(name), self._info.get(name)))
        except Exception as exc:  # noqa: BLE001
            self._once_log("error", "ledger_write_failed", name, str(exc))

    def _submit(self, name: str, state: SeriesState, summary: SeriesSummary,
                by_name: Mapping[str, str], folder_of: Path) -> None:
        cfg = self._service.config
        tilts = []
        for m in sorted(state.assembled_movies):
            row = self._rows.get(by_name.get(m, ""))
            if row is None or row.status != "done":
                continue  # quarantined tilts are left out of the stacks
            tilt = self._recorded_tilt(row)
            outputs = {k: v for k, v in row.outputs.items() if k in ("sum", "dw", "even", "odd")}
            if not tilt or tilt.get("tilt_deg") is None or "sum" not in outputs:
                self._log.warning("series_tilt_left_out", series=name, movie=row.key.path,
                                  reason="no tilt angle or no sum image recorded")
                continue
            drift = (row.summary.get("drift") or {}).get("total_A")
            if drift is None:
                drift = ((self._motion_record(row) or {}).get("drift") or {}).get("total_A")
            tilts.append({
                "movie": m, "tilt_deg": float(tilt["tilt_deg"]),
                "acquisition_index": int(tilt["acquisition_index"]),
                "dose_e_A2": float(tilt["dose_e_A2"]),
                "pre_exposure_e_A2": float(tilt["pre_exposure_e_A2"]),
                "dose_source": str(tilt.get("dose_source", "")),
                "order_source": str(tilt.get("order_source", "")), "outputs": outputs,
                "drift_total_A": None if drift is None else float(drift),
                "prior_record_dose_difference_e_A2": tilt.get("prior_record_dose_difference_e_A2"),
                "acquired_at": tilt.get("acquired_at")})
        if not tilts:
            self._states[name] = state
            self._persist(name, state)
            self._log.warning("series_not_assembled", series=name, reason="no corrected tilt")
            return
        out = output_dir_for(folder_of, watch_dir=cfg.watch_dir, out_dir=cfg.out_dir)
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_signals)
        future = self._executor.submit(_assemble_job, name, tilts, str(out),
                                       cfg.params.dose.voltage_kV, self.exposure_filtered)
        self._assembling[name] = (future, state, str(out / name))
        self._log.info("series_assembling", series=name, tilts=len(tilts), reason=state.reason,
                       folder=str(out / name))

    def _poll_assemblies(self) -> None:
        for name, (future, state, folder) in list(self._assembling.items()):
            if not future.done():
                continue
            del self._assembling[name]
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - recorded; the series re-opens on new movies
                self._states[name] = replace(state, reason=f"assembly failed: {exc}")
                self._persist(name, self._states[name])
                self._log.error("series_assembly_failed", series=name, folder=folder,
                                error=f"{type(exc).__name__}: {exc}")
                continue
            self._stacks[name] = result["stacks"]
            self._states[name] = state
            self._persist(name, state)
            for w in result["warnings"]:
                self._log.warning("series_warning", series=name, reason=w)
            self._log.info("series_completed", series=name, folder=result["folder"],
                           tilts=len(result["order"]), reason=state.reason,
                           stacks=result["stacks"])
            self._emit("completed", name, result["stacks"])

    # --- ServiceObserver ------------------------------------------------------------------
    def _movie_event(self, event: MovieEvent) -> None:
        name = (event.metadata.get("log_context") or {}).get("series")
        if not name or self._service is None:
            return
        self._refresh_rows()
        self._emit("updated", name)

    def on_movie_done(self, event: MovieEvent) -> None:
        self._movie_event(event)

    def on_movie_failed(self, event: MovieEvent) -> None:
        self._movie_event(event)

    def on_heartbeat(self, beat: Any) -> None:
        if self._service is not None:
            self._poll_assemblies()

    def on_stopped(self, exit_status: int) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
