"""The contract of the service's parts: the values that flow between them and the two seams.

Every part of :mod:`daemon` imports this module; it imports none of them (only the standard
library), so no arrow can run back up. It holds

* what a scan sees (:class:`Observation`, :class:`ScanResult`) and a movie's identity in the state
  database (:class:`MovieKey`);
* the **metadata seam**: :class:`MetadataResolver` (tilt series and dose bookkeeping plug in
  here), what it returns (:class:`MovieMetadata`) and the narrow :class:`ResolverContext` it is
  given (never the service itself);
* the **listener seam**: :class:`ServiceListener` and the events it receives
  (:class:`ServiceInfo`, :class:`MovieEvent`, :class:`SeriesEvent`, :class:`Heartbeat`,
  :class:`Health`);
* where a movie's outputs go (:func:`output_dir_for`), the key of the motion record that names
  the movie version (:data:`SOURCE_KEY`), and the error that marks a movie whose file vanished
  before correction (:data:`VANISHED`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol


__all__ = [
    "Observation", "ScanResult", "MovieKey", "MovieMetadata", "MetadataResolver", "NoMetadata",
    "ResolverContext", "SeriesStore", "ServiceListener", "ServiceInfo", "MovieEvent",
    "SeriesEvent", "SeriesEventKind", "Heartbeat", "Health", "SOURCE_KEY", "VANISHED",
    "output_dir_for", "MovieGain", "movie_params", "movie_fingerprint",
    "gain_in_force", "frame_mdoc_gains_apply",
]

#: motion-record key naming the movie version and parameters an output set was made from
SOURCE_KEY = "source_file"

#: the error of a movie quarantined because its file was gone when a worker was to take it (a
#: renamed movie met again under its new name is corrected under it)
VANISHED = "movie file vanished before correction"

SeriesEventKind = Literal["started", "updated", "completed", "reopened", "assembly_failed",
                          "warning"]


# ------------------------------------------------------------------------------------------
# what flows: files seen, movie identities


@dataclass(frozen=True, slots=True)
class Observation:
    """One file as one scan saw it.

    Attributes
    ----------
    path : Path
        Absolute path of the file.
    size : int
        Size in bytes.
    mtime_ns : int
        Modification time as the file system reports it (ns since the epoch, the writer's clock).
    kind : str
        ``"movie"`` or ``"metadata"``.
    inode : (int, int) or None
        ``(st_dev, st_ino)`` of the file (None when the file system gives no inode number): with
        size and mtime it recognises one file under another name (a link, a renamed folder).
    """

    path: Path
    size: int
    mtime_ns: int
    kind: str = "movie"
    inode: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One pass over the watched tree.

    Attributes
    ----------
    observations : tuple of Observation
        Regular files matching the movie or metadata patterns.
    skipped : tuple of (Path, str)
        Entries that look like movies but cannot be one (a directory named ``x.mrc``, a file
        that cannot be stat'ed), with the reason.
    errors : tuple of (Path, str)
        Folders that could not be listed (permission, vanished), with the reason.
    """

    observations: tuple[Observation, ...] = ()
    skipped: tuple[tuple[Path, str], ...] = ()
    errors: tuple[tuple[Path, str], ...] = ()


@dataclass(frozen=True, slots=True)
class MovieKey:
    """Identity of one movie version under one set of parameters (a row of the state database).

    ``fingerprint`` is :meth:`correction.params.CorrectionParams.fingerprint` of the parameters
    the movie is corrected with (its own dose and gain included: :func:`movie_fingerprint`).
    """

    path: str
    size: int
    mtime_ns: int
    fingerprint: str


def output_dir_for(movie: Path, *, watch_dir: Path, out_dir: Path) -> Path:
    """Outputs mirror the movie's sub-folder below the watch folder."""
    try:
        rel = Path(movie).parent.relative_to(watch_dir)
    except ValueError:
        rel = Path()
    return out_dir / rel


@dataclass(frozen=True, slots=True)
class MovieGain:
    """A movie's own gain reference: the file its SerialEM frame mdoc names (``GainReference``),
    found beside it, and the turn that fits it onto the movie's frames (MotionCor2's
    ``-RotGain``/``-FlipGain``, as ``correction.params.GainParams``), with the camera defect
    list the frame mdoc names beside it (``DefectFile``; already in the frames' orientation).
    Used when no gain is configured (:mod:`daemon.intake.frame_gain`).
    """

    path: str
    rotate_quarter_turns: int = 0
    flip: str = "none"
    defects: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "rotate_quarter_turns": self.rotate_quarter_turns,
                "flip": self.flip, **({"defects": self.defects} if self.defects else {})}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> MovieGain | None:
        """Inverse of :meth:`to_json`; None for None (a row without a gain of its own)."""
        if not d:
            return None
        defects = d.get("defects")
        return cls(str(d["path"]), int(d.get("rotate_quarter_turns", 0)),
                   str(d.get("flip", "none")), None if defects is None else str(defects))

    def files(self) -> tuple[str, ...]:
        """The files it names: the gain reference, then the defect list (when named)."""
        return (self.path,) + ((self.defects,) if self.defects else ())

    def onto(self, gain_params: Any) -> Any:
        """``gain_params`` (a ``correction.params.GainParams``) with this file and its turn, and
        its defect list unless one is configured (``--defects`` wins, as ``--gain``)."""
        defects = gain_params.defects_path
        if defects is None and self.defects:
            defects = Path(self.defects)
        return replace(gain_params, gain_path=Path(self.path), defects_path=defects,
                       rotate_quarter_turns=self.rotate_quarter_turns, flip=self.flip)

    def identity(self) -> MovieGain:
        """This gain as a movie's key knows it: its file names and turn, not their folder (a
        session folder renamed or moved keeps its movies' keys; SerialEM names each copy of a
        reference after the first movie saved with it)."""
        return MovieGain(Path(self.path).name, self.rotate_quarter_turns, self.flip,
                         Path(self.defects).name if self.defects else None)


def movie_params(params: Any, dose: Any = None, gain: MovieGain | None = None) -> Any:
    """The parameters one movie is corrected under: the configured ``params`` (a
    ``correction.params.CorrectionParams``) with the movie's own dose and gain reference where
    it has them (None: the configured ones)."""
    if dose is not None:
        params = replace(params, dose=dose)
    if gain is not None:
        params = replace(params, gain=gain.onto(params.gain))
    return params


def frame_mdoc_gains_apply(params: Any, frame_mdoc_gain: bool = True) -> bool:
    """Whether movies get the gain reference their frame mdoc names: ``frame_mdoc_gain`` on,
    and neither a gain nor a dark reference configured (a configured dark belongs with a
    configured gain and its turn)."""
    return bool(frame_mdoc_gain) and params.gain.gain_path is None \
        and params.gain.dark_path is None


def gain_in_force(gain: MovieGain | None, params: Any, frame_mdoc_gain: bool = True
                  ) -> MovieGain | None:
    """A movie's stored own gain where the settings let it stand
    (:func:`frame_mdoc_gains_apply`); else None: a movie admitted under other settings is
    keyed, and corrected, under these."""
    return gain if gain is not None and frame_mdoc_gains_apply(params, frame_mdoc_gain) \
        else None


def movie_fingerprint(params: Any, dose: Any = None, gain: MovieGain | None = None) -> str:
    """The fingerprint of a movie's key (:class:`MovieKey`): that of :func:`movie_params`, its
    own gain known by :meth:`MovieGain.identity`."""
    return movie_params(params, dose, None if gain is None else gain.identity()).fingerprint()


# ------------------------------------------------------------------------------------------
# the metadata seam


@dataclass(frozen=True, slots=True)
class MovieMetadata:
    """Per-movie facts resolved after validation, before the movie enters the state database.

    Attributes
    ----------
    dose : DoseParams or None
        Replaces the configured dose for this movie (pre-exposure, per-frame doses); None keeps it.
    extra_record : dict
        Merged into the movie's motion record (``tilt`` ...).
    log_context : dict
        Bound to every log event of the movie (``series=...``).
    wait_reason : str or None
        Not resolvable yet (e.g. its mdoc section is not written): the movie waits and is
        offered again at the next scan.
    ignore_reason : str or None
        Not a movie to correct (e.g. SerialEM's own tilt-series stack): logged once as
        ``movie_ignored``, never recorded or corrected, and not counted as waiting.
    expected_frames : int or None
        Frames the metadata says the movie has (an mdoc's ``NumSubFrames``; raw frames for
        EER): a movie with fewer waits, up to the incomplete grace, for the rest.
    redo_reason : str or None
        Why the movie's record no longer matches this metadata (the resolver's
        ``movie_redo_metadata_changed``): a corrected version of it is corrected again under
        this metadata even when its key did not change (a filename fallback's dose equal to
        the mdoc's that came later: only the tilt record moved).
    quarantine_reason : str or None
        The metadata will not come (a tilt whose series went idle without a dose for it): the
        movie is quarantined with this reason, not corrected; the resolver redoes it if the
        metadata comes after all.
    gain : MovieGain or None
        The movie's own gain reference (its frame mdoc's; admission sets it, not the
        resolver); None: the configured one.
    """

    dose: Any = None
    extra_record: Mapping[str, Any] = field(default_factory=dict)
    log_context: Mapping[str, Any] = field(default_factory=dict)
    wait_reason: str | None = None
    ignore_reason: str | None = None
    expected_frames: int | None = None
    redo_reason: str | None = None
    quarantine_reason: str | None = None
    gain: MovieGain | None = None


class SeriesStore(Protocol):
    """The part of the state database a metadata resolver may use."""

    def rows(self, *, status: str | None = None, path: str | None = None) -> list[Any]: ...
    def newest_rows(self) -> Mapping[str, Any]: ...
    def mdoc_states(self) -> dict[str, dict[str, Any]]: ...
    def set_mdoc_state(self, path: str, *, sha256: str, size: int, mtime_ns: int, kind: str,
                       unchanged_since: float) -> None: ...
    def forget_mdoc(self, path: str) -> None: ...
    def series_states(self) -> dict[str, dict[str, Any]]: ...
    def set_series_state(self, name: str, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class ResolverContext:
    """What a :class:`MetadataResolver` is given when the service starts (and nothing more).

    Attributes
    ----------
    store : SeriesStore
        Movie rows, mdoc and series state.
    now : callable
        Wall clock (s since the epoch).
    log : structlog-like logger
    watch_dir, out_dir : Path
        Where movies are found and where their outputs go (:func:`output_dir_for`).
    voltage_kV : float or None
        ``--voltage`` (kV) when given, else None: each movie's voltage comes from its metadata
        (:mod:`daemon.settings.voltage`), and a series is assembled at its tilts' voltage.
    emit : callable
        Hands a :class:`SeriesEvent` to the service; it reaches the listeners after the current
        step (never from inside the resolver's call).
    run_job : callable
        ``run_job(function, *args) -> concurrent.futures.Future``: runs a picklable function in
        a worker process (series assembly).
    """

    store: SeriesStore
    now: Callable[[], float]
    log: Any
    watch_dir: Path
    out_dir: Path
    voltage_kV: float | None
    emit: Callable[[SeriesEvent], None]
    run_job: Callable[..., Any]


class MetadataResolver(Protocol):
    """Resolves per-movie metadata (the tilt-series dose ledger plugs in here).

    Called from the service's main thread, in this order: :meth:`start` once the state database
    is open; per scan :meth:`observe`, then :meth:`resolve` for each settled, validated movie;
    :meth:`movie_finished` after a movie is recorded done or failed; :meth:`poll` every
    heartbeat; :meth:`stop` once.
    """

    def start(self, context: ResolverContext) -> None:
        """Read persisted state; keep ``context`` for later calls."""

    def observe(self, scan: ScanResult) -> Iterable[Path] | None:
        """See every scan (metadata files such as series ``.mdoc`` included).

        Returns the movies whose metadata may have changed (a series mdoc rewritten): they are
        resolved again at this scan, and a changed dose makes a new key, so a redo.
        """

    def resolve(self, movie: Observation, params: Any, *, n_frames: int | None) -> MovieMetadata:
        """Metadata of one complete movie; ``params`` are the configured CorrectionParams,
        ``n_frames`` the frame count validation found (None when unknown)."""

    def movie_finished(self, event: MovieEvent) -> None:
        """A movie was recorded done, failed or quarantined."""

    def poll(self) -> None:
        """Collect finished background work (series assembly)."""

    def busy(self) -> bool:
        """Background work is running (the service must not exit as idle)."""

    def end_of_run(self) -> bool:
        """The service is idle and would exit (``--exit-when-idle``): finish what waits only
        for time to pass (an open tilt series is assembled with the tilts it has). True when
        that makes work (the service is not idle yet); called until it returns False."""

    def problem(self) -> str | None:
        """Trouble outside the service that holds the resolver's own work back (a series'
        stacks not written on a full disk, tried again), as a problem line; None when none.
        Read from any thread."""

    def quiet_s(self) -> float:
        """How long a metadata file must have stayed unchanged, over scans, before the resolver
        takes it as final (s; 0 when it takes none so): discovery lists such a file's folder
        afresh at every scan for at least this long after it last changed."""

    def stop(self) -> None:
        """The service stops: cancel background work."""


class NoMetadata:
    """The default resolver: every movie gets the configured parameters."""

    def start(self, context: ResolverContext) -> None:
        return None

    def observe(self, scan: ScanResult) -> Iterable[Path] | None:
        return None

    def resolve(self, movie: Observation, params: Any, *, n_frames: int | None) -> MovieMetadata:
        return MovieMetadata()

    def movie_finished(self, event: MovieEvent) -> None:
        return None

    def poll(self) -> None:
        return None

    def quiet_s(self) -> float:
        return 0.0

    def busy(self) -> bool:
        return False

    def end_of_run(self) -> bool:
        return False

    def problem(self) -> str | None:
        return None

    def stop(self) -> None:
        return None


# ------------------------------------------------------------------------------------------
# the listener seam


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What the service runs with, given to listeners once ready: the folders (absolute), the
    gain reference's parameters (``correction.params.GainParams``; None without a gain file),
    the process and how discovery watches; ``gain_settings``: the configured gain parameters
    whether or not they name a gain file (the EER gain rule, a defect list), which a movie's own
    gain (its frame mdoc's) is corrected under (None: the defaults)."""

    watch_dir: Path
    out_dir: Path
    state_dir: Path
    gain: Any
    pid: int
    discovery_mode: str
    discovery_reason: str
    recovered: int
    gain_settings: Any = None


@dataclass(frozen=True, slots=True)
class MovieEvent:
    """A movie finished (``status`` done) or failed (``failed``: will retry; ``quarantined``).

    A done movie with ``attempt`` 0 was not corrected now: its complete outputs were found on
    disk and adopted (e.g. after the state database was lost)."""

    path: Path
    key: MovieKey
    status: str
    attempt: int
    outputs: Mapping[str, str] = field(default_factory=dict)
    record: Mapping[str, Any] = field(default_factory=dict)
    timings_s: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Health:
    """Whether the service works (what an sd_notify watchdog ping should depend on)."""

    ok: bool
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Periodic state, every ``heartbeat_s``."""

    wall_time_s: float
    uptime_s: float
    counts: Mapping[str, int]
    waiting: int
    in_flight: tuple[str, ...]
    discovery_mode: str
    health: Health
    cluster: Mapping[str, Any] | None = None  # a distributed executor's state (None: local)
    # movies acquired vs corrected per minute and whether the service keeps up
    # (daemon.engine.pace.Pace.to_record); None before the first heartbeat that measures it
    pace: Mapping[str, Any] | None = None
    # of ``in_flight``, the movies no worker has started yet (a distributed executor's queue:
    # waiting for a worker, a SLURM job); empty for the local pool, which starts what it takes
    queued: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SeriesEvent:
    """A tilt series changed state.

    Attributes
    ----------
    kind : {"started", "updated", "completed", "reopened", "assembly_failed", "warning"}
        First seen; one of its movies done or failed; stacks assembled; movies arrived (or were
        redone) after completion; its stacks could not be written (``reason`` says why); its
        assembly has something to say (``reason``: a tilt left out of the stacks ...), sent
        before its ``completed``.
    series : str
        Series name (the series mdoc's name without ``.mdoc``, or the file-name pattern's group).
    n_expected : int or None
        Tilts listed in its mdoc (None when known only from file names).
    n_done, n_failed : int
        Its movies corrected, and failed or quarantined.
    accumulated_dose_e_A2 : float or None
        Dose of all its listed tilts (e/A^2), None when unknown.
    mdoc : str or None
        Path of the series mdoc.
    stacks : dict
        Assembled outputs by name (paths; on ``completed``).
    reason : str or None
        Why (``assembly_failed``, ``warning``).
    tilts : tuple of str
        On ``completed``: the movies its stacks were assembled from (names below the watch
        folder); its STAR lists those only (a retaken tilt's discarded movie, still recorded
        as its tilt until it is redone on its own, is not one of them).
    """

    kind: SeriesEventKind
    series: str
    n_expected: int | None
    n_done: int
    n_failed: int
    accumulated_dose_e_A2: float | None = None
    mdoc: str | None = None
    stacks: Mapping[str, str] = field(default_factory=dict)
    reason: str | None = None
    tilts: tuple[str, ...] = ()


class ServiceListener:
    """Receives service events; subclass and override what you need (all no-ops here).

    Called from the service's main thread; keep each call short and non-blocking. An exception
    is logged and does not stop the service.
    """

    def on_ready(self, info: ServiceInfo) -> None:
        """The ledger is open, recovery done, the first scan made (sd_notify READY=1)."""

    def on_movie_done(self, event: MovieEvent) -> None:
        """A movie's outputs are in place and the ledger says done."""

    def on_movie_failed(self, event: MovieEvent) -> None:
        """A movie failed (``event.status`` is ``failed`` or ``quarantined``)."""

    def on_movie_moved(self, event: MovieEvent) -> None:
        """A recorded movie was renamed (its folder or itself): ``event.path`` and ``key`` are
        its new name, ``event.metadata`` its row's (series renamed, ``moved_from``), ``status``
        and ``outputs`` as recorded (the outputs keep the names they were written under)."""

    def on_series_event(self, event: SeriesEvent) -> None:
        """A tilt series started, progressed, completed (stacks written) or re-opened."""

    def on_heartbeat(self, beat: Heartbeat) -> None:
        """Periodic state (sd_notify WATCHDOG=1 when ``beat.health.ok``; STATUS=...)."""

    def on_stopping(self, reason: str) -> None:
        """Shutdown began (sd_notify STOPPING=1)."""

    def on_stopped(self, exit_status: int) -> None:
        """The service has stopped; the last call."""
