"""Assembling a completed tilt series: which tilts go in, and the job that writes the stacks.

:func:`assembly_tilts` picks the corrected tilts of a series from the state rows (quarantined
tilts and tilts without an angle are left out, with a reason) and :func:`assemble_job` runs in a
worker process (through :class:`~daemon.events.ResolverContext.run_job`):
:func:`correction.stack.assemble_series` writes ``OUT_DIR/<series>/`` atomically, at the
voltage its tilts were corrected at (:func:`series_voltage_kV`). :func:`remove_assembled` takes
those files away again (:func:`correction.stack.remove_series`) from a series left with no
tilts (all moved to another series' name).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from daemon.series.tilt_record import TiltRecord, read_motion_record

__all__ = ["recorded_tilt", "assembly_tilts", "assemble_job", "series_voltage_kV",
           "remove_assembled"]


def recorded_tilt(row: Any) -> TiltRecord | None:
    """The tilt record of a state row: from its metadata, else (adopted outputs) from its motion
    record."""
    tilt = TiltRecord.from_json((row.peek_metadata().get("extra_record") or {}).get("tilt"))
    if tilt is None:
        tilt = TiltRecord.from_json(read_motion_record((row.peek_outputs() or {}).get("motion"))
                                    or {})
    return tilt


def assembly_tilts(rows: Iterable[Any], *, log: Any, series: str) -> list[dict[str, Any]]:
    """Plain-data tilts for :func:`assemble_job` from the rows of the movies to assemble."""
    tilts = []
    for row in rows:
        if row is None or row.status != "done":
            continue  # quarantined tilts are left out of the stacks
        tilt = recorded_tilt(row)
        # peeked, not kept: the rows are the run's newest-rows cache (a tilt's decoded
        # columns were held for the run, kilobytes a tilt)
        row_outputs = row.peek_outputs()
        outputs = {k: v for k, v in row_outputs.items() if k in ("sum", "dw", "even", "odd")}
        if tilt is None or tilt.tilt_deg is None or "sum" not in outputs:
            log.warning("series_tilt_left_out", series=series, movie=row.key.path,
                        reason="no tilt angle or no sum image recorded")
            continue
        drift = (row.peek_summary().get("drift") or {}).get("total_A")
        if drift is None:
            record = read_motion_record(row_outputs.get("motion")) or {}
            drift = (record.get("drift") or {}).get("total_A")
        tilts.append({
            "movie": Path(row.key.path).name, "tilt_deg": tilt.tilt_deg,
            "acquisition_index": tilt.acquisition_index, "dose_e_A2": tilt.dose_e_A2,
            "pre_exposure_e_A2": tilt.pre_exposure_e_A2, "dose_source": tilt.dose_source,
            "order_source": tilt.order_source, "outputs": outputs,
            "drift_total_A": None if drift is None else float(drift),
            "prior_record_dose_difference_e_A2": tilt.prior_record_dose_difference_e_A2,
            "acquired_at": tilt.acquired_at, "exposure_time_s": tilt.exposure_time_s,
            "movie_path": row.key.path})
    return tilts


def series_voltage_kV(rows: Iterable[Any], fallback_kV: float) -> tuple[float, str | None]:
    """Voltage (kV) to assemble a series at: the one its corrected tilts were dose-weighted at
    (their motion records'; the most common when they differ, with a note saying so), else
    ``fallback_kV``."""
    found = []
    for row in rows:
        if row is None or row.status != "done":
            continue
        value = (read_motion_record((row.peek_outputs() or {}).get("motion")) or {}).get(
            "voltage_kV")
        if isinstance(value, (int, float)) and value > 0:
            found.append(float(value))
    if not found:
        return float(fallback_kV), None
    counts = Counter(found)
    voltage = counts.most_common(1)[0][0]
    note = None if len(counts) == 1 else (
        f"tilts corrected at {', '.join(f'{v:g}' for v in sorted(counts))} kV: stacks "
        f"assembled at {voltage:g} kV")
    return voltage, note


def assemble_job(series: str, tilts: list[dict[str, Any]], out_dir: str, voltage_kV: float,
                 exposure_filtered: bool, tilt_axis_deg: float | None = None,
                 mdoc_name: str | None = None) -> dict[str, Any]:
    """Worker-process side of an assembly: plain data in, plain data out (``tilt_axis_deg``,
    °, goes into the stacks' mdocs when known; ``mdoc_name``, the series mdoc's file name,
    names AreTomo3's inputs from the start, so ``aretomo3/`` never holds a second set)."""
    from correction.stack import StackTilt, aretomo_name, assemble_series

    rows = [StackTilt(**{**t, "outputs": {k: Path(v) for k, v in t["outputs"].items()}})
            for t in tilts]
    result = assemble_series(series, rows, out_dir, voltage_kV=voltage_kV,
                             exposure_filtered=exposure_filtered, tilt_axis_deg=tilt_axis_deg,
                             aretomo_name=aretomo_name(mdoc_name) if mdoc_name else None)
    stacks = {k: str(v) for k, v in result.stacks.items()}
    stacks.update(tlt=str(result.tlt_path), csv=str(result.csv_path),
                  mdoc=str(result.mdoc_paths[0]) if result.mdoc_paths else "")
    stacks.update({f"picture_{k}": str(v) for k, v in result.pictures.items()})
    return {"folder": str(result.folder), "stacks": stacks, "order": list(result.order),
            "warnings": list(result.warnings)}


def remove_assembled(stacks: Mapping[str, str], series: str,
                     mdoc_path: str | None = None) -> tuple[str, list[str]]:
    """Remove what an assembly wrote (its result's ``stacks``, a series stem ``series``, its mdoc
    when known: it names the AreTomo3 links): ``(folder, files removed)``; no pixels are read,
    so it runs in the service itself. The folder is ``""`` when ``stacks`` names none."""
    from correction.stack import aretomo_name, remove_series

    sums = [Path(v) for k, v in stacks.items() if k in ("sum", "dw") and v]
    if not sums:
        return "", []
    names = [aretomo_name(Path(mdoc_path).name)] if mdoc_path else []
    removed = remove_series(sums[0].parent, series, aretomo_names=names)
    return str(sums[0].parent), [str(p) for p in removed]
