"""Live drift statistics over ZeroMQ: message schema, the publisher thread, a subscriber helper.

The daemon's only ``zmq`` importer. :class:`Publisher` owns one XPUB socket in one dedicated
thread; the rest of the daemon calls its methods (:meth:`~Publisher.movie`,
:meth:`~Publisher.series`, :meth:`~Publisher.heartbeat`, :meth:`~Publisher.error`,
:meth:`~Publisher.warning`) from any thread. They put a message on a bounded in-memory queue and
return at once: when the queue is full the *oldest* queued message is dropped and counted, so
no subscriber (none, slow, stuck or dead) can slow or block correction. The socket sends with
``NOBLOCK``; a subscriber that does not read loses messages past the high-water mark
(``send_hwm``), which it sees as a gap in ``seq``.

Wire format
    Multipart ``[topic, body]``: ``topic`` is ASCII (``movie``, ``series``, ``heartbeat``,
    ``error``, ``warning``, ``state``), ``body`` is UTF-8 JSON, an object that always carries
    ``schema`` (``"motionwatch/1"``), ``seq`` (one counter across all topics, from 1 per
    session), ``time`` (ISO 8601 UTC of the event), ``host`` and ``session`` (a UUID per daemon
    run). A subscriber to every topic sees consecutive ``seq``; a jump means messages were lost
    (queue overflow or high-water mark), a new ``session`` means the daemon restarted. The full
    schema, with real examples, is in ``docs/zmq.md``.

Late joiners
    The socket is an XPUB with ``XPUB_VERBOSE``: every subscription reaches the publisher thread.
    When one arrives that covers the ``state`` topic (a subscription to ``""``, ``"s"``, ...,
    ``"state"``), the thread sends a ``state`` message: the open tilt series with their tilts
    so far, the last few completed series, recent loose movies, warnings and errors, and the last
    heartbeat. ``state`` is a full replacement; every subscriber of ``state`` receives it, at
    any time, and should treat it idempotently (tilts are keyed by ``path``).

Security
    The default endpoint is ``tcp://127.0.0.1:5557``. ``ipc://`` and ``inproc://`` endpoints and
    TCP on a loopback address are local. Any other endpoint (``tcp://*:5557``, an interface name,
    a routable address, another transport) is refused unless ``allow_remote`` is set: exposing
    the feed is an explicit choice. CURVE encryption and authentication (``zmq.auth``) are
    available for any endpoint: ``curve_secret_key`` is the server certificate (written by
    ``zmq.auth.create_certificates``), ``curve_authorized_keys`` a folder of the public
    certificates of allowed clients (without it, any client that knows the server's public key
    may connect; traffic is still encrypted).
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from correction.write import plain

from daemon import __version__
from daemon.series.tilt_record import TiltRecord

__all__ = [
    "SCHEMA",
    "DEFAULT_ENDPOINT",
    "TOPICS",
    "SERIES_EVENTS",
    "DriftRules",
    "PublishConfig",
    "PublishConfigError",
    "PublishError",
    "TiltInfo",
    "PRIMARY_DOSE_SOURCES",
    "Publisher",
    "PublisherStats",
    "Subscriber",
    "endpoint_is_local",
    "movie_message",
    "movie_warnings",
    "tilt_summary",
]

SCHEMA = "motionwatch/1"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"
TOPICS = ("movie", "series", "heartbeat", "error", "warning", "state")
SERIES_EVENTS = ("started", "updated", "completed", "reopened")
SeriesEvent = Literal["started", "updated", "completed", "reopened"]

_LOOPBACK_NAMES = {"localhost", "lo", "ip6-localhost"}
_LOCAL_TRANSPORTS = ("ipc://", "inproc://")
_STATE_TOPIC = b"state"
_RECENT = 20  # warnings, errors and loose movies kept for the state message
_COMPLETED_KEPT = 4  # completed series kept (with their tilts) in the state message
_OPEN_SERIES_KEPT = 64
_FLUSH_INTERVAL_MS = 20  # the socket thread drains the queue this often (callers make no syscall)
_RESTORE = "restore:"  # queue topic prefix: applied to the state only (Publisher.restore)


class PublishConfigError(ValueError):
    """Invalid publishing configuration; ``problems`` lists each one (one line each)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


class PublishError(OSError):
    """The publisher could not start (e.g. the endpoint is in use); names the endpoint."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class DriftRules:
    """Thresholds above which a movie raises a ``warning`` (``None`` disables a rule).

    Attributes
    ----------
    max_total_drift_A : float or None
        Total drift of the movie (``drift.total_A`` of the motion record), Å.
    max_frame_jump_A : float or None
        Largest frame-to-frame displacement (``drift.max_frame_jump_A``), Å.
    max_early_drift_A : float or None
        Drift over the first frames (``drift.early_A``), Å.
    """

    max_total_drift_A: float | None = 40.0
    max_frame_jump_A: float | None = 10.0
    max_early_drift_A: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_total_drift_A", "max_frame_jump_A", "max_early_drift_A"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise PublishConfigError([f"{name} must be > 0 Å or None, got {value!r}"])

    def as_dict(self) -> dict[str, float | None]:
        return {"max_total_drift_A": self.max_total_drift_A,
                "max_frame_jump_A": self.max_frame_jump_A,
                "max_early_drift_A": self.max_early_drift_A}


def feed_endpoint(text: str) -> str:
    """An ``argparse`` type for the endpoint a subscriber connects to: ``transport://address``
    (one line naming the problem otherwise, e.g. ``127.0.0.1:5557`` without ``tcp://``)."""
    try:
        endpoint_is_local(text)
    except PublishConfigError as exc:
        raise argparse.ArgumentTypeError("; ".join(exc.problems)) from None
    return text


def endpoint_is_local(endpoint: str) -> bool:
    """True for ``ipc://``, ``inproc://`` and TCP on a loopback address or the ``lo`` interface.

    Raises
    ------
    PublishConfigError
        The endpoint is not ``transport://address`` or a TCP endpoint has no port.
    """
    if "://" not in endpoint:
        raise PublishConfigError([f"endpoint {endpoint!r} is not transport://address "
                                  f"(e.g. {DEFAULT_ENDPOINT} or ipc:///run/motionwatch/feed)"])
    if endpoint.startswith(_LOCAL_TRANSPORTS):
        return True
    if not endpoint.startswith("tcp://"):
        return False  # pgm, epgm, udp, ws, tipc, vmci ...: a network by nature
    address = endpoint[len("tcp://"):]
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port:
        raise PublishConfigError([f"endpoint {endpoint!r} has no port (tcp://HOST:PORT)"])
    if ";" in host:  # "source;destination" form (connect only); treat as remote
        return False
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name


@dataclass(frozen=True, slots=True)
class PublishConfig:
    """Where and how the daemon publishes.

    Attributes
    ----------
    endpoint : str
        ZeroMQ endpoint to bind (``tcp://HOST:PORT``, ``tcp://127.0.0.1:*`` for a free port,
        ``ipc:///path``).
    allow_remote : bool
        Must be true to bind anything but a local endpoint (see :func:`endpoint_is_local`).
    curve_secret_key : Path or None
        Server certificate file holding the secret key; enables CURVE.
    curve_authorized_keys : Path or None
        Folder of client public certificates allowed to connect (needs ``curve_secret_key``);
        None admits any client that has the server's public key.
    queue_size : int
        Messages held between the daemon and the socket thread; the oldest is dropped past it.
    send_hwm : int
        ZeroMQ send high-water mark per subscriber (messages).
    heartbeat_interval_s : float
        How often the service should call :meth:`Publisher.heartbeat` (s); sent in each
        heartbeat so subscribers can tell a late one.
    drift : DriftRules
        Thresholds of the drift warnings.
    max_tilts_per_series : int
        Tilts kept per series for the state message (the most recent).
    """

    endpoint: str = DEFAULT_ENDPOINT
    allow_remote: bool = False
    curve_secret_key: Path | None = None
    curve_authorized_keys: Path | None = None
    queue_size: int = 10_000
    send_hwm: int = 10_000
    heartbeat_interval_s: float = 5.0
    drift: DriftRules = field(default_factory=DriftRules)
    max_tilts_per_series: int = 400

    def __post_init__(self) -> None:
        problems: list[str] = []
        try:
            local = endpoint_is_local(self.endpoint)
        except PublishConfigError as exc:
            problems.extend(exc.problems)
        else:
            if not local and not self.allow_remote:
                problems.append(
                    f"publish endpoint {self.endpoint} is not a loopback or ipc:// address; "
                    "set publish_allow_remote = true to expose the feed on the network "
                    "(and consider CURVE: publish_curve_secret_key)")
        if self.curve_secret_key is not None and not Path(self.curve_secret_key).is_file():
            problems.append(f"publish_curve_secret_key {self.curve_secret_key}: no such file")
        if self.curve_authorized_keys is not None:
            if self.curve_secret_key is None:
                problems.append("publish_curve_authorized_keys needs publish_curve_secret_key")
            if not Path(self.curve_authorized_keys).is_dir():
                problems.append(f"publish_curve_authorized_keys {self.curve_authorized_keys}: "
                                "no such folder")
        if not (isinstance(self.queue_size, int) and self.queue_size >= 1):
            problems.append(f"publish_queue_size must be an integer >= 1, got {self.queue_size!r}")
        if not (isinstance(self.send_hwm, int) and self.send_hwm >= 1):
            problems.append(f"publish_send_hwm must be an integer >= 1, got {self.send_hwm!r}")
        if not (isinstance(self.heartbeat_interval_s, (int, float)) and self.heartbeat_interval_s > 0):
            problems.append(f"heartbeat_interval_s must be > 0 s, got {self.heartbeat_interval_s!r}")
        if not (isinstance(self.max_tilts_per_series, int) and self.max_tilts_per_series >= 1):
            problems.append(f"max_tilts_per_series must be >= 1, got {self.max_tilts_per_series!r}")
        if problems:
            raise PublishConfigError(problems)

    @property
    def curve_enabled(self) -> bool:
        return self.curve_secret_key is not None


# --------------------------------------------------------------------------- message bodies


PRIMARY_DOSE_SOURCES = frozenset({"ExposureDose", "FrameDosesAndNumber"})
"""Dose sources that are not a fallback (SerialEM mdoc keys giving the dose on the specimen)."""


@dataclass(frozen=True, slots=True)
class TiltInfo:
    """What the daemon knows about a movie beyond its motion record (from the series mdoc).

    Attributes
    ----------
    series : str or None
        Tilt-series name (None for a movie outside any series).
    tilt_deg : float or None
        Stage tilt angle, degrees.
    acquisition_index : int or None
        0-based position of the movie in the order of acquisition within its series.
    pre_exposure_e_A2 : float or None
        Dose received before this movie (earlier tilts), e/Å².
    dose_source : str or None
        Where the dose came from (e.g. ``"series_mdoc"``, ``"frame_mdoc"``, ``"config"``).
    dose_fallback : str or None
        Why the preferred dose source was not used; set => a ``dose_fallback`` warning.
    """

    series: str | None = None
    tilt_deg: float | None = None
    acquisition_index: int | None = None
    pre_exposure_e_A2: float | None = None
    dose_source: str | None = None
    dose_fallback: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TiltInfo:
        """From a motion record's ``tilt`` object (or that object itself), as the daemon's
        series resolver writes it (the schema of
        :class:`~daemon.series.tilt_record.TiltRecord`).

        The dose *fell back* when its source is not one of :data:`PRIMARY_DOSE_SOURCES` (e.g.
        ``configured``: the metadata gave none; ``DoseRate``: estimated at the camera); the
        reason is the source plus the resolver's warnings. A record without ``tilt`` gives an
        empty TiltInfo (a movie outside any series).
        """
        tilt = TiltRecord.from_json(record)
        if tilt is None:
            return cls()
        source = tilt.dose_source or None
        fallback = None
        if source is not None and source.split(" ")[0] not in PRIMARY_DOSE_SOURCES:
            fallback = "; ".join([f"dose from {source}", *tilt.warnings])
        return cls(series=tilt.series, tilt_deg=tilt.tilt_deg,
                   acquisition_index=tilt.acquisition_index,
                   pre_exposure_e_A2=tilt.pre_exposure_e_A2, dose_source=source,
                   dose_fallback=fallback)


def _scalars(obj: Any) -> dict[str, Any] | None:
    """The scalar members of a mapping (numbers, strings, bools, None); None for no mapping."""
    if not isinstance(obj, Mapping):
        return None
    out = {}
    for key, value in obj.items():
        if isinstance(value, (Mapping, list, tuple)) or getattr(value, "ndim", 0):
            continue  # arrays and nested objects stay in the record
        value = plain(value)
        if value is None or isinstance(value, (bool, int, float, str)):
            out[str(key)] = value
    return out


def _local_summary(local: Any, global_xy_px: np.ndarray, px: float) -> dict[str, Any] | None:
    """Scalars of the record's ``local`` object plus the local-motion magnitude in Å.

    ``rms_A`` / ``max_A``: RMS and largest length, over patches and frames, of the local part of
    the motion (``fitted_shifts_px`` minus ``global_shifts_px``), when the record has them.
    """
    out = _scalars(local)
    if out is None:
        return None
    out = {k: v for k, v in out.items() if not k.endswith("convention")}  # prose, not data
    fitted = local.get("fitted_shifts_px")
    if fitted is not None:
        try:
            f = np.asarray(fitted, dtype=np.float64)
        except (TypeError, ValueError):
            f = np.zeros((0,))
        if f.ndim == 3 and f.shape[1:] == global_xy_px.shape and f.size:
            lengths = np.hypot(*np.moveaxis(f - global_xy_px[None], -1, 0)) * px
            if np.isfinite(lengths).all():
                out["rms_A"] = float(np.sqrt(np.mean(lengths ** 2)))
                out["max_A"] = float(lengths.max())
            out["n_patches"] = int(f.shape[0])
    rejected = local.get("rejected_patches")
    if isinstance(rejected, (list, tuple)):
        out["n_rejected_patches"] = len(rejected)
    return out


def _relative_outputs(record: Mapping[str, Any], outputs: Mapping[str, Any] | None,
                      out_dir: str | Path | None) -> dict[str, str] | None:
    """Output paths relative to ``out_dir`` (POSIX separators), from the written paths
    ``outputs`` (absolute) when given, else the record's (bare names: relative to the movie's
    own output folder, kept as they are)."""
    if outputs:
        if out_dir is None:
            return {str(k): str(v) for k, v in outputs.items()}
        root = Path(out_dir)
        out = {}
        for kind, value in outputs.items():
            target = Path(value)
            try:
                out[str(kind)] = target.relative_to(root).as_posix() if target.is_absolute() \
                    else target.as_posix()
            except ValueError:  # outside the output folder: an absolute path still opens
                out[str(kind)] = str(target)
        return out
    listed = record.get("outputs")
    return None if listed is None else {str(k): str(v) for k, v in listed.items()}


def movie_message(record: Mapping[str, Any], tilt: TiltInfo | None = None, *,
                  path: str | Path | None = None,
                  pixel_size_A: float | None = None,
                  outputs: Mapping[str, Any] | None = None,
                  out_dir: str | Path | None = None) -> dict[str, Any]:
    """Body of a ``movie`` message (without envelope) from a motion record and tilt facts.

    Parameters
    ----------
    record : mapping
        The ``S.motion.json`` record (schema ``motionwatch.motion/1``). Read: ``global_shifts_px``
        (list of ``[dx, dy]`` per frame, output pixels, sign of :mod:`correction.conventions`),
        ``pixel_size_A`` (output pixel size, Å), ``drift`` (``total_A``, ``early_A``, ``late_A``,
        ``max_frame_jump_A``); when present: ``movie`` or ``path``, ``dose``, ``local``,
        ``resolution``, ``timings_s``, ``outputs``, ``schema``.
    tilt : TiltInfo, optional
        Series, tilt angle, acquisition index, pre-exposure and dose source; default: from the
        record's ``tilt`` object (:meth:`TiltInfo.from_record`).
    path : str or Path, optional
        The movie's path, when the record does not name it.
    pixel_size_A : float, optional
        Overrides the record's ``pixel_size_A``.
    outputs : mapping, optional
        The written output files by kind (``sum``, ``dw``, ``even``, ``odd``, ``motion``;
        absolute paths, as the daemon records them).
    out_dir : str or Path, optional
        The daemon's output folder: sent as ``out_dir``, and ``outputs`` are made relative
        to it (so a dashboard opens ``out_dir / outputs[kind]``).

    Returns
    -------
    dict
        ``shifts_A`` is ``global_shifts_px * pixel_size_A`` ([dx, dy] per frame, Å); ``drift``
        and ``timings_s`` are copied unchanged; ``outputs`` relative to ``out_dir``; ``dose``
        always has ``pre_exposure_e_A2``, ``source`` and ``fallback`` (null when unknown);
        ``dose``, ``local`` and
        ``resolution`` keep their scalar members (arrays, e.g. patch shifts, stay in the record);
        ``local`` gains ``rms_A`` and ``max_A``, the size of the local motion (patch
        trajectories ``fitted_shifts_px`` minus the global one), ``n_patches`` and
        ``n_rejected_patches``.

    Raises
    ------
    ValueError
        A required key is missing or malformed (the message names it).
    """
    tilt = tilt if tilt is not None else TiltInfo.from_record(record)
    missing = [k for k in ("global_shifts_px", "drift") if k not in record]
    px = pixel_size_A if pixel_size_A is not None else record.get("pixel_size_A")
    if px is None:
        missing.append("pixel_size_A")
    movie_path = path if path is not None else record.get("movie", record.get("path"))
    if movie_path is None:
        missing.append("movie (path)")
    if missing:
        raise ValueError(f"motion record lacks {', '.join(missing)}")
    if isinstance(movie_path, Mapping):  # {"path": ...} object
        movie_path = movie_path.get("path")
    px = float(px)
    if not px > 0:
        raise ValueError(f"motion record pixel_size_A must be > 0 Å, got {px}")
    try:
        shifts = np.asarray(record["global_shifts_px"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"motion record global_shifts_px is not a list of [dx, dy]: {exc}") from None
    if shifts.ndim != 2 or shifts.shape[1] != 2:
        raise ValueError("motion record global_shifts_px is not a list of [dx, dy], got shape "
                         f"{shifts.shape}")
    shifts_A = (shifts * px).tolist()
    if not np.isfinite(shifts).all():
        shifts_A = plain(shifts_A)  # NaN/inf -> null: the body must stay valid JSON
    drift = record["drift"]
    if not isinstance(drift, Mapping):
        raise ValueError("motion record drift is not an object")
    dose = _scalars(record.get("dose")) or {}
    if tilt.pre_exposure_e_A2 is not None:
        dose["pre_exposure_e_A2"] = float(tilt.pre_exposure_e_A2)
    dose.setdefault("pre_exposure_e_A2", None)
    dose["source"] = tilt.dose_source  # null outside a series: same keys in every message
    dose["fallback"] = tilt.dose_fallback
    local = _local_summary(record.get("local"), shifts, px)
    movie_path = str(movie_path)
    return {
        "path": movie_path,
        "name": Path(movie_path).name,
        "series": tilt.series,
        "tilt_deg": plain(tilt.tilt_deg),
        "acquisition_index": plain(tilt.acquisition_index),
        "n_frames": len(shifts_A),
        "pixel_size_A": px,
        "voltage_kV": plain(record.get("voltage_kV")),
        "voltage_source": plain(record.get("voltage_source")),  # option, mdoc ... default
        "shifts_A": shifts_A,  # already Python floats
        "drift": plain(dict(drift)),
        "dose": dose,
        "local": local,
        "resolution": _scalars(record.get("resolution")),
        "timings_s": plain(record.get("timings_s")),
        "out_dir": None if out_dir is None else str(out_dir),
        "outputs": _relative_outputs(record, outputs, out_dir),
        "record_schema": plain(record.get("schema")),
        "ran_on": plain(record.get("ran_on")),  # host and worker (a Dask worker's address)
    }


def movie_warnings(movie: Mapping[str, Any], rules: DriftRules) -> list[dict[str, Any]]:
    """Warning bodies (without envelope) a ``movie`` body raises under ``rules``.

    One warning per rule broken (``drift_total``, ``drift_jump``, ``drift_early``, each with
    ``value`` and ``threshold`` in Å), plus ``dose_fallback`` when the dose source fell back.
    A threshold of None, or a missing or null drift value, raises nothing.
    """
    drift = movie.get("drift") or {}
    where = {"path": movie.get("path"), "series": movie.get("series"),
             "tilt_deg": movie.get("tilt_deg")}
    name = movie.get("name") or movie.get("path")
    out = []
    for kind, key, threshold, what in (
            ("drift_total", "total_A", rules.max_total_drift_A, "total drift"),
            ("drift_jump", "max_frame_jump_A", rules.max_frame_jump_A, "largest frame-to-frame jump"),
            ("drift_early", "early_A", rules.max_early_drift_A, "early drift")):
        value = drift.get(key)
        if threshold is None or value is None or not value > threshold:
            continue
        out.append({"kind": kind, **where, "value": value, "threshold": threshold, "unit": "A",
                    "message": f"{name}: {what} {value:.1f} Å above {threshold:g} Å"})
    fallback = (movie.get("dose") or {}).get("fallback")
    if fallback:
        out.append({"kind": "dose_fallback", **where, "value": None, "threshold": None,
                    "unit": None, "message": f"{name}: dose source fell back: {fallback}"})
    return out


def tilt_summary(movie: Mapping[str, Any]) -> dict[str, Any]:
    """The compact per-tilt entry of ``state`` (and of the monitor) from a ``movie`` body."""
    drift = movie.get("drift") or {}
    dose = movie.get("dose") or {}
    local = movie.get("local") or {}
    resolution = movie.get("resolution") or {}
    motion = (movie.get("outputs") or {}).get("motion")
    return {
        "path": movie.get("path"),
        "name": movie.get("name"),
        # the outputs' stem below the output folder (grid2/a for grid2/a.motion.json)
        "stem": motion[:-len(".motion.json")] if isinstance(motion, str)
        and motion.endswith(".motion.json") else None,
        "seq": movie.get("seq"),
        "time": movie.get("time"),
        "tilt_deg": movie.get("tilt_deg"),
        "acquisition_index": movie.get("acquisition_index"),
        "n_frames": movie.get("n_frames"),
        "pre_exposure_e_A2": dose.get("pre_exposure_e_A2"),
        "dose_e_A2": dose.get("total_e_A2"),
        "total_A": drift.get("total_A"),
        "early_A": drift.get("early_A"),
        "late_A": drift.get("late_A"),
        "max_frame_jump_A": drift.get("max_frame_jump_A"),
        "local_applied": local.get("applied"),
        "resolution_A": resolution.get("resolution_A"),
    }


def _now_iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


# --------------------------------------------------------------------------- publisher


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """Counters of a publisher (messages)."""

    queued: int
    sent: int
    dropped: int
    subscriptions: int
    build_errors: int


class _Feed:
    """Open series, recent movies, warnings: what a late joiner is sent (socket thread only)."""

    def __init__(self, max_tilts: int) -> None:
        self.max_tilts = max_tilts
        self.open: dict[str, dict] = {}
        self.completed: collections.deque[dict] = collections.deque(maxlen=_COMPLETED_KEPT)
        self.movies: collections.deque[dict] = collections.deque(maxlen=_RECENT)
        self.warnings: collections.deque[dict] = collections.deque(maxlen=_RECENT)
        self.errors: collections.deque[dict] = collections.deque(maxlen=_RECENT)
        self.heartbeat: dict | None = None

    def _series(self, name: str, body: Mapping) -> dict:
        entry = self.open.get(name)
        if entry is None:
            for done in self.completed:
                if done["series"] == name:
                    return done
            entry = {"series": name, "status": "open", "started": body.get("time"),
                     "n_done": 0, "n_failed": 0, "n_expected": None,
                     "accumulated_dose_e_A2": None, "tilts": []}
            self.open[name] = entry
            while len(self.open) > _OPEN_SERIES_KEPT:
                self.open.pop(next(iter(self.open)))
        return entry

    def apply(self, topic: str, body: dict) -> None:
        if topic == "movie":
            summary = tilt_summary(body)
            # a movie corrected after it failed (retried, rewritten) is no longer a failure
            for failure in [e for e in self.errors if e.get("path") == summary["path"]]:
                self.errors.remove(failure)
            name = body.get("series")
            if name is None:  # one entry per movie: restored at start-up, then announced
                for known in [m for m in self.movies if m["path"] == summary["path"]]:
                    self.movies.remove(known)
                self.movies.append(summary)
                return
            tilts = self._series(name, body)["tilts"]
            tilts[:] = [t for t in tilts if t["path"] != summary["path"]] + [summary]
            del tilts[:-self.max_tilts]
        elif topic == "series":
            entry = self._series(body["series"], body)
            for key in ("n_done", "n_failed", "n_expected", "accumulated_dose_e_A2"):
                if key in body:
                    entry[key] = body[key]
            entry["updated"] = body.get("time")
            if body.get("event") == "completed":
                entry["status"] = "completed"
                self.open.pop(body["series"], None)
                if entry not in self.completed:
                    self.completed.append(entry)
            elif body.get("event") == "reopened" and entry.get("status") == "completed":
                entry["status"] = "open"
                if entry in self.completed:
                    self.completed.remove(entry)
                self.open[body["series"]] = entry
        elif topic == "warning":
            self.warnings.append(body)
        elif topic == "error":
            self.errors.append(body)
        elif topic == "heartbeat":
            self.heartbeat = body

    def snapshot(self) -> dict:
        return {
            "series": [*self.completed, *self.open.values()],
            "movies": list(self.movies),
            "warnings": list(self.warnings),
            "errors": list(self.errors),
            "heartbeat": self.heartbeat,
        }


class Publisher:
    """Publishes the daemon's events on a ZeroMQ XPUB socket owned by one thread.

    All public methods are thread-safe and never block: they stamp ``time``, put the message
    on a bounded queue (dropping the oldest when full); the socket thread drains it every 20 ms
    (callers make no system call, and no GIL hand-off per message). ``seq`` is
    given at send time, advanced over dropped messages, so subscribers see every loss as a gap.

    Parameters
    ----------
    config : PublishConfig, optional
        Endpoint, security, queue bounds and drift rules (defaults: loopback port 5557).
    host : str, optional
        Reported host name (default ``socket.gethostname()``).
    session : str, optional
        Session id (default: a new UUID4, hex).
    version : str
        Reported in heartbeats.
    clock : callable
        Wall clock, seconds since the epoch (``time``); ``monotonic`` for the uptime.

    Examples
    --------
    >>> with Publisher(PublishConfig(endpoint="tcp://127.0.0.1:*")) as pub:   # doctest: +SKIP
    ...     pub.series("started", "TS_01", n_done=0, n_expected=41)
    ...     pub.movie(record, TiltInfo(series="TS_01", tilt_deg=0.0, acquisition_index=0))
    """

    def __init__(self, config: PublishConfig | None = None, *, host: str | None = None,
                 session: str | None = None, version: str = __version__,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config if config is not None else PublishConfig()
        self.host = host if host is not None else socket.gethostname()
        self.session = session if session is not None else uuid.uuid4().hex
        self._envelope = {"host": self.host, "session": self.session}
        self.version = version
        self._clock = clock
        self._monotonic = monotonic
        self._started_at = monotonic()
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[str, dict]] = collections.deque()
        self._dropped = 0  # total, for stats
        self._dropped_pending = 0  # not yet turned into a seq gap
        self._sent = 0
        self._accepted = 0  # messages put on the queue
        self._handled = 0  # messages taken off the queue by the socket thread (sent or not)
        self._overflow = 0  # messages dropped from a full queue
        self._subscriptions = 0
        self._build_errors = 0
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._endpoint: str | None = None
        #: the daemon's output folder, named in movie, heartbeat and state messages (movie
        #: outputs are relative to it); set by the service's listener once it is known
        self.out_dir: str | None = None

    # -- lifecycle

    def start(self, timeout_s: float = 10.0) -> Publisher:
        """Start the socket thread and bind; returns self once bound.

        Raises
        ------
        PublishError
            The endpoint cannot be bound or the CURVE keys cannot be loaded.
        """
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="motionwatch-publish", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise PublishError(f"{self.config.endpoint}: publisher did not start in {timeout_s} s")
        if self._start_error is not None:
            self._thread.join()
            raise PublishError(f"{self.config.endpoint}: {self._start_error}") from self._start_error
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (best effort), close the socket and stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every message put before this call has left the queue (sent, or dropped).

        For shutdown paths and tests; the daemon's normal calls never wait. Returns False on
        timeout (e.g. the publisher was never started).
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            target = self._accepted
        while True:
            with self._lock:
                if self._handled + self._overflow >= target:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def endpoint(self) -> str | None:
        """The bound endpoint (with the real port when bound to ``:*``); None before start."""
        return self._endpoint

    @property
    def stats(self) -> PublisherStats:
        with self._lock:
            return PublisherStats(queued=len(self._queue), sent=self._sent, dropped=self._dropped,
                                  subscriptions=self._subscriptions,
                                  build_errors=self._build_errors)

    # -- the daemon's calls (any thread, never block)

    def movie(self, record: Mapping[str, Any], tilt: TiltInfo | None = None, *,
              path: str | Path | None = None,
              outputs: Mapping[str, Any] | None = None) -> bool:
        """Publish a corrected movie, then any warning it raises under ``config.drift``.

        ``outputs`` (the written files, absolute) are sent relative to :attr:`out_dir`.
        Returns False (and publishes an ``error`` instead) when the record is malformed; never
        raises for bad records, so a publishing problem cannot stop correction.
        """
        try:
            body = movie_message(record, tilt, path=path, outputs=outputs, out_dir=self.out_dir)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            with self._lock:
                self._build_errors += 1
            self.error(path if path is not None else record.get("movie", "?")
                       if isinstance(record, Mapping) else "?",
                       f"movie message not built: {exc}")
            return False
        self._put("movie", body, sanitised=True)
        for warning in movie_warnings(body, self.config.drift):
            self._put("warning", warning)
        return True

    def restore(self, movies: Iterable[Mapping[str, Any]] = (),
                series: Iterable[Mapping[str, Any]] = (),
                errors: Iterable[Mapping[str, Any]] = ()) -> None:
        """Seed the late joiners' state with what an earlier run did (nothing is sent).

        Parameters
        ----------
        movies : iterable of mapping
            ``movie`` message bodies (:func:`movie_message`), oldest first; a ``time`` they
            carry (when the movie was done) is kept.
        series : iterable of mapping
            ``series`` message bodies (``event`` ``updated`` or ``completed``), applied after
            the movies.
        errors : iterable of mapping
            ``error`` message bodies (``path``, ``reason``): the movies still quarantined.
        """
        for body in movies:
            self._put(_RESTORE + "movie", dict(body), keep_time=True)
        for body in series:
            self._put(_RESTORE + "series", dict(body), keep_time=True)
        for body in errors:
            self._put(_RESTORE + "error", dict(body), keep_time=True)

    def series(self, event: SeriesEvent, series: str, *, n_done: int, n_failed: int = 0,
               n_expected: int | None = None, accumulated_dose_e_A2: float | None = None,
               mdoc: str | Path | None = None,
               stacks: Mapping[str, str | Path] | None = None) -> None:
        """Publish a tilt-series event.

        Parameters
        ----------
        event : {"started", "updated", "completed", "reopened"}
            ``started`` when the series is first seen, ``updated`` after each of its movies is
            done or failed, ``completed`` when the series is closed (lock file gone, all movies
            done, stacks written), ``reopened`` when movies arrive after that.
        series : str
            Series name (as in ``TiltInfo.series``).
        n_done, n_failed : int
            Movies of the series corrected / failed so far.
        n_expected : int, optional
            Tilts the series will have, when known (mdoc sections).
        accumulated_dose_e_A2 : float, optional
            Dose received by the specimen so far (e/Å²).
        mdoc : str or Path, optional
            The series' mdoc file.
        stacks : mapping, optional
            Assembled outputs by name (paths), on ``completed``.
        """
        if event not in SERIES_EVENTS:
            raise ValueError(f"series event must be one of {SERIES_EVENTS}, got {event!r}")
        self._put("series", {"event": event, "series": series, "n_done": n_done,
                             "n_failed": n_failed, "n_expected": n_expected,
                             "accumulated_dose_e_A2": accumulated_dose_e_A2,
                             "mdoc": None if mdoc is None else str(mdoc),
                             "stacks": None if not stacks else
                             {str(k): str(v) for k, v in stacks.items()}})

    def heartbeat(self, *, backlog: int, done: int, failed: int, running: int = 0,
                  quarantined: int = 0, last_movie: str | Path | None = None,
                  cluster: Mapping[str, Any] | None = None,
                  pace: Mapping[str, Any] | None = None) -> None:
        """Publish a heartbeat; call every ``config.heartbeat_interval_s`` from the service loop.

        Adds ``uptime_s``, ``interval_s``, ``version``, the drift thresholds and the publisher's
        own ``dropped`` count; ``cluster`` is a distributed executor's state (workers connected,
        tasks in flight), null for the local worker processes; ``pace`` the service's movies
        acquired vs corrected per minute and whether it keeps up (:mod:`daemon.engine.pace`).
        """
        with self._lock:
            dropped = self._dropped
        self._put("heartbeat", {
            "uptime_s": round(self._monotonic() - self._started_at, 3),
            "interval_s": self.config.heartbeat_interval_s,
            "backlog": backlog, "running": running, "done": done, "failed": failed,
            "quarantined": quarantined,
            "last_movie": None if last_movie is None else str(last_movie),
            "version": self.version,
            "drift_thresholds": self.config.drift.as_dict(),
            "dropped": dropped,
            "out_dir": self.out_dir,
            "cluster": None if cluster is None else dict(cluster),
            "pace": None if pace is None else dict(pace),
        })

    def error(self, path: str | Path | None, reason: str) -> None:
        """Publish a failure: the file and a one-line reason."""
        self._put("error", {"path": None if path is None else str(path),
                            "reason": " ".join(str(reason).split())})

    def warning(self, kind: str, message: str, *, path: str | Path | None = None,
                series: str | None = None, value: float | None = None,
                threshold: float | None = None, unit: str | None = None) -> None:
        """Publish a warning of any ``kind`` (drift warnings come from :meth:`movie` itself)."""
        self._put("warning", {"kind": kind, "path": None if path is None else str(path),
                              "series": series, "tilt_deg": None, "value": value,
                              "threshold": threshold, "unit": unit,
                              "message": " ".join(str(message).split())})

    # -- internals

    def _put(self, topic: str, body: dict[str, Any], *, sanitised: bool = False,
             keep_time: bool = False) -> None:
        body = dict(body) if sanitised else plain(body)
        if not (keep_time and body.get("time")):
            body["time"] = _now_iso(self._clock())
        with self._lock:
            if self._closed:
                self._dropped += 1
                return
            if len(self._queue) >= self.config.queue_size:
                self._queue.popleft()
                self._dropped += 1
                self._overflow += 1
                self._dropped_pending += 1
            self._queue.append((topic, body))
            self._accepted += 1

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # a full pipe already wakes the thread

    def _run(self) -> None:
        ctx = zmq.Context()
        try:
            try:
                sock, auth, self._endpoint = _bind_xpub(ctx, self.config)
            except Exception as exc:  # reported to start(), which raises PublishError
                self._start_error = exc
                self._ready.set()
                return
            self._ready.set()
            try:
                self._loop(sock)
            finally:
                sock.close()
                if auth is not None:
                    auth.stop()
        finally:
            ctx.term()

    def _loop(self, sock: zmq.Socket) -> None:
        feed = _Feed(self.config.max_tilts_per_series)
        seq = 0
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while True:
            events = dict(poller.poll(_FLUSH_INTERVAL_MS))
            if self._wake_r in events:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            want_state = False
            n_subs = 0
            if sock in events:
                while True:
                    try:
                        frame = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if frame[:1] == b"\x01":
                        n_subs += 1
                        want_state |= _STATE_TOPIC.startswith(frame[1:])
            with self._lock:
                batch = list(self._queue)
                self._queue.clear()
                gap, self._dropped_pending = self._dropped_pending, 0
                closing = self._closed
                self._subscriptions += n_subs
            seq += gap
            sent = 0
            for topic, body in batch:
                if topic.startswith(_RESTORE):  # state from an earlier run: kept, not sent
                    topic = topic[len(_RESTORE):]
                else:
                    seq += 1
                    sent += _send(sock, self._envelope, topic, body, seq)
                try:
                    feed.apply(topic, body)
                except (KeyError, TypeError, ValueError, AttributeError):
                    pass  # an odd body must not stop the socket thread; it was still sent
            if want_state:
                seq += 1
                state = {**feed.snapshot(), "out_dir": self.out_dir,
                         "time": _now_iso(self._clock())}
                sent += _send(sock, self._envelope, "state", state, seq)
            with self._lock:
                self._sent += sent
                self._handled += len(batch)
            if closing:
                return


def _bind_xpub(ctx: zmq.Context, cfg: PublishConfig
               ) -> tuple[zmq.Socket, ThreadAuthenticator | None, str]:
    """The feed's XPUB socket bound to ``cfg.endpoint`` (CURVE when configured), its
    authenticator and the endpoint actually bound (a ``*`` port resolved)."""
    auth = None
    sock = None
    try:
        if cfg.curve_enabled:
            public, secret = zmq.auth.load_certificate(str(cfg.curve_secret_key))
            if secret is None:
                raise PublishConfigError(
                    [f"{cfg.curve_secret_key}: certificate has no secret key"])
            auth = ThreadAuthenticator(ctx)
            auth.start()
            location = (str(cfg.curve_authorized_keys) if cfg.curve_authorized_keys
                        else zmq.auth.CURVE_ALLOW_ANY)
            auth.configure_curve(domain="*", location=location)
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        sock.setsockopt(zmq.SNDHWM, cfg.send_hwm)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        if cfg.endpoint.startswith("tcp://[") or cfg.endpoint.startswith("tcp://::"):
            sock.setsockopt(zmq.IPV6, 1)
        if cfg.curve_enabled:
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_server = True
        sock.bind(cfg.endpoint)
        return sock, auth, sock.getsockopt_string(zmq.LAST_ENDPOINT)
    except BaseException:
        if sock is not None:
            sock.close(linger=0)
        if auth is not None:
            auth.stop()
        raise


def _send(sock: zmq.Socket, envelope: Mapping[str, Any], topic: str, body: dict,
          seq: int) -> int:
    """Send one message (envelope keys first); 1 if sent, 0 past the high-water mark (XPUB
    drops silently) or when the body cannot be serialised."""
    body["seq"] = seq
    head = {"schema": SCHEMA, "seq": seq, "time": body.get("time"), **envelope}
    message = {**head, **{k: v for k, v in body.items() if k not in head}}
    try:
        data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        sock.send_multipart([topic.encode(), data], flags=zmq.NOBLOCK)
    except (zmq.ZMQError, ValueError, TypeError):
        return 0
    return 1


# --------------------------------------------------------------------------- subscriber


class Subscriber:
    """A SUB socket for monitors and tests: connects (and reconnects) to a publisher.

    Parameters
    ----------
    endpoint : str
        The publisher's endpoint (``tcp://HOST:PORT`` or ``ipc://``).
    topics : iterable of str
        Topic prefixes; ``("",)`` receives everything, ``state`` included.
    curve_server_key : Path, optional
        The server's certificate (public key); enables CURVE.
    curve_client_key : Path, optional
        This client's certificate with secret key (needed when the server authenticates
        clients); a throwaway key pair is generated otherwise.
    """

    def __init__(self, endpoint: str, *, topics: Iterable[str] = ("",),
                 curve_server_key: Path | None = None,
                 curve_client_key: Path | None = None) -> None:
        self.endpoint = endpoint
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 200)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        if endpoint.startswith("tcp://[") or endpoint.startswith("tcp://::"):
            self._sock.setsockopt(zmq.IPV6, 1)
        if curve_server_key is not None:
            server_public, _ = zmq.auth.load_certificate(str(curve_server_key))
            if curve_client_key is not None:
                public, secret = zmq.auth.load_certificate(str(curve_client_key))
                if secret is None:
                    raise ValueError(f"{curve_client_key}: certificate has no secret key")
            else:
                public, secret = zmq.curve_keypair()
            self._sock.curve_serverkey = server_public
            self._sock.curve_publickey = public
            self._sock.curve_secretkey = secret
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.connect(endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)

    def receive(self, timeout_s: float) -> tuple[str, dict[str, Any]] | None:
        """The next ``(topic, body)``, or None after ``timeout_s`` without a message.

        A message that is not ``[topic, JSON object]`` comes back as
        ``("invalid", {"error": ...})`` rather than raising.
        """
        if not self._poller.poll(max(0, int(timeout_s * 1000))):
            return None
        frames = self._sock.recv_multipart()
        if len(frames) != 2:
            return "invalid", {"error": f"{len(frames)} frames, expected 2"}
        try:
            body = json.loads(frames[1])
            topic = frames[0].decode("ascii")
        except (ValueError, UnicodeDecodeError) as exc:
            return "invalid", {"error": str(exc)}
        if not isinstance(body, dict):
            return "invalid", {"error": "body is not a JSON object"}
        return topic, body

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
