"""Assemble a completed tilt series into angle-sorted stacks for tomography software.

For a series ``S``, :func:`assemble_series` writes into ``OUT_DIR/S/``:

* ``S.mrc``, ``S_DW.mrc``, ``S_EVN.mrc``, ``S_ODD.mrc``: the plain, dose-weighted, even and
  odd sums of every tilt, one section per tilt, sorted by tilt angle (ties by acquisition
  order), float32, pixel size in the header;
* ``S_EF.mrc`` (optional): the plain sums exposure-filtered like IMOD's ``mtffilter``: each
  tilt's Fourier amplitudes multiplied by ``exp(-D / (2 Ne(k)))`` with ``D`` the dose the
  specimen had received at the end of that tilt (its pre-exposure plus its own dose) and
  ``Ne(k)`` the critical exposure of :mod:`correction.dose`, so later tilts count less;
* ``S.tlt`` and ``S.rawtlt``: one angle per line in stack order (AreTomo ``-AngFile``; IMOD /
  etomo read ``<name>.rawtlt`` beside the stack);
* ``S.st``: a hard link to ``S.mrc`` (IMOD's stack name: ``etomo`` finds ``S.st`` + ``S.rawtlt``);
* ``S_TLT.txt``: AreTomo3's tilt table, one line per stack section: tilt angle, 1-based
  acquisition index, dose of that tilt (e/Å²) (AreTomo3 ``DataUtil/CTsPackage.cpp``: its
  ``mLoadTiltFile`` reads ``<name>_TLT.txt`` before ``<name>.rawtlt``, up to three columns
  ``%f %d %f``; its own writer uses ``%8.2f  %4d  %8.2f``);
* ``aretomo3/``: AreTomo3's inputs, one set weighted alike (:func:`link_aretomo_inputs`): hard
  links ``<name>.mrc`` (the dose-weighted stack ``S_DW.mrc``), ``<name>_EVN.mrc``,
  ``<name>_ODD.mrc`` (the halves, dose-weighted as the tilts' halves are) and
  ``<name>_TLT.txt``, where ``<name>`` is the series mdoc's AreTomo3 name (AreTomo3 names
  everything after the mdoc file name minus its last extension: ``TS_01.mrc.mdoc`` ->
  ``TS_01.mrc``, see :func:`aretomo_name`), else ``S``. ``AreTomo3 -Cmd 1`` finds them given
  the mdoc and this folder as ``-OutDir``, or given ``aretomo3/<name>.mrc`` as the stack. Why a
  folder of their own: AreTomo3 reads ``<name>.mrc`` with ``<name>_EVN.mrc``/``<name>_ODD.mrc``
  beside it, and ``S.mrc`` beside ``S_EVN.mrc`` here is the plain stack;
* ``S.csv``: one row per tilt in stack order (angle, acquisition order, dose, pre-exposure,
  dose source, movie, drift...);
* ``S.mrc.mdoc`` (and one per other stack): a SerialEM-style mdoc of the stack, one
  ``[ZValue]`` per section in stack order with ``TiltAngle``, ``ExposureDose``,
  ``PriorRecordDose`` (= the pre-exposure), ``SubFramePath`` (the movie) and ``DateTime`` when
  known, as AreTomo3, RELION 5 and Warp read them (written by :mod:`correction.mdoc_text`).

Every file is replaced atomically (links too: made under a temporary name, then renamed), so a
re-assembly never leaves a link to the previous stack's data.

:func:`remove_series` removes what :func:`assemble_series` wrote for a series (by these exact
names, nothing else), when the series has no tilts left (they were moved to another series).

Memory: one tilt at a time (each stack is streamed section by section into a temporary file,
its header written last, then renamed into place; see :func:`correction.write.atomic_write`).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import mrcfile
import numpy as np
import scipy.fft

from .dose import dose_weights
from .errors import CorrectionError, ParameterError
from .io.mrc import header_pixel_size_A
from .mdoc_text import format_mdoc, serialem_datetime
from .quicklook import (SERIES_QUICKLOOK_KINDS, SeriesTilt, motion_record_beside,
                        write_series_quicklook)
from .write import atomic_write, mrc_header_bytes, replace_with_hard_link, text_bytes
from .stems import fit_output_stem

__all__ = ["STACK_KINDS", "StackTilt", "StackResult", "assemble_series", "exposure_filter",
           "aretomo_name", "aretomo_tilt_table", "link_aretomo_inputs", "ARETOMO_FOLDER",
           "series_files", "remove_series", "series_shape", "image_geometry"]

#: Per-tilt output kind -> stack file suffix.
STACK_KINDS: dict[str, str] = {"sum": "", "dw": "_DW", "even": "_EVN", "odd": "_ODD"}

_HEADER_BYTES = 1024


@dataclass(frozen=True, slots=True)
class StackTilt:
    """One corrected tilt going into the stacks.

    Attributes
    ----------
    movie : str
        Movie file name.
    tilt_deg : float
        Tilt angle in degrees.
    acquisition_index : int
        Position in acquisition order (0 = first exposed).
    dose_e_A2, pre_exposure_e_A2 : float
        Dose of this tilt and dose received before it (e/Å²).
    dose_source, order_source : str
        Where the dose and the acquisition order came from.
    outputs : mapping of str to Path
        Per-tilt images by kind (``"sum"``, ``"dw"``, ``"even"``, ``"odd"``); each kind present
        in any tilt must be present in all.
    drift_total_A : float or None
        Total drift of the movie (Å), for the table.
    prior_record_dose_difference_e_A2 : float or None
        ``pre_exposure - PriorRecordDose`` where SerialEM gave one.
    acquired_at : str or None
        ISO acquisition time (for the stack mdoc's ``DateTime``).
    exposure_time_s : float or None
        Exposure time (s; for the stack mdoc's ``ExposureTime``).
    movie_path : str or None
        The movie's whole path (its modification time stands for ``acquired_at`` where that
        is unknown); None: ``movie`` is looked up as given.
    """

    movie: str
    tilt_deg: float
    acquisition_index: int
    dose_e_A2: float
    pre_exposure_e_A2: float
    dose_source: str
    order_source: str
    outputs: Mapping[str, Path]
    drift_total_A: float | None = None
    prior_record_dose_difference_e_A2: float | None = None
    acquired_at: str | None = None
    exposure_time_s: float | None = None
    movie_path: str | None = None


@dataclass(frozen=True, slots=True)
class StackResult:
    """What :func:`assemble_series` wrote. ``order`` lists the movies in stack (angle) order."""

    folder: Path
    stacks: Mapping[str, Path]
    tlt_path: Path
    csv_path: Path
    mdoc_paths: tuple[Path, ...]
    order: tuple[str, ...]
    angles_deg: tuple[float, ...]
    pixel_size_A: float
    warnings: tuple[str, ...] = field(default=())
    rawtlt_path: Path | None = None
    aretomo_tlt_path: Path | None = None
    links: tuple[Path, ...] = field(default=())
    pictures: dict[str, Path] = field(default_factory=dict)


def exposure_filter(image: np.ndarray, *, pixel_size_A: float, dose_e_A2: float,
                    voltage_kV: float = 300.0) -> np.ndarray:
    """Attenuate ``image`` as a specimen that has received ``dose_e_A2`` would be.

    Multiplies each Fourier component of frequency ``k`` (1/Å) by ``exp(-D / (2 Ne(k)))``
    (:func:`correction.dose.dose_weights`); ``k = 0`` is unchanged. Float32 in, float32 out.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
    pixel_size_A : float
    dose_e_A2 : float
        Accumulated dose (e/Å²), >= 0.
    voltage_kV : float
    """
    if not pixel_size_A > 0:
        raise ParameterError(f"pixel_size_A must be > 0 Å, got {pixel_size_A}")
    if not dose_e_A2 >= 0:
        raise ParameterError(f"dose_e_A2 must be >= 0 e/Å², got {dose_e_A2}")
    ny, nx = image.shape
    ky = scipy.fft.fftfreq(ny, d=pixel_size_A)
    kx = scipy.fft.rfftfreq(nx, d=pixel_size_A)
    k = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    w = dose_weights(k, float(dose_e_A2), voltage_kV).astype(np.float32)
    spectrum = scipy.fft.rfft2(np.asarray(image, dtype=np.float32), workers=-1)
    spectrum *= w
    return scipy.fft.irfft2(spectrum, s=(ny, nx), workers=-1).astype(np.float32, copy=False)


def _read_slice(path: Path) -> tuple[np.ndarray, float]:
    try:
        with mrcfile.open(path, mode="r", permissive=False) as mrc:
            data = np.asarray(mrc.data, dtype=np.float32)
            pixel = header_pixel_size_A(float(mrc.header.cella.x), int(mrc.header.mx))
    except (OSError, ValueError) as exc:
        raise CorrectionError(path, f"cannot read tilt image: {exc}") from None
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise CorrectionError(path, f"expected one 2-D image, got shape {data.shape}")
    return data, pixel


def _header_facts(path: Path) -> tuple[tuple[int, int], float]:
    """(ny, nx) and pixel size (Å) of a single-image MRC, from its header only."""
    try:
        with mrcfile.open(path, mode="r", header_only=True) as mrc:
            h = mrc.header
            nz, ny, nx = int(h.nz), int(h.ny), int(h.nx)
            pixel = header_pixel_size_A(float(h.cella.x), int(h.mx))  # 1.06, not 1.0600001
    except (OSError, ValueError) as exc:
        raise CorrectionError(path, f"cannot read tilt image: {exc}") from None
    if nz != 1:
        raise CorrectionError(path, f"expected one 2-D image, got {nz} sections")
    return (ny, nx), pixel


def _stream_stack(path: Path, sources: Sequence[Path], shape_yx: tuple[int, int],
                  pixel_size_A: float, labels: tuple[str, ...], transform=None) -> None:
    """Write ``sources`` (2-D MRCs) as one float32 stack, one section at a time."""
    nz = len(sources)

    def write(fh: IO[bytes]) -> None:
        fh.write(b"\0" * _HEADER_BYTES)
        lo, hi, total, total_sq, n = math.inf, -math.inf, 0.0, 0.0, 0
        for i, src in enumerate(sources):
            data, _ = _read_slice(src)
            if data.shape != shape_yx:
                raise CorrectionError(src, f"shape {data.shape} differs from the series' {shape_yx}")
            if transform is not None:
                data = transform(i, data)
            data = np.ascontiguousarray(data, dtype=np.float32)
            lo, hi = min(lo, float(data.min())), max(hi, float(data.max()))
            flat = data.astype(np.float64).ravel()
            total += float(flat.sum())
            total_sq += float(np.dot(flat, flat))
            n += flat.size
            fh.write(memoryview(data).cast("B"))
        mean = total / n
        rms = math.sqrt(max(total_sq / n - mean * mean, 0.0))
        header = mrc_header_bytes((nz, *shape_yx), pixel_size_A=pixel_size_A,
                                  stats=(lo, hi, mean, rms), labels=labels)
        fh.seek(0)
        fh.write(header)

    atomic_write(path, write)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _stack_mdoc(image_file: str, ordered: Sequence[StackTilt], pixel_size_A: float,
                voltage_kV: float, shape_yx: tuple[int, int], tilt_axis_deg: float | None) -> str:
    header = [("PixelSpacing", float(pixel_size_A)), ("Voltage", float(voltage_kV)),
              ("ImageFile", image_file), ("ImageSize", (shape_yx[1], shape_yx[0])),
              ("DataMode", 2)]
    titles = ["motionwatch: tilt series assembled from motion-corrected movies, sorted by angle"]
    if tilt_axis_deg is not None:
        titles.append(f"    Tilt axis angle = {tilt_axis_deg:g}, binning = 1")
    # AreTomo3 (DataUtil/CReadMdoc.cpp, DoIt) skips an mdoc unless it has as many ExposureTime,
    # ExposureDose, SubFramePath and DateTime lines as TiltAngle lines: each section has all
    # five (ExposureTime NaN where the metadata gave none: AreTomo3 then weighs the tilts'
    # exposure times alike; DateTime the movie file's time where no series mdoc gave one)
    acquired = _rising_datetimes(ordered)
    sections = [[("TiltAngle", float(t.tilt_deg)), ("ExposureDose", float(t.dose_e_A2)),
                 ("ExposureTime", math.nan if t.exposure_time_s is None
                  else float(t.exposure_time_s)),
                 ("PriorRecordDose", float(t.pre_exposure_e_A2)),
                 ("PixelSpacing", float(pixel_size_A)), ("SubFramePath", t.movie),
                 ("DateTime", when)] for t, when in zip(ordered, acquired)]
    return format_mdoc(header, sections, titles=titles)


def _rising_datetimes(tilts: Sequence[StackTilt]) -> list[str]:
    """Each tilt's stack-mdoc ``DateTime`` (in the order given), rising along the acquisition
    order:
    Warp's ``ts_import`` orders the tilts by it and gives the i-th i doses. Where a time does
    not come after the one of the tilt acquired before (the PC's clock set back during the
    series, at the end of daylight saving time; two tilts in one second; movies whose
    modification times are those of a copy), it and every later one are moved on by as much
    as it takes to come one interval after it (the median of the series' rising steps, else
    1 s): the order is the one the dose was accumulated in, the intervals as they were."""
    order = sorted(range(len(tilts)), key=lambda i: tilts[i].acquisition_index)
    raw = [_acquired_datetime(tilts[i]) for i in order]
    rising = sorted(b - a for a, b in zip(raw, raw[1:]) if b > a)
    step = rising[len(rising) // 2] if rising else _dt.timedelta(seconds=1)
    out = [""] * len(tilts)
    offset, previous = _dt.timedelta(0), None
    for i, acquired in zip(order, raw):
        when = acquired + offset
        if previous is not None and when <= previous:
            offset += previous - when + step
            when = previous + step
        out[i] = serialem_datetime(when)
        previous = when
    return out


def _acquired_datetime(tilt: StackTilt) -> _dt.datetime:
    """A tilt's acquisition time: its series mdoc's, else the modification time of its movie
    (written as it was recorded), else of its corrected image, in local time as SerialEM
    writes it. A series known from file names alone had none: the stack mdoc lacked every
    ``DateTime`` line, and AreTomo3 skipped it as faulty."""
    if tilt.acquired_at is not None:
        with contextlib.suppress(ValueError, TypeError):
            known = _dt.datetime.fromisoformat(tilt.acquired_at)
            # naive local time, as SerialEM writes it (and as the others are compared)
            return known if known.tzinfo is None else known.astimezone().replace(tzinfo=None)
    movie = Path(tilt.movie_path if tilt.movie_path is not None else tilt.movie)
    for path in (movie, *tilt.outputs.values()):
        try:
            return _dt.datetime.fromtimestamp(os.stat(path).st_mtime)
        except (OSError, ValueError, OverflowError):
            continue
    return _dt.datetime.now()


def image_geometry(shape_yx: object, pixel_size_A: float) -> tuple[object, float]:
    """What the tilts of one stack must share: their images' shape and pixel size (Å, to 4
    significant digits, as headers store it to float32's 7)."""
    return shape_yx, float(f"{pixel_size_A:.4g}")


def series_shape(shapes_in_acquisition_order: Sequence[object]) -> object:
    """The image shape (or :func:`image_geometry`) of a series: the most common of its tilts'
    (None: a tilt whose images disagree), ties going to the one acquired first. A tilt of
    another (a movie of another camera setting, or recorded at another pixel size) is left out
    of the series' stacks and STAR files."""
    shapes = [s for s in shapes_in_acquisition_order if s is not None]
    if not shapes:
        return None
    counts = {s: shapes.count(s) for s in shapes}
    best = max(counts.values())
    return next(s for s in shapes if counts[s] == best)


def aretomo_name(mdoc_name: str) -> str:
    """The name AreTomo3 gives a series read from the mdoc ``mdoc_name``: the file name minus its
    last extension (``TS_01.mrc.mdoc`` -> ``TS_01.mrc``, ``TS_01.mdoc`` -> ``TS_01``), as its
    ``CFileName::GetName`` cuts at the last dot."""
    name = Path(mdoc_name).name
    # shortened, for a name too long to name its files, as output stems are
    return fit_output_stem(name.rsplit(".", 1)[0] if "." in name else name)


def aretomo_dose_shortfall(tilts: Sequence[StackTilt], tolerance_e_A2: float = 0.05
                           ) -> tuple[float, str] | None:
    """``(dose, movie)``: the dose (e/Å²) of exposures outside ``tilts`` that the first tilt
    ``movie`` to follow them counts in its pre-exposure, which AreTomo3's tilt table (each
    tilt's own dose, by acquisition index) cannot say; None when the tilts' own doses add up
    to every pre-exposure."""
    running = 0.0
    for tilt in sorted(tilts, key=lambda t: t.acquisition_index):
        gap = tilt.pre_exposure_e_A2 - running
        if gap > tolerance_e_A2:
            return gap, tilt.movie
        running += tilt.dose_e_A2
    return None


def aretomo_tilt_table(ordered: Sequence[StackTilt]) -> str:
    """AreTomo3's ``_TLT.txt`` for tilts in stack order: angle (°), 1-based acquisition index,
    dose of the tilt (e/Å²), one line per section."""
    return "".join(f"{t.tilt_deg:8.2f}  {t.acquisition_index + 1:4d}  {t.dose_e_A2:8.4f}\n"
                   for t in ordered)


#: The sub-folder of a series folder that holds AreTomo3's inputs (:func:`link_aretomo_inputs`).
ARETOMO_FOLDER = "aretomo3"
_ARETOMO_SUFFIXES = (".mrc", "_EVN.mrc", "_ODD.mrc", "_TLT.txt")


def link_aretomo_inputs(folder: str | Path, series: str, name: str) -> tuple[Path, ...]:
    """Give an assembled series AreTomo3's inputs, weighted alike, in ``folder/aretomo3/``.

    AreTomo3 (czimaginginstitute/AreTomo3 ``DataUtil/CTsPackage.cpp``, ``LoadTiltSeries``)
    loads ``<name>.mrc``, then ``<name>_EVN.mrc`` and ``<name>_ODD.mrc`` if they exist (without
    them it makes no even/odd tomograms), then ``<name>_TLT.txt`` (else ``<name>.rawtlt``), all
    from one folder; it reconstructs each of the three with the same alignment. Its own motion
    correction makes the three alike, none dose-weighted (``MotionCor/Correct/
    CCorrectFullShift.cpp``, ``mGenSums``), and its ``-Cmd 1`` path weights none of them
    (``AreTomo/CAreTomoMain.cpp``: the dose-weighting step is commented out). motionwatch's
    halves are dose-weighted, so the main stack given with them is the dose-weighted one:
    ``<name>.mrc`` links ``S_DW.mrc`` (``S.mrc`` without one, and then no halves). The links
    live in a folder of their own because ``S.mrc`` (the plain stack, IMOD's ``S.st``) sits
    beside ``S_EVN.mrc`` in ``folder``. Links named ``<name>...`` beside the stacks that an
    earlier version made (plain main with weighted halves) are removed.

    Safe to call again: links already right are left alone, after a re-assembly they are
    renewed.

    Returns
    -------
    tuple of Path
        The links made.
    """
    folder = Path(folder)
    if not name or "/" in name or name in (".", ".."):
        raise ParameterError(f"bad AreTomo3 name {name!r}")
    series = fit_output_stem(series)
    weighted = folder / f"{series}_DW.mrc"
    main = weighted if weighted.exists() else folder / f"{series}.mrc"
    targets = {".mrc": main, "_TLT.txt": folder / f"{series}_TLT.txt"}
    if main == weighted:
        targets.update({"_EVN.mrc": folder / f"{series}_EVN.mrc",
                        "_ODD.mrc": folder / f"{series}_ODD.mrc"})
    ours = [folder / f"{series}{kind}.mrc" for kind in ("", "_DW", "_EVN", "_ODD")]
    made = []
    sub = folder / ARETOMO_FOLDER
    for suffix in _ARETOMO_SUFFIXES:
        link = sub / f"{name}{suffix}"
        target = targets.get(suffix)
        if target is not None and target.exists():
            sub.mkdir(exist_ok=True)
            replace_with_hard_link(target, link)
            made.append(link)
        elif link.exists() or link.is_symlink():
            link.unlink()  # a half no longer given with this main stack
        old = folder / f"{name}{suffix}"
        if name != series and old.is_file() and any(
                p.exists() and os.path.samefile(old, p)
                for p in (*ours, folder / f"{series}_TLT.txt")):
            old.unlink()
    return tuple(made)


def assemble_series(series: str, tilts: Sequence[StackTilt], out_dir: str | Path, *,
                    pixel_size_A: float | None = None, voltage_kV: float = 300.0,
                    exposure_filtered: bool = False, tilt_axis_deg: float | None = None,
                    aretomo_name: str | None = None) -> StackResult:
    """Write the angle-sorted stacks, ``.tlt``, per-tilt CSV and mdocs of one series.

    Parameters
    ----------
    series : str
        Series name; files go to ``out_dir/series/``.
    tilts : sequence of StackTilt
        The corrected tilts, any order.
    out_dir : str or Path
        Output root (created if needed).
    pixel_size_A : float or None
        Pixel size of the per-tilt images (Å); ``None`` reads it from the first image header.
    voltage_kV : float
        For the exposure filter and the mdoc.
    exposure_filtered : bool
        Also write ``S_EF.mrc`` (plain sums attenuated by each tilt's accumulated dose).
    tilt_axis_deg : float or None
        Written into the stack mdoc title when known.
    aretomo_name : str or None
        The series' name for AreTomo3 (:func:`aretomo_name` of its mdoc), the name of its
        inputs in ``aretomo3/`` (:func:`link_aretomo_inputs`); None: ``series``.

    Returns
    -------
    StackResult

    Raises
    ------
    CorrectionError
        A tilt image is missing, unreadable or of another shape; a kind is missing for a tilt.
    ParameterError
        No tilts, or a bad series name.
    """
    if not tilts:
        raise ParameterError(f"series {series!r} has no tilts to assemble")
    if not series or "/" in series or "\\" in series or series in (".", ".."):
        raise ParameterError(f"bad series name {series!r}")
    ordered = sorted(tilts, key=lambda t: (t.tilt_deg, t.acquisition_index, t.movie))
    kinds = [k for k in STACK_KINDS if any(k in t.outputs for t in ordered)]
    if "sum" not in kinds:
        raise ParameterError(f"series {series!r}: no plain sums ('sum' outputs) given")
    for t in ordered:
        for k in kinds:
            if k not in t.outputs:
                raise CorrectionError(Path(t.movie), f"no {k!r} output for this tilt of {series}")
    # Check every input's header before writing anything: the series' shape and pixel size are
    # the majority's; a tilt of another (a movie of another camera setting, magnification) is
    # left out of the stacks, named
    headers = {Path(t.outputs[k]): _header_facts(Path(t.outputs[k])) for t in ordered for k in kinds}
    tilt_shapes = [{image_geometry(*headers[Path(t.outputs[k])]) for k in kinds} for t in ordered]
    by_acquisition = sorted(zip(ordered, tilt_shapes), key=lambda ts: ts[0].acquisition_index)
    geometry = series_shape([next(iter(s)) if len(s) == 1 else None for _, s in by_acquisition])
    shape_yx = geometry[0] if geometry is not None else None
    warnings: list[str] = []
    kept = []
    for t, shapes in zip(ordered, tilt_shapes):
        if shapes == {geometry}:
            kept.append(t)
        elif {s for s, _ in shapes} == {shape_yx}:
            warnings.append(f"{series}: {t.movie} left out of the stacks: its pixel size is "
                            f"{' '.join(f'{p:g}' for p in sorted({p for _, p in shapes}))} Å, "
                            f"the series' {geometry[1]:g} Å")
        else:
            warnings.append(f"{series}: {t.movie} left out of the stacks: its images are "
                            f"{' '.join(map(str, sorted({s for s, _ in shapes})))}, the "
                            f"series' {shape_yx}")
    if not kept:
        raise CorrectionError(Path(ordered[0].outputs["sum"]), f"no two tilts of {series} "
                                                               "have images of one shape")
    ordered = kept
    short = aretomo_dose_shortfall(ordered)
    if short is not None:
        gap, first = short
        warnings.append(f"{series}: {gap:.2f} e/Å² exposed outside the stacks' tilts before "
                        f"{first} (a retake's first exposure, a tilt lost or left out) is in "
                        "the tilts' pre-exposures and RELION's STAR, not in AreTomo3's "
                        "_TLT.txt, whose dose sums count the tilts it lists: from that tilt "
                        "on, AreTomo3's pre-exposures are short by it")
    first_pixel = headers[Path(ordered[0].outputs["sum"])][1]
    if pixel_size_A is None:
        if not first_pixel > 0:
            raise CorrectionError(Path(ordered[0].outputs["sum"]), "no pixel size in the header")
        pixel_size_A = first_pixel
    angles = [t.tilt_deg for t in ordered]
    if len(set(angles)) < len(angles):
        warnings.append(f"{series}: repeated tilt angles; ties kept in acquisition order")

    folder = Path(out_dir) / series
    folder.mkdir(parents=True, exist_ok=True)
    stem = fit_output_stem(series)  # the files' names: shortened as movies' stems are
    stacks: dict[str, Path] = {}
    for k in kinds:
        path = folder / f"{stem}{STACK_KINDS[k]}.mrc"
        _stream_stack(path, [Path(t.outputs[k]) for t in ordered], shape_yx, pixel_size_A,
                      (f"{series}: {k} sums sorted by tilt angle",))
        stacks[k] = path
    if exposure_filtered:
        path = folder / f"{stem}_EF.mrc"
        accumulated = [t.pre_exposure_e_A2 + t.dose_e_A2 for t in ordered]

        def ef(i: int, data: np.ndarray) -> np.ndarray:
            return exposure_filter(data, pixel_size_A=pixel_size_A, dose_e_A2=accumulated[i],
                                   voltage_kV=voltage_kV)

        _stream_stack(path, [Path(t.outputs["sum"]) for t in ordered], shape_yx, pixel_size_A,
                      (f"{series}: sums exposure-filtered by accumulated dose",), transform=ef)
        stacks["exposure_filtered"] = path

    tlt_bytes = "".join(f"{a:.2f}\n" for a in angles).encode()
    tlt_path = folder / f"{stem}.tlt"
    atomic_write(tlt_path, lambda fh: fh.write(tlt_bytes))
    rawtlt_path = folder / f"{stem}.rawtlt"
    atomic_write(rawtlt_path, lambda fh: fh.write(tlt_bytes))
    aretomo_bytes = aretomo_tilt_table(ordered).encode()
    aretomo_tlt_path = folder / f"{stem}_TLT.txt"
    atomic_write(aretomo_tlt_path, lambda fh: fh.write(aretomo_bytes))
    links = [folder / f"{stem}.st"]
    replace_with_hard_link(stacks["sum"], links[0])

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["stack_index", "tilt_deg", "acquisition_index", "dose_e_A2", "pre_exposure_e_A2",
                "accumulated_dose_e_A2", "dose_source", "order_source", "movie", "drift_total_A",
                "prior_record_dose_difference_e_A2"])
    for z, t in enumerate(ordered):
        w.writerow([z, f"{t.tilt_deg:.4f}", t.acquisition_index, _fmt(t.dose_e_A2),
                    _fmt(t.pre_exposure_e_A2), _fmt(t.pre_exposure_e_A2 + t.dose_e_A2),
                    t.dose_source, t.order_source, t.movie, _fmt(t.drift_total_A, 3),
                    _fmt(t.prior_record_dose_difference_e_A2)])
    csv_path = folder / f"{stem}.csv"
    csv_bytes = text_bytes(buf.getvalue())  # movie names as they are on disk
    atomic_write(csv_path, lambda fh: fh.write(csv_bytes))

    mdoc_paths = []
    for path in stacks.values():
        text = _stack_mdoc(path.name, ordered, pixel_size_A, voltage_kV, shape_yx, tilt_axis_deg)
        mdoc_path = path.with_name(path.name + ".mdoc")
        payload = text_bytes(text)  # SubFramePath as on disk
        atomic_write(mdoc_path, lambda fh, p=payload: fh.write(p))
        mdoc_paths.append(mdoc_path)
    # IMOD finds an image's metadata as "<image file>.mdoc" (extracttilts, etomo's "extract
    # tilt angles from raw stack header or mdoc", mtffilter's dose): S.st, the name etomo is
    # given, had none (only S.mrc.mdoc), so etomo found no tilt angles for it
    st_mdoc = links[0].with_name(links[0].name + ".mdoc")
    st_payload = text_bytes(_stack_mdoc(links[0].name, ordered, pixel_size_A, voltage_kV,
                                        shape_yx, tilt_axis_deg))
    atomic_write(st_mdoc, lambda fh: fh.write(st_payload))
    mdoc_paths.append(st_mdoc)
    links.extend(link_aretomo_inputs(folder, stem, aretomo_name or stem))
    pictures = write_series_quicklook(folder, stem, [SeriesTilt(
        tilt_deg=t.tilt_deg, image_path=Path(t.outputs.get("dw", t.outputs["sum"])),
        drift_total_A=t.drift_total_A, dose_e_A2=t.dose_e_A2,
        pre_exposure_e_A2=t.pre_exposure_e_A2,
        resolution_A=((motion_record_beside(t.outputs["dw"]).get("resolution") or {}).get(
            "resolution_A") if "dw" in t.outputs else None)) for t in ordered])
    return StackResult(folder=folder, stacks=stacks, tlt_path=tlt_path, csv_path=csv_path,
                       mdoc_paths=tuple(mdoc_paths), order=tuple(t.movie for t in ordered),
                       angles_deg=tuple(angles), pixel_size_A=float(pixel_size_A),
                       warnings=tuple(warnings), rawtlt_path=rawtlt_path,
                       aretomo_tlt_path=aretomo_tlt_path, links=tuple(links),
                       pictures=dict(pictures))


def series_files(series: str) -> tuple[str, ...]:
    """The names :func:`assemble_series` may write into a series folder (relative to it, its
    AreTomo3 links left out: :func:`remove_series` finds those): the stacks (``S_EF.mrc``
    too), their mdocs, the tilt files, ``S.st`` and its mdoc, the table and the pictures."""
    series = fit_output_stem(series)
    stacks = [f"{series}{suffix}.mrc" for suffix in (*STACK_KINDS.values(), "_EF")]
    return (*stacks, *(f"{name}.mdoc" for name in stacks),
            *(f"{series}{suffix}" for suffix in (".tlt", ".rawtlt", "_TLT.txt", ".st",
                                                   ".st.mdoc", ".csv")),
            *(f"{series}{suffix}" for suffix in SERIES_QUICKLOOK_KINDS.values()))


def _aretomo_links(folder: Path, series: str, names: Sequence[str]) -> list[Path]:
    """The AreTomo3 inputs of the series in ``folder`` named after one of ``names`` (in
    ``aretomo3/``, or beside the stacks as an earlier version made them) that are still links
    to its files: a file of that name that is not (AreTomo3's own, the user's) is not ours."""
    ours = [p for p in (folder / name for name in series_files(series)) if p.is_file()]
    links = []
    for name in dict.fromkeys((*names, fit_output_stem(series))):
        for suffix in _ARETOMO_SUFFIXES:
            for link in (folder / ARETOMO_FOLDER / f"{name}{suffix}", folder / f"{name}{suffix}"):
                if link.is_file() and not link.is_symlink() and link not in ours and any(
                        os.path.samefile(link, p) for p in ours):
                    links.append(link)
    return links


def remove_series(folder: str | Path, series: str, *,
                  aretomo_names: Sequence[str] = ()) -> tuple[Path, ...]:
    """Remove what :func:`assemble_series` wrote for ``series`` into ``folder``: its AreTomo3
    links (named after one of ``aretomo_names`` or ``series``, and still links to its files)
    first, then the files of :func:`series_files`; then ``aretomo3/`` and ``folder`` themselves
    when nothing else is left in them. Any other file (AreTomo3's outputs, the user's) stays.

    Each removal is atomic and the whole is safe to call again: a call cut short (a killed
    service) is finished by the next one. The links go first, while the files they link can
    still tell them from files of the same name that are not ours.

    Returns
    -------
    tuple of Path
        The files removed.
    """
    folder = Path(folder)
    if not series or "/" in series or "\\" in series or series in (".", ".."):
        raise ParameterError(f"bad series name {series!r}")
    removed = []
    for path in (*_aretomo_links(folder, series, aretomo_names),
                 *(folder / name for name in series_files(series))):
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    for empty in (folder / ARETOMO_FOLDER, folder):
        with contextlib.suppress(OSError):  # missing, or holds files that are not ours
            empty.rmdir()
    return tuple(removed)
