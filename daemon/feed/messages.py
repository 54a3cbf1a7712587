"""The feed's messages: the schema every body carries, the topics, and the bodies of movie
messages built from a motion record (:func:`movie_message`), their drift warnings
(:func:`movie_warnings`) and the per-tilt summary pages show (:func:`tilt_summary`).

Lengths in the bodies are in Å (``_A``), shifts in pixels (``_px``), doses in e/Å²
(``_e_A2``). ``docs/zmq.md`` lists every key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from correction.write import plain
from daemon.feed.endpoint import PublishConfigError
from daemon.series.tilt_record import TiltRecord

__all__ = ["SCHEMA", "TOPICS", "SERIES_EVENTS", "PRIMARY_DOSE_SOURCES", "ASSEMBLY_FAILED_KIND",
           "ASSEMBLY_FAILED_STATUS", "DriftRules", "TiltInfo", "movie_message", "movie_warnings",
           "series_status", "tilt_summary"]

SCHEMA = "motionwatch/1"
TOPICS = ("movie", "series", "heartbeat", "error", "warning", "state")
SERIES_EVENTS = ("started", "updated", "completed", "reopened")
#: the ``warning`` kind that says a series' stacks were not written (the message names why)
ASSEMBLY_FAILED_KIND = "series_assembly_failed"
#: a live view's status of a series whose last assembly failed (else "open" or "completed")
ASSEMBLY_FAILED_STATUS = "assembly failed"


def series_status(status: str, topic: str, body: Mapping[str, Any]) -> str:
    """A tilt series' status in a live view (``open``, ``completed``, ``assembly failed``) after
    one message about it: ``completed`` on its ``completed`` event, ``open`` on ``started`` or
    ``reopened``, ``assembly failed`` on an :data:`ASSEMBLY_FAILED_KIND` warning (until the
    series is reopened or assembled again); other messages leave ``status`` as it is."""
    if topic == "series":
        event = body.get("event")
        if event == "completed":
            return "completed"
        return "open" if event in ("started", "reopened") else status
    if topic == "warning" and body.get("kind") == ASSEMBLY_FAILED_KIND:
        return ASSEMBLY_FAILED_STATUS
    return status


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


def _local_summary(local: Any, global_xy_px: np.ndarray, pixel_size_A: float
                   ) -> dict[str, Any] | None:
    """Scalars of the record's ``local`` object plus the local-motion magnitude in Å.

    ``rms_A`` / ``max_A``: RMS and largest length, over patches and frames, of the local part of
    the motion (``fitted_shifts_px`` minus ``global_shifts_px``), when the record has them.
    """
    out = _scalars(local)
    if out is None:
        return None
    out = {k: v for k, v in out.items() if not k.endswith("convention")}  # prose, not data
    if "patches_xy" in local:  # a list: [columns, rows], or null
        patches = local["patches_xy"]
        out["patches_xy"] = ([int(v) for v in patches] if isinstance(patches, (list, tuple))
                             and len(patches) == 2 else None)
    if "model" in local:  # the fitted model's scalars (its arrays stay in the record), or null
        model = _scalars(local["model"])
        out["model"] = None if model is None else {k: v for k, v in model.items()
                                                   if k != "formula"}
    fitted = local.get("fitted_shifts_px")
    if fitted is not None:
        try:
            f = np.asarray(fitted, dtype=np.float64)
        except (TypeError, ValueError):
            f = np.zeros((0,))
        if f.ndim == 3 and f.shape[1:] == global_xy_px.shape and f.size:
            lengths = np.hypot(*np.moveaxis(f - global_xy_px[None], -1, 0)) * pixel_size_A
            if np.isfinite(lengths).all():
                out["rms_A"] = float(np.sqrt(np.mean(lengths ** 2)))
                out["max_A"] = float(lengths.max())
            out["n_patches"] = int(f.shape[0])
    rejected = local.get("rejected_patches")
    if isinstance(rejected, (list, tuple)) and "n_patches" in out:  # patches were measured
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
    pixel_A = pixel_size_A if pixel_size_A is not None else record.get("pixel_size_A")
    if pixel_A is None:
        missing.append("pixel_size_A")
    movie_path = path if path is not None else record.get("movie", record.get("path"))
    if movie_path is None:
        missing.append("movie (path)")
    if missing:
        raise ValueError(f"motion record lacks {', '.join(missing)}")
    if isinstance(movie_path, Mapping):  # {"path": ...} object
        movie_path = movie_path.get("path")
    pixel_A = float(pixel_A)
    if not pixel_A > 0:
        raise ValueError(f"motion record pixel_size_A must be > 0 Å, got {pixel_A}")
    try:
        shifts = np.asarray(record["global_shifts_px"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"motion record global_shifts_px is not a list of [dx, dy]: {exc}") from None
    if shifts.ndim != 2 or shifts.shape[1] != 2:
        raise ValueError("motion record global_shifts_px is not a list of [dx, dy], got shape "
                         f"{shifts.shape}")
    shifts_A = (shifts * pixel_A).tolist()
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
    local = _local_summary(record.get("local"), shifts, pixel_A)
    movie_path = str(movie_path)
    return {
        "path": movie_path,
        "name": Path(movie_path).name,
        "series": tilt.series,
        "tilt_deg": plain(tilt.tilt_deg),
        "acquisition_index": plain(tilt.acquisition_index),
        "n_frames": len(shifts_A),
        "pixel_size_A": pixel_A,
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
    A threshold of None, or a missing or null drift value, raises nothing. The message names
    the movie below the watched folder (``grid2/x.mrc``: two grids have the same names), as
    its outputs' folder below ``out_dir`` mirrors it.
    """
    drift = movie.get("drift") or {}
    where = {"path": movie.get("path"), "series": movie.get("series"),
             "tilt_deg": movie.get("tilt_deg")}
    name = movie.get("name") or movie.get("path")
    written = (movie.get("outputs") or {}).get("motion")
    if movie.get("name") and isinstance(written, str) and "/" in written \
            and not written.startswith("/") and movie.get("out_dir"):
        name = f"{written.rpartition('/')[0]}/{movie['name']}"
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
