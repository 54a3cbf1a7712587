"""RELION 5 tomography STAR files of tilt series corrected by motionwatch.

Two files, the layout of RELION 5's motion-correction job output (3dem/relion
``src/tomography_python_programs/import_tilt_series/serialem.py`` writes the import columns;
``src/motioncorr_runner.cpp`` adds the motion-correction ones; DiamondLightSource/cryoem-services
``src/cryoemservices/util/tomo_output_files.py`` writes the same layout live):

* ``OUT/corrected_tilt_series.star``, block ``data_global``, one row per series:
  ``rlnTomoName``, ``rlnTomoTiltSeriesStarFile``, ``rlnVoltage``, ``rlnSphericalAberration``,
  ``rlnAmplitudeContrast``, ``rlnMicrographOriginalPixelSize`` (movie pixel),
  ``rlnTomoHand``, ``rlnOpticsGroupName``, ``rlnTomoTiltSeriesPixelSize`` (corrected image pixel);
* ``OUT/<rel>/<series>/<series>.star``, block ``data_<series>``, one row per corrected tilt in
  acquisition order: ``rlnMicrographMovieName``, ``rlnTomoTiltMovieFrameCount`` (frames in the
  movie file, raw frames for EER: RELION's import copies the mdoc's ``NumSubFrames``,
  :func:`movie_frame_count`),
  ``rlnTomoTiltMovieIndex`` (1-based acquisition index, as RELION's import),
  ``rlnTomoNominalStageTiltAngle``, ``rlnTomoNominalTiltAxisAngle``,
  ``rlnMicrographPreExposure`` (the exact dose before the tilt from the mdoc, not RELION's
  ``index x dose``), ``rlnTomoNominalDefocus`` (the mdoc's ``TargetDefocus``, when every tilt has
  one), ``rlnMicrographName`` (the dose-weighted sum ``S_DW``, see below),
  ``rlnMicrographNameEven``/``Odd`` (``S_EVN``/``S_ODD``), ``rlnMicrographMetadata`` (the
  movie's motion STAR), ``rlnAccumMotionTotal/Early/Late``.

Weighting of the tilt images: the main image and its even/odd halves must be weighted alike
(RELION's denoising reconstructs tomograms from the halves in place of the main images).
RELION 5 itself hands the tomography pipeline unweighted images throughout: for a tomography
motion-correction job ``src/pipeline_jobs.cpp`` ``RelionJob::getCommandsMotioncorrJob`` passes
``--dose_weighting`` only ``if (!is_tomo ...)`` and ``--even_odd_split`` only for tomography, so
its ``rlnMicrographName`` and ``rlnMicrographNameEven/Odd`` are all plain sums, and the
tomography programs weight each tilt by its exposure from ``rlnMicrographPreExposure``.
motionwatch's halves are dose-weighted (plain halves are not written), so the main image
named here is the dose-weighted sum too. Its weights run from the first frame of the tilt and
are normalised per frequency (:mod:`correction.conventions`), so the pre-exposure factor drops
out: the weighting within the tilt is added to RELION's per-tilt weighting from the
pre-exposure, not counted twice. The plain sum stays beside it (``S.mrc``, and the plain
stack).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.handoff.relion import (MovieMotion, RelionOptics, optics_key, optics_keys_in_order,
                                   accumulated_motion_px, motion_star_path, optics_group_names,
                                   relative_to, star_table, written_optics_order)
from daemon.series.tilt_record import TiltRecord

__all__ = ["TILT_SERIES_STAR", "TiltEntry", "MdocFacts", "mdoc_facts", "series_block",
           "global_block", "relion_tomo_name", "relion_tomo_names",
           "movie_frame_count"]

TILT_SERIES_STAR = "corrected_tilt_series.star"


@dataclass(frozen=True, slots=True)
class MdocFacts:
    """What the series tables take from a series mdoc: the nominal tilt axis (°) and each
    section's ``TargetDefocus`` (µm, as written) by the file name of its ``SubFramePath`` and
    by its ``ZValue``. The name comes first: SerialEM renumbers the sections when it re-sorts
    the mdoc by angle at the end of a dose-symmetric series, so a tilt's ``ZValue`` recorded
    during acquisition may then name another tilt's section."""

    tilt_axis_deg: float | None = None
    target_defocus_by_z: Mapping[int, float] | None = None
    target_defocus_by_movie: Mapping[str, float] | None = None


def mdoc_facts(path: str | Path | None) -> MdocFacts:
    """Tilt axis and target defocus of a series mdoc (empty facts when unreadable)."""
    if not path:
        return MdocFacts()
    from daemon.series.mdoc import read_mdoc

    try:
        md = read_mdoc(path)
    except (OSError, ValueError):
        return MdocFacts()
    axis = md.tilt_axis_deg
    by_z: dict[int, float] = {}
    by_movie: dict[str, float] = {}
    for s in md.sections:
        try:
            value = float(dict(s.items).get("TargetDefocus"))
        except (TypeError, ValueError):
            continue
        if s.z_value is not None:
            by_z[int(s.z_value)] = value
        if s.sub_frame_name:
            by_movie[s.sub_frame_name] = value
    return MdocFacts(axis, by_z, by_movie)


def _nominal_defocus(tilt: TiltRecord, movie: str, facts: MdocFacts) -> float | None:
    """The tilt's ``TargetDefocus`` (µm): its section's by movie file name when the mdoc names
    its movies, else by the ``ZValue`` recorded for the tilt; None when neither gives one."""
    if facts.target_defocus_by_movie:
        return facts.target_defocus_by_movie.get(Path(movie).name)
    return (facts.target_defocus_by_z or {}).get(tilt.z_value)


@dataclass(frozen=True, slots=True)
class TiltEntry:
    """One corrected tilt: its motion (RELION view) and its tilt record."""

    motion: MovieMotion
    tilt: TiltRecord


def movie_frame_count(motion: MovieMotion) -> int:
    """``rlnTomoTiltMovieFrameCount`` of a tilt: the frames in the movie FILE, as RELION 5's
    import writes the column (the mdoc's ``NumSubFrames``, copied as it is), whatever the
    motion correction later makes of them. An EER movie counts its raw frames (its pages, as
    SerialEM counts them), not the fractions motionwatch or RELION group them into; the
    grouping belongs to the movie's motion STAR (``rlnEERGrouping``, ``rlnImageSizeZ`` in
    fractions)."""
    if motion.eer_raw_frames:
        return int(motion.eer_raw_frames)
    return int(motion.frames_in_movie)


def series_block(entries: Sequence[TiltEntry], out_dir: str | Path, optics: RelionOptics,
                 facts: MdocFacts = MdocFacts()) -> Any:
    """The per-series table (a DataFrame), tilts in acquisition order."""
    ordered = sorted(entries, key=lambda e: (e.tilt.acquisition_index, str(e.motion.movie)))
    axis = optics.tilt_axis_deg if optics.tilt_axis_deg is not None else facts.tilt_axis_deg
    defocus = [_nominal_defocus(e.tilt, str(e.motion.movie), facts) for e in ordered]
    with_defocus = bool(ordered) and all(d is not None for d in defocus)
    rows = []
    for e, nominal_defocus in zip(ordered, defocus):
        m = e.motion
        total, early, late = accumulated_motion_px(
            m, dose_cutoff_e_A2=optics.motionstats_dose_cutoff_e_A2)
        row: dict[str, Any] = {
            "rlnMicrographMovieName": str(m.movie),
            "rlnTomoTiltMovieFrameCount": movie_frame_count(m),
            "rlnTomoTiltMovieIndex": e.tilt.acquisition_index + 1,
            "rlnTomoNominalStageTiltAngle": float(e.tilt.tilt_deg or 0.0),
            "rlnTomoNominalTiltAxisAngle": float(axis if axis is not None else 0.0),
            "rlnMicrographPreExposure": e.tilt.pre_exposure_e_A2,
        }
        if with_defocus:
            row["rlnTomoNominalDefocus"] = nominal_defocus
        # weighted as the halves are (module docstring)
        row["rlnMicrographName"] = relative_to(m.outputs.get("dw") or m.outputs["sum"], out_dir)
        for kind, label in (("even", "rlnMicrographNameEven"), ("odd", "rlnMicrographNameOdd")):
            if kind in m.outputs:
                row[label] = relative_to(m.outputs[kind], out_dir)
        row.update({"rlnMicrographMetadata": relative_to(motion_star_path(m.motion_path), out_dir),
                    "rlnAccumMotionTotal": total, "rlnAccumMotionEarly": early,
                    "rlnAccumMotionLate": late})
        rows.append(row)
    table = star_table(rows)
    for label in ("rlnMicrographNameEven", "rlnMicrographNameOdd"):
        if label in table and table[label].isna().any():
            table = table.drop(columns=[label])  # a column only when every tilt has the file
    return table


def relion_tomo_name(series: str) -> str:
    """RELION's ``rlnTomoName`` of a series (also the data block of its STAR) where no other
    series takes it (:func:`relion_tomo_names`): the qualified name with ``_`` for ``/``
    (``grid2/TS_01`` -> ``grid2_TS_01``), as RELION puts the name into file names
    (``rec_<name>.mrc``) and two grids may hold a ``TS_01`` each."""
    return series.replace("/", "_")


def relion_tomo_names(series: Iterable[str], kept: Mapping[str, str] | None = None
                      ) -> dict[str, str]:
    """Each series' ``rlnTomoName``, one name per series: RELION finds a tomogram by its name
    (the first row of that name), so two series of one name would be read as one. A series
    named before (``kept``: series -> the name its STAR was written with) keeps that name while
    no other series kept it: a series that comes later never takes a name given (a RELION job
    run on ``a_b_TS_01`` read another grid's tilts once ``a/b/TS_01`` came). Where
    :func:`relion_tomo_name` gives the others one name (``grid1/TS_01`` and a series
    ``grid1_TS_01`` in the watch folder itself), the series of that very name takes it if free,
    and the others, in the order of their names, take ``<name>_2``, ``<name>_3``, ... (the next
    number no series holds). The same series always get the same names."""
    series = set(series)
    kept = dict(kept or {})
    names: dict[str, str] = {}
    for name in sorted(series & set(kept)):
        if kept[name] not in names.values():
            names[name] = kept[name]
    wanted: dict[str, list[str]] = {}
    for name in sorted(series - set(names), key=lambda s: (relion_tomo_name(s) != s, s)):
        wanted.setdefault(relion_tomo_name(name), []).append(name)
    given = set(names.values())
    taken = given | set(wanted)
    for plain, group in sorted(wanted.items()):
        number = 1
        for k, name in enumerate(group):
            if k == 0 and plain not in given:
                names[name] = plain
                continue
            number += 1
            while f"{plain}_{number}" in taken:
                number += 1
            names[name] = f"{plain}_{number}"
            taken.add(names[name])
    return names


def global_block(series: Iterable[tuple[str, Path, MovieMotion]], out_dir: str | Path,
                 optics: RelionOptics, kept: Mapping[str, str] | None = None) -> Any:
    """``data_global`` of ``corrected_tilt_series.star``: ``(name, series STAR path, a motion
    of the series)`` per series; rows sorted by name; ``kept``: the ``rlnTomoName`` given
    before (:func:`relion_tomo_names`). The columns RELION 5's import writes
    (voltage, Cs, amplitude contrast, movie pixel size, hand, optics group name) and the
    tilt-series pixel size its motion correction adds; Cs and amplitude contrast those the
    series' motion record keeps (:mod:`daemon.settings.optics`), else ``optics``'. Series of
    distinct optics (voltage, movie pixel size, tilt-series pixel size, Cs, amplitude contrast)
    get distinct ``rlnOpticsGroupName`` (``optics1``,
    ``optics2``, ... as the file written before named them, new ones in the order of their
    first movie, as ``corrected_micrographs.star`` numbers its groups); one kind of optics
    keeps the configured name."""
    series = sorted(series, key=lambda s: s[0])
    tomo_names = relion_tomo_names((name for name, _, _ in series), kept)
    earlier = written_optics_order(Path(out_dir) / TILT_SERIES_STAR,
                                   output_pixel_label="rlnTomoTiltSeriesPixelSize")
    keys = optics_keys_in_order((m for _, _, m in series), optics, earlier)
    names = dict(zip(keys, optics_group_names(optics.optics_group_name, len(keys))))
    rows = []
    for name, star, m in series:
        key = optics_key(m, optics)  # Cs and amplitude contrast: the record's, else the writer's
        rows.append({"rlnTomoName": tomo_names[name],
                     "rlnTomoTiltSeriesStarFile": relative_to(star, out_dir),
                     "rlnVoltage": m.voltage_kV,
                     "rlnSphericalAberration": key[3],
                     "rlnAmplitudeContrast": key[4],
                     "rlnMicrographOriginalPixelSize": m.movie_pixel_size_A,
                     "rlnTomoHand": optics.tomo_hand,
                     "rlnOpticsGroupName": names[key],
                     "rlnTomoTiltSeriesPixelSize": m.output_pixel_size_A})
    return star_table(rows)
