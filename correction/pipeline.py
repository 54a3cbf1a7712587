"""The one sequencer of the correction library: movie file in, four images and a record out.

Steps of :func:`correct_movie`:

1. read the movie (:func:`correction.io.read_movie`, frames stay in their stored dtype,
   memory-mapped for MRC; a compressed TIFF or EER movie of more than 1 GiB decoded is
   decoded into an unnamed temporary file in the output folder and memory-mapped too,
   :mod:`correction.io.spill`); pixel size from ``ReadParams.pixel_size_A``, else the header, else
   :class:`~correction.errors.MissingPixelSizeError`;
2. drop ``throw_frames``/``trunc_frames`` (their dose still counts);
3. hot pixels: detected once on ``(sum of raw frames - n dark) * gain``
   (:func:`correction.defects.detect_hot_pixels`); before the gain is applied, the same sum
   checks the gain orientation (:mod:`correction.gain_orientation`, central window);
4. frame by frame: ``(raw - dark) * gain`` with defects and hot pixels replanted from their
   neighbours (:func:`correction.gain.apply_gain`), padded with the movie's mean from step 3
   (without hot-pixel detection, the frame's) to a fast FFT length at least ``max_shift_px`` (+2)
   larger on each axis (:func:`summation.pad_frame`), ONE forward FFT (with the movie's mean known,
   no padded frame is written: the padded rows are made a band at a time from the raw rows,
   :class:`gained_rows.GainedRows`, and each band is transformed while in cache,
   :func:`fourier.rfft2_cropped_of_rows`; the same values to the bit), Fourier-cropped to the
   output grid (``bin_factor``) and, as a copy, to the alignment grid (short side about
   ``align_size_px``; for a frame at least 8 times that grid, a super-resolution one, the alignment
   crop is made from the frame's 2 x 2 block sums instead, :func:`grids.align_from_block_sums`);
   for the frames whose output spectra are not kept (over the budget,
   :func:`memory_model.frames_kept`; all when the sums come from tiles, a patch grid on unbinned
   output), only the alignment crop (:func:`fourier.rfft2_cropped`), and they are transformed once
   more in step 6; a central window of each gain-corrected frame is added to an even or an odd sum,
   whose FRC in detector coordinates says whether the frames share a fixed pattern (a missing or
   unfitting gain, warned about: :mod:`correction.detector_pattern`);
5. whole-frame alignment on the alignment grid (:func:`align_global.estimate_shifts`; shifts
   that follow noise at weak peaks are replaced by a smooth path in time:
   :func:`path_fit.whole_frame_alignment`), shifts scaled to output pixels; if any exceeds the
   padding the frames are redone with more padding (so no content can wrap around);
5b. local motion (``AlignParams.patches_x/y`` > 1): patch shifts on the globally aligned
   alignment-grid spectra and a smooth model (:func:`align_local.estimate_local_motion`);
   falls back to global only, with a reason, when the patches carry too little signal;
6. shifted, dose-weighted sums in Fourier space (:func:`summation.accumulate_sums`), four
   inverse FFTs, crop; or, when local correction applies, the same four sums with global +
   local shifts by tile-wise Fourier shifts (:func:`local_apply.local_sums`);
7. writes as one set (:class:`write.OutputSet`): ``S.mrc``, ``S_DW.mrc``, ``S_EVN.mrc``,
   ``S_ODD.mrc`` (float32, pixel size in the header) and ``S.motion.json``
   (:func:`report.motion_record`: with the gain, dark and defect files and their SHA-256, and
   the software version) are all written and fsynced under hidden temporary names, then
   renamed into place, the record last; a failed write (full disk) leaves none of them.
   :func:`prepare_movie` stops before this step and returns a :class:`PreparedMovie`, whose
   ``write()`` does it (a caller may correct the next movie meanwhile; :func:`correct_movie`
   is both).

Memory: frames are converted and transformed one at a time; only their complex64 spectra (on the
padded output grid) are kept, all of them while they fit ``memory_model.SPECTRA_BUDGET_BYTES``,
else those of the first frames as far as they raise no stage of the predicted peak
(:func:`memory_model.frames_kept`): the forward pass makes only the alignment data of the others,
and the sums transform those once more. With a patch grid on unbinned output the spectra are kept
the same way, for a movie whose local model is not applied (the common case at tomography dose);
when it is applied they are released and the sums come from the tiles of
:func:`local_apply.local_sums`, which read the gain-corrected frames a band of rows at a time
(:class:`gained_rows.GainedRows`), as they do when none was kept. A memory-mapped movie over
``memory_model.MAPPED_BUDGET_BYTES`` has its pages dropped once used, so its resident share does
not grow with the frame count. :func:`memory_model.predict_peak_bytes` states the model; the
prediction is in the motion record (``memory``). While a movie is corrected, every block comes from
glibc's heap and freed blocks are reused whatever their size (each fresh page costs a fault and the
kernel's clearing, several microseconds here); the free memory is returned afterwards
(:mod:`correction.allocator`).
"""

from __future__ import annotations

import dataclasses
import errno
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import memory_model
from .allocator import drop_mapped_pages as _drop_mapped
from .allocator import movie_memory_settings, peak_resident_MB
from .align_global import GlobalAlignment
from .align_local import LocalMotion, estimate_local_motion, local_motion_record
from .defects import (detect_hot_pixels, first_coordinates_yx, gross_outliers, plan_replacement,
                      rasterize_defects, relion_reads_defect_list)
from .detector_pattern import DetectorPatternCheck, HalfSumWindows
from .dose_counts import DoseCount, check_dose_count
from .dose import accumulated_dose_e_A2, frame_doses_e_A2
from .errors import (CorrectionError, FrameSelectionError, GainReferenceError,
                     MissingPixelSizeError, OutputClashError, ParameterError,
                     UnreadableMovieError)
from .fourier import (fourier_crop, irfft2, rfft2, rfft2_cropped, rfft2_cropped_of_2x2,
                      rfft2_cropped_of_rows, sum_2x2, sum_2x2_of_rows)
from .frc import FRCResolution, even_odd_resolution_fast, even_odd_resolution_from_spectra
from .camera_defects import SUBAREA_NOTE
from .gain import GainReference, apply_gain, load_gain_reference, reference_for_movie
from .gain_orientation import (DEFAULT_CROP_PX, GainOrientationCheck, central_window,
                               check_gain_orientation)
from .gained_rows import GainedRows, sum_raw_frames
from .grids import EXTRA_MARGIN_PX, Grids, align_from_block_sums, plan_grids
from .hot_lines import HotLines, detect_hot_lines
from .local_apply import local_sums
from .memory_model import MemoryEstimate, frames_kept_for, predict_peak_bytes
from .params import CorrectionParams, pixel_size_problem
from .path_fit import peaks_are_weak, whole_frame_alignment
from .quicklook import QUICKLOOK_KINDS, movie_quicklook_files
from .report import (MAX_REPLACED_PIXELS_LISTED, DriftStats, ReplacedPixels, drift_stats,
                     motion_record, movie_pixel_size_record, reference_record, software_record)
from .stems import fit_output_stem, stem_recorded_for_another, stems_sharing_an_output
from .summation import SumImages, accumulate_sums, frame_mean, sums_to_images
from .threads import run_chunks

__all__ = ["CorrectedFrames", "CorrectionResult", "MemoryEstimate", "PreparedMovie",
           "correct_frames", "correct_movie", "output_names", "predict_peak_bytes",
           "prepare_movie"]

#: output kind -> file name pattern (``{stem}`` = movie stem)
_OUTPUT_PATTERNS = {"sum": "{stem}.mrc", "dw": "{stem}_DW.mrc", "even": "{stem}_EVN.mrc",
                    "odd": "{stem}_ODD.mrc", "motion": "{stem}.motion.json"}


def output_names(stem: str) -> dict[str, str]:
    """File names of the five outputs of a movie with stem ``stem``."""
    return {kind: pattern.format(stem=stem) for kind, pattern in _OUTPUT_PATTERNS.items()}




@dataclass(frozen=True, slots=True)
class CorrectedFrames:
    """Result of :func:`correct_frames` (nothing written).

    Attributes
    ----------
    images : SumImages
        ``sum``, ``dw``, ``even``, ``odd``: float32, shape ``shape_yx``.
    shifts_yx_px : ndarray, shape (n_used, 2)
        Displacement of the specimen per frame used, output pixels
        (:mod:`correction.conventions`), mean zero.
    alignment : GlobalAlignment
        The alignment result on its own grid.
    pixel_size_A : float
        Output pixel size (Å).
    shape_yx : (int, int)
        Output image shape.
    frame_doses_e_A2 : ndarray, shape (n_frames_in_movie,)
    frames_used : (int, int)
        First and one-past-last frame index used.
    n_hot_pixels : int
        Pixels found hot, those of hot lines included.
    padding_px : (int, int)
        Padding of the output grid on each axis (the largest shift that cannot wrap).
    movie_shape_yx : (int, int)
        Frame size of the movie as read (an EER movie's at its sampling), movie pixels.
    replaced : ReplacedPixels
        The replaced pixels RELION's polishing is told of in ``data_hot_pixels``
        (:func:`_pixels_to_tell_relion`).
    timings_s : dict
    local : LocalMotion or None
        Patch-based local motion (:mod:`correction.align_local`); when ``local.applied`` the
        four images carry global + local correction (:mod:`correction.local_apply`).
    resolution : FRCResolution or None
        Even/odd FRC resolution (1/7 rule, :mod:`correction.frc`), from the half spectra of the
        even and odd sums before their inverse transforms (global correction), or from the
        locally corrected even and odd images.
    gain_orientation : GainOrientationCheck or None
        Whether another gain orientation fits the raw sum clearly better than the configured
        ``params.gain`` one (:mod:`correction.gain_orientation`, central 512 x 512 window);
        None without a gain file.
    detector_pattern : DetectorPatternCheck or None
        Whether the gain-corrected frames share a pattern fixed to the detector (a missing or
        unfitting gain reference, :mod:`correction.detector_pattern`, central 1024 x 1024
        window); None for frames under 64 pixels on a side.
    hot_lines : HotLines
        Rows and columns found hot or dead (:mod:`correction.hot_lines`), replaced as hot
        pixels.
    alignment_advice : tuple of str
        Lines on an alignment the data may not support (:func:`alignment_advice`).
    dose_count : DoseCount or None
        The dose per frame the frames count, against the dose given
        (:mod:`correction.dose_counts`); None but for counting data (integer frames, no dark
        reference) with hot-pixel detection on.
    """

    images: SumImages
    shifts_yx_px: np.ndarray
    alignment: GlobalAlignment
    pixel_size_A: float
    shape_yx: tuple[int, int]
    frame_doses_e_A2: np.ndarray
    frames_used: tuple[int, int]
    n_hot_pixels: int
    padding_px: tuple[int, int]
    movie_shape_yx: tuple[int, int] = (0, 0)
    replaced: ReplacedPixels = field(default_factory=ReplacedPixels)
    timings_s: dict[str, float] = field(default_factory=dict)
    local: LocalMotion | None = None
    resolution: FRCResolution | None = None
    gain_orientation: GainOrientationCheck | None = None
    detector_pattern: DetectorPatternCheck | None = None
    hot_lines: HotLines = field(default_factory=HotLines)
    alignment_advice: tuple[str, ...] = ()
    dose_count: DoseCount | None = None


@dataclass(frozen=True, slots=True)
class CorrectionResult:
    """Result of :func:`correct_movie`.

    Attributes
    ----------
    movie_path : Path
    outputs : dict
        ``"sum"``, ``"dw"``, ``"even"``, ``"odd"``, ``"motion"`` -> written Path.
    record : dict
        The motion record written to ``outputs["motion"]``.
    shifts_yx_px : ndarray, shape (n_used, 2)
        Output pixels, :mod:`correction.conventions`.
    drift : DriftStats
    timings_s : dict
    """

    movie_path: Path
    outputs: dict[str, Path]
    record: dict[str, Any]
    shifts_yx_px: np.ndarray
    drift: DriftStats
    timings_s: dict[str, float]


@dataclass(slots=True)
class PreparedMovie:
    """A corrected movie whose outputs are not written yet (:func:`prepare_movie`).

    :meth:`write` writes them as one set, the quick-look pictures drawn meanwhile, and returns
    the :class:`CorrectionResult`. A caller may correct the next movie while it runs (the
    daemon's workers do): the four images stay in memory until then.

    Attributes
    ----------
    movie_path : Path
    out_dir : Path
    stem : str
    outputs : dict
        ``"sum"``, ``"dw"``, ``"even"``, ``"odd"``, ``"motion"`` -> Path to be written.
    images : SumImages
    pixel_size_A : float
        Of the images (Å).
    record : dict
        The motion record (``timings_s`` gets ``quicklook`` when written).
    shifts_yx_px : ndarray, shape (n_used, 2)
    timings_s : dict
        Stage timings so far (s); :meth:`write` adds ``write`` and updates ``total``.
    started_s : float
        ``time.perf_counter()`` when the movie was begun.
    named_as : Path or None
        The movie's path as its user names it, for the images' labels, where it was read
        under another (a cluster node's mount of the session); None: ``movie_path``.
    """

    movie_path: Path
    out_dir: Path
    stem: str
    outputs: dict[str, Path]
    images: SumImages
    pixel_size_A: float
    record: dict[str, Any]
    shifts_yx_px: np.ndarray
    timings_s: dict[str, float]
    started_s: float
    named_as: Path | None = None

    def write(self) -> CorrectionResult:
        """Write the four images, the pictures and the motion record (last) as one set.

        Raises
        ------
        OSError
            A write failed (``errno`` kept); no output of the set is left behind.
        """
        from .write import OutputSet, json_writer, mrc_writer  # noqa: PLC0415

        t = time.perf_counter()
        record, img = self.record, self.images
        label = movie_labels(self.named_as or self.movie_path)
        # all as one set: the images are written (temporaries) while the pictures are drawn,
        # the files renamed into place only when all are written, the record last
        with OutputSet() as output_set:
            for kind, image in (("sum", img.sum), ("dw", img.dw), ("even", img.even),
                                ("odd", img.odd)):
                output_set.add(self.outputs[kind], mrc_writer(
                    image, pixel_size_A=self.pixel_size_A, labels=label))
            # quick-look pictures (correction/quicklook.py): written with the set; a picture
            # that cannot be drawn is recorded, never a reason to lose the movie
            t_pictures = time.perf_counter()
            try:
                pictures = movie_quicklook_files(self.out_dir, self.stem, dw_image=img.dw,
                                                 record=record)
                record["quicklook"] = {k: p.name for k, (p, _) in zip(QUICKLOOK_KINDS,
                                                                      pictures)}
            except Exception as exc:  # noqa: BLE001 - pictures are a view, not a result
                pictures = []
                record["quicklook"] = {"error": f"{type(exc).__name__}: {exc}"}
            record["timings_s"]["quicklook"] = round(time.perf_counter() - t_pictures, 3)
            if "memory" in record:  # the peak so far, the pictures' spectra included
                record["memory"]["process_peak_MB"] = round(peak_resident_MB())
            for path, writer in [*pictures, (self.outputs["motion"], json_writer(record))]:
                output_set.add(path, writer)
            output_set.commit()
        timings = dict(self.timings_s)
        timings["write"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - self.started_s
        return CorrectionResult(movie_path=self.movie_path, outputs=self.outputs,
                                record=record, shifts_yx_px=self.shifts_yx_px,
                                drift=drift_stats(self.shifts_yx_px, self.pixel_size_A),
                                timings_s=timings)


def movie_labels(movie_path: Path, width: int = 80) -> tuple[str, str]:
    """The MRC header labels naming an output's movie: its name, and its folder (absolute, its
    last ``width`` characters; two grids' sessions have the same movie names)."""
    folder = str(Path(movie_path).absolute().parent)
    prefix = "from: "
    if len(prefix) + len(folder) > width:
        folder = "..." + folder[-(width - len(prefix) - 3):]
    return f"motionwatch: {Path(movie_path).name}", prefix + folder


@dataclass(frozen=True, slots=True)
class _From:
    """``source(first + i)``: frames of a part of the movie by their index in the part."""

    source: Callable[[int], np.ndarray]
    first: int

    def __call__(self, i: int) -> np.ndarray:
        return self.source(self.first + i)


@dataclass(frozen=True, slots=True)
class _BinnedFrames:
    """The Fourier-binned output frames for the local sums, one inverse FFT each from
    ``frame_spectrum(i)``, which must give a spectrum that nothing else uses (one made for
    the call, or a kept one released): the transform overwrites it. Each frame is a new
    array (``fresh_frames``: :func:`local_apply.local_sums` keeps it without a copy). So a
    frame in flight is its spectrum and its image, not also a copy of each (a
    super-resolution frame binned by 2: 0.19 GB less at the local sums' peak). A class of
    the module, not of the function that corrects a movie: a class made per call is a
    reference cycle, and it kept the movie's frames (through the closures it referred to)
    alive until the garbage collector ran, so that the next movie of a run could start with
    the previous one's frames still in memory."""

    n: int
    frame_spectrum: Callable[[int], np.ndarray]
    grids: Grids
    workers: int
    fresh_frames: bool = True

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        image = irfft2(self.frame_spectrum(i), self.grids.padded_out, workers=self.workers,
                       overwrite_x=True)
        return image[:self.grids.out_yx[0], :self.grids.out_yx[1]]


def unaligned_message(alignment: GlobalAlignment) -> str:
    """One line for a movie whose whole-frame alignment the data did not support."""
    if alignment.note:  # not the peaks: e.g. every frame in one group
        return alignment.note
    return (f"too little signal to align: the frames' correlation peaks stand "
            f"{alignment.peak_significance:.1f} standard deviations above their maps' mean, "
            f"which noise alone reaches ({alignment.noise_peak_significance:.1f}); the frames "
            "are summed without shifts (alignment.supported false in the motion record)")


#: the smallest output image side (pixels) a --bin may leave
MIN_OUTPUT_PX = 32

#: electrons per correlated sum below which whole-frame alignment follows noise (``--group``)
FEW_ELECTRONS_PER_SUM = 250_000
_UNCONVERGED_PX = 1.0  # a last iteration that still moved a frame this far (alignment pixels)


def alignment_advice(alignment: GlobalAlignment, mean_per_px: float | None,
                     shape_yx: tuple[int, int], *, n_used: int, group_frames: int,
                     counting: bool) -> tuple[str, ...]:
    """Lines for an alignment the data may not support, each also a warning:

    * frames of a counting detector with fewer than :data:`FEW_ELECTRONS_PER_SUM` electrons
      (``mean_per_px``, counts per pixel and frame, times the frame's pixels) aligned one by
      one, whose correlation peaks stand less than :data:`~correction.path_fit.WEAK_PEAK_FACTOR`
      times above what
      noise reaches: single frames' peaks are then noise often enough to put frames pixels to
      tens of pixels off without the noise test noticing (a weak specimen at 0.02-0.03
      e/px/frame on 1440 x 1024: peaks 1.1x noise's), and ``--group`` sums of enough frames
      are 1.5-3x more precise (a specimen of strong contrast, peaks 2x noise's at 65,000
      electrons per frame, aligns well frame by frame; so can a small frame whose peaks the
      specimen widens: 192 x 256 at 98,000 electrons, peaks at noise's, 0.04 px, advised all
      the same, as advice); such frames summed without shifts (their peaks did not clear
      noise's) are advised the same group: 16 frames of 29,000 electrons, 2.4-2.6 px off
      unaligned, 1.1-1.8 px with ``--group 4``; one group is advised per movie (at least four
      groups: :func:`_advised_group`), also by the lines below;
    * otherwise, weak peaks (as above) at any count that stand no higher than noise's but
      do not scatter (so the alignment was kept), or that leave the alignment unsettled after
      its last iteration: a weak specimen (8 frames of 1.5 million electrons at 3-5 %
      contrast after 100 e/Å²: 1.1-4.0 px off, against 2.7 px unaligned, with nothing said;
      ``--group 2`` 0.5-3.0 px; at 10 % contrast 0.25 px, settled, nothing said);
    * shifts replaced by a smooth path in time because, at weak peaks, the measured ones
      scattered by more than a pixel about it (:func:`correction.path_fit.with_fitted_path`;
      that late tilt 0.84-1.67 px off after it, 2.71-3.56 px before);
    * a whole-frame alignment whose last iteration still moved a frame by more than a pixel
      (it did not converge)."""
    lines = []
    per_frame = (None if mean_per_px is None or not counting
                 else float(mean_per_px) * shape_yx[0] * shape_yx[1])
    weak = peaks_are_weak(alignment)  # False where not measured
    few = (group_frames == 1 and per_frame is not None
           and 0 < per_frame < FEW_ELECTRONS_PER_SUM)
    advised = _advised_group(per_frame, n_used) if few else None
    if few and advised is not None and not alignment.supported and not alignment.note:
        # (a note: not the peaks, e.g. one frame with counts, which no grouping mends)
        lines.append(f"about {per_frame:,.0f} electrons per frame, fewer than "
                     f"{FEW_ELECTRONS_PER_SUM:,}: too few for single frames, which were summed "
                     f"without shifts; --group {advised} (MotionCor2's -Group) aligns sums of "
                     "frames, which may find the shifts")
    elif (few and advised is not None and alignment.supported and weak
            and np.isfinite(alignment.peak_significance)):
        lines.append(f"about {per_frame:,.0f} electrons per frame, fewer than "
                     f"{FEW_ELECTRONS_PER_SUM:,}, and correlation peaks barely above noise's: "
                     "the shifts of single frames may follow noise; --group "
                     f"{advised} (MotionCor2's -Group) aligns sums of frames")
    elif alignment.supported and weak and np.isfinite(alignment.peak_significance) and (
            alignment.peak_significance < alignment.noise_peak_significance
            or not alignment.converged):
        group = 2 * group_frames
        grouped = (f"; --group {group} (MotionCor2's -Group) aligns sums of frames"
                   if n_used // group >= 3 else "")
        sigmas = (f"{alignment.peak_significance:.1f} standard deviations against noise's "
                  f"{alignment.noise_peak_significance:.1f}")
        why = (f"correlation peaks no higher than noise reaches ({sigmas})"
               if alignment.peak_significance < alignment.noise_peak_significance else
               f"correlation peaks barely above noise's ({sigmas}) and an alignment that did "
               f"not settle (its last iteration moved a frame {alignment.last_update_px:.2f} "
               "px, alignment grid)")
        lines.append(f"{why}: a weak specimen (thick ice, high tilt, damage), whose shifts may "
                     f"be pixels off{grouped}")
    if alignment.fitted_path is not None:
        path = alignment.fitted_path
        shape = {1: "straight", 2: "quadratic"}.get(path.degree, f"degree-{path.degree}")
        group = advised or 2 * group_frames  # one --group advised per movie
        grouped = (f"; --group {group} (MotionCor2's -Group) aligns sums of frames"
                   if n_used // group >= 3 else "")
        lines.append(f"shifts fitted to a smooth path: at correlation peaks barely above "
                     f"noise's, the measured shifts scattered by {path.scatter_px:.1f} px (RMS) "
                     f"about a {shape} path in time; the frames were aligned again from that "
                     "path and shifted along the path fitted to the new shifts "
                     f"(alignment.fitted_path in the motion record){grouped}")
    if alignment.supported and not alignment.converged \
            and alignment.last_update_px > _UNCONVERGED_PX:
        lines.append(f"the whole-frame alignment did not converge: its last iteration still "
                     f"moved a frame {alignment.last_update_px:.1f} px (alignment grid); the "
                     "shifts may be off")
    return tuple(lines)


def _advised_group(electrons_per_frame: float, n_used: int) -> int | None:
    """The ``--group`` advised for frames of few electrons: enough frames for
    :data:`FEW_ELECTRONS_PER_SUM` per sum, but at least four groups (fewer leave the shifts
    of the frames between their centres to a line through two or three points: 12 frames at
    42,000 electrons, ``--group 6``, 1.5-3.3 px off against 1.1-2.1 px ungrouped); None below
    two frames a group."""
    group = min(int(np.ceil(FEW_ELECTRONS_PER_SUM / electrons_per_frame)), n_used // 4)
    return group if group >= 2 else None


def _rounded(value: float, digits: int) -> float | None:
    """``value`` rounded for JSON; None for NaN."""
    return round(float(value), digits) if np.isfinite(value) else None


def correct_frames(frames: np.ndarray, *, pixel_size_A: float, params: CorrectionParams,
                   gain_reference: GainReference | None = None,
                   movie_path: str | Path | None = None, workers: int = -1,
                   raw_frames_per_frame: tuple[int, ...] | None = None,
                   raw_frames_per_group: int | None = None,
                   super_resolution_factor: int = 1,
                   gain_binned_by: int = 1) -> CorrectedFrames:
    """Gain-correct, align, dose-weight and sum the frames of one movie (nothing written).

    Parameters
    ----------
    frames : ndarray, shape (n_frames, ny, nx)
        All frames of the movie in their stored dtype (may be a memmap); ``throw_frames`` and
        ``trunc_frames`` of ``params.read`` are dropped here.
    pixel_size_A : float
        Pixel size of the frames as stored (Å).
    params : CorrectionParams
    gain_reference : GainReference, optional
        Oriented gain/dark/defects (:func:`correction.gain.load_gain_reference`).
    movie_path : str or Path, optional
        Only for error messages.
    workers : int
        Threads for :mod:`scipy.fft`.
    raw_frames_per_frame : tuple of int, optional
        Raw frames summed into each frame (EER fractions, ``Movie.raw_frames_per_frame``): the
        movie's dose is spread over uneven fractions in proportion to these counts
        (:func:`correction.dose.frame_doses_e_A2`).
    raw_frames_per_group : int, optional
        Raw frames of a whole fraction (the EER group), of which ``dose_per_frame_e_A2`` is the
        dose (default: the first fraction's count).
    super_resolution_factor : int
        Sub-pixels per physical pixel that the movie declares (EER sampling 2: 2). A gain
        reference is expanded onto the frames only by exactly this factor; any other shape
        that is not the frames' is refused (:meth:`correction.gain.GainReference.fit_to`).
    gain_binned_by : int
        The reference was combined onto the frames' grid from one this many times finer (an
        8K EER gain for frames decoded at 4K): RELION combines it its own way, and masks a
        pixel only where all its sub-pixels are defects, so every replaced pixel is listed
        for it (``replaced``).

    Returns
    -------
    CorrectedFrames

    Raises
    ------
    GainReferenceError
        Reference shape does not fit the frames.
    ParameterError, CorrectionError
        Bad dose list length, a single image, fewer than 2 frames left after throw/trunc.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if not isinstance(params, CorrectionParams):
        raise ParameterError(f"params must be a CorrectionParams, got {type(params).__name__}")
    if not isinstance(frames, np.ndarray):
        raise ParameterError(f"frames must be a numpy array (frames, ny, nx), got "
                             f"{type(frames).__name__}")
    if frames.ndim != 3:
        raise CorrectionError(movie_path, f"movie must be 3-D (frames, ny, nx), got shape "
                                          f"{frames.shape}")
    if frames.dtype.kind not in "uif":
        raise CorrectionError(movie_path, f"frames of dtype {frames.dtype}: counts are integer "
                                          "or real floating-point numbers")
    if isinstance(pixel_size_A, bool) or not (
            isinstance(pixel_size_A, (int, float, np.floating)) and 0 < pixel_size_A < np.inf):
        raise ParameterError(f"pixel_size_A must be a finite number > 0 Å, got {pixel_size_A!r}")
    if (problem := pixel_size_problem(float(pixel_size_A))) is not None:
        raise CorrectionError(movie_path, f"pixel size {problem}")
    n_all, ny, nx = (int(v) for v in frames.shape)
    rp, ap, dp = params.read, params.align, params.dose
    if min(ny, nx) / rp.bin_factor < MIN_OUTPUT_PX:
        raise FrameSelectionError(movie_path, f"--bin {rp.bin_factor:g} leaves images of "
                                              f"{nx / rp.bin_factor:.0f} x "
                                              f"{ny / rp.bin_factor:.0f} px of the {nx} x {ny} "
                                              f"frames: at least {MIN_OUTPUT_PX} px are needed")
    first, stop = rp.throw_frames, n_all - rp.trunc_frames
    if n_all < 2 and raw_frames_per_frame is not None and sum(raw_frames_per_frame) > 1:
        # an EER movie whose raw frames all went into one fraction: a movie, grouped too coarsely
        raw = int(sum(raw_frames_per_frame))
        by = f" by {raw_frames_per_group}" if raw_frames_per_group else ""
        how = ("the frame integration file's second column" if rp.frame_integration else
               "--eer-group or --eer-dose-per-fraction; TOML eer_group or eer_dose_per_fraction")
        raise FrameSelectionError(movie_path, f"its {raw} raw EER frames grouped{by} make 1 "
                                              "fraction: nothing to align; group fewer raw "
                                              f"frames per fraction ({how})")
    if n_all == 0:
        raise CorrectionError(movie_path, "no frames")
    if n_all < 2:  # EPU's and SerialEM's single images (atlas, grid square, gain) share suffixes
        raise CorrectionError(movie_path, "a single image (1 frame), not a movie")
    if stop - first < 2:  # one frame: nothing to align, no odd frame for the half sums
        raise FrameSelectionError(movie_path, f"throw {rp.throw_frames} + trunc "
                                              f"{rp.trunc_frames} frames leave "
                                              f"{max(0, stop - first)} of {n_all}: at least 2 "
                                              "are needed")
    try:
        doses_all = frame_doses_e_A2(dp, n_all, raw_frames_per_frame=raw_frames_per_frame,
                                     raw_frames_per_group=raw_frames_per_group)
    except ParameterError as exc:
        raise CorrectionError(movie_path, exc.reason) from None
    dose_end = accumulated_dose_e_A2(doses_all, dp.pre_exposure_e_A2)[first:stop]
    if gain_reference is not None:  # a physical-pixel gain is repeated onto EER sampling-2 frames
        gain_reference = gain_reference.fit_to(
            (ny, nx), movie_path, super_resolution_factor=super_resolution_factor)
        _check_defects_in_frame(gain_reference, (ny, nx))
    used = frames[first:stop]
    n = stop - first

    # one pass over the raw frames: the gain-corrected sum, (sum raw - n dark) * gain, gives the
    # hot pixels and the mean used to pad every frame
    bad = gain_reference.defect_mask.copy() if gain_reference is not None and \
        gain_reference.defect_mask is not None else None
    n_hot = 0
    hot_lines = HotLines()
    fill = None
    orientation: GainOrientationCheck | None = None  # checked on the raw sum it makes
    t_orientation = 0.0
    dose_count: DoseCount | None = None

    def counted(raw_mean: float) -> DoseCount:
        """The dose given against the one the frames count (said when they disagree)."""
        count = check_dose_count(raw_mean, pixel_size_A, float(np.mean(doses_all[first:stop])),
                                 eer=raw_frames_per_frame is not None)
        if count.mismatch:
            warnings.warn(count.mismatch, stacklevel=3)
        return count

    if not params.gain.detect_hot_pixels and used.dtype.kind in "iu" and (
            gain_reference is None or gain_reference.dark is None):
        # no pass over the raw sum: the counts' mean from every 16th row (a sixteenth of a
        # mapped movie's pages), enough to tell a dose off by 4 times
        dose_count = counted(float(np.mean(used[:, ::16, ::4], dtype=np.float64)))
    if not params.gain.detect_hot_pixels and used.dtype.kind == "f":
        # a float movie's NaN or Inf pixels are defects with or without the hot-pixel search
        nonfinite = _nonfinite_defects(sum_raw_frames(used, workers), used, movie_path,
                                       first=first, n_movie=n_all)
        if nonfinite is not None:
            bad = nonfinite if bad is None else (bad | nonfinite)
    if params.gain.detect_hot_pixels:
        corrected_sum = sum_raw_frames(used, workers)
        if used.dtype.kind == "f":  # a damaged float movie: NaN, Inf or 1e30 pixels are defects
            nonfinite = _nonfinite_defects(corrected_sum, used, movie_path, first=first,
                                           n_movie=n_all)
            if nonfinite is not None:
                bad = nonfinite if bad is None else (bad | nonfinite)
                corrected_sum[nonfinite] = 0.0
            gross = gross_outliers(corrected_sum)
            if gross is not None:
                bad = gross if bad is None else (bad | gross)
                corrected_sum[gross] = 0.0
        dark = gain_reference.dark if gain_reference is not None else None
        raw_mean = frame_mean(corrected_sum, workers) / n \
            if dark is not None or used.dtype.kind in "iu" else None
        if dark is None and raw_mean is not None:  # counts: electrons (dose_counts)
            dose_count = counted(raw_mean)
        if gain_reference is not None:
            if gain_reference.dark is not None:
                _check_dark_level(raw_mean, gain_reference)
                corrected_sum -= np.float32(n) * gain_reference.dark
            t = time.perf_counter()
            orientation = _check_orientation(corrected_sum, used, gain_reference, params)
            t_orientation = time.perf_counter() - t
            gain = gain_reference.gain
            run_chunks(lambda y0, y1: np.multiply(corrected_sum[y0:y1], gain[y0:y1],
                                                  out=corrected_sum[y0:y1]), ny, workers)
            if gain_reference.plan is not None:
                gain_reference.plan.apply(corrected_sum)
        # counts: the gain the raw counts were multiplied by (no dark: a counting detector)
        counting_gain = None if gain_reference is None or gain_reference.dark is not None \
            else gain_reference.gain
        hot = detect_hot_pixels(corrected_sum, sigma=params.gain.hot_pixel_sigma,
                                gain=counting_gain, exclude=bad, workers=workers)
        if bad is not None:
            hot &= ~bad
        n_hot = int(hot.sum())
        if n_hot:
            bad = hot if bad is None else (bad | hot)
        # on the gain-corrected sum: a column more sensitive than its neighbours, which the
        # gain corrects, is the detector's pattern, not a stuck column
        hot_lines = detect_hot_lines(corrected_sum, exclude=bad,
                                     sigma=params.gain.hot_pixel_sigma, workers=workers)
        if hot_lines:
            lines = hot_lines.mask((ny, nx))
            if bad is not None:
                lines &= ~bad
            n_hot += int(lines.sum())
            bad = lines if bad is None else (bad | lines)
        # mean of the good pixels: whole sum minus the (few) bad ones, no full-size copy
        total = frame_mean(corrected_sum, workers) * corrected_sum.size
        n_good = corrected_sum.size
        if bad is not None:
            total -= float(corrected_sum[bad].sum(dtype=np.float64))
            n_good -= int(np.count_nonzero(bad))
        fill = total / max(1, n_good) / n
        del corrected_sum, hot
    if not params.gain.detect_hot_pixels:  # no full raw sum: the check sums its window only
        t = time.perf_counter()
        orientation = _check_orientation(None, used, gain_reference, params)
        t_orientation = time.perf_counter() - t
    timings["hot_pixels"] = time.perf_counter() - t0 - t_orientation
    timings["gain_orientation"] = t_orientation
    replaced = _pixels_to_tell_relion(bad, gain_reference, (ny, nx),
                                      gain_zeros_told=gain_binned_by == 1)
    if replaced.truncated:
        warnings.warn(replaced.message(), stacklevel=2)

    # frames in detector coordinates, as transformed; judged in the detector's own pixels
    pattern = HalfSumWindows((ny, nx), subpixels=super_resolution_factor)
    # no shift exceeds the frame: a --max-shift of 1e9 pads by the frame, not by 1e9 pixels
    margin = int(np.ceil(min(ap.max_shift_px, max(ny, nx)))) + EXTRA_MARGIN_PX
    while True:
        grids = plan_grids((ny, nx), rp.bin_factor, margin, ap.align_size_px)
        result = _transform_align_sum(used, grids, params, gain_reference, bad, fill,
                                      dose_end, pixel_size_A, workers, timings, pattern,
                                      frame_dose=doses_all[first:stop])
        if result is not None:
            break
        margin = 2 * margin  # a shift exceeded the padding: redo with more
    shifts_out, alignment, images, local, resolution = result
    advice = alignment_advice(alignment, fill, (ny, nx), n_used=n,
                              group_frames=params.align.group_frames,
                              counting=gain_reference is None or gain_reference.dark is None)
    if alignment.dark_frames and alignment.supported:  # numbered in the movie, as --throw
        # and --trunc count (not supported: too few frames with counts, said in its note)
        dark = [first + i for i in alignment.dark_frames]
        one = len(dark) == 1
        advice = (*advice, f"frame{'' if one else 's'} {', '.join(str(i) for i in dark)} of "
                           f"{n_all} (0-based) {'holds' if one else 'hold'} no counts to align "
                           "(a beam blanked before the last frame, a late shutter?): not "
                           "aligned, shifted as the "
                           f"{'frame beside it' if one else 'frames beside them'} "
                           "(alignment.dark_frames in the motion record); --throw or --trunc "
                           "leaves such frames out")
    largest = float(np.abs(shifts_out).max(initial=0.0))
    if largest >= 0.95 * ap.max_shift_px:  # in the record's advice: the daemon says it too
        advice = (*advice, f"search limit reached: a frame's shift ({largest:.1f} px from the "
                           f"mean) reached the search limit --max-shift {ap.max_shift_px:g} px: "
                           "the drift "
                           "may be larger (a stage that had not settled); correct again with a "
                           "larger --max-shift")
    for line in advice:
        warnings.warn(line, stacklevel=2)
    t = time.perf_counter()
    detector_pattern = pattern.check()
    del pattern
    timings["detector_pattern"] = time.perf_counter() - t
    if detector_pattern is not None and detector_pattern.detected:
        warnings.warn(detector_pattern.message(
            gain_given=_gain_given(gain_reference), gain_advice=_gain_advice(gain_reference),
            hot_pixels_searched=params.gain.detect_hot_pixels), stacklevel=2)
    pixel_out = pixel_size_A * float(np.mean(grids.bin_yx))
    timings["total"] = time.perf_counter() - t0
    return CorrectedFrames(images=images, shifts_yx_px=shifts_out, alignment=alignment,
                           pixel_size_A=pixel_out, shape_yx=grids.out_yx,
                           frame_doses_e_A2=doses_all, frames_used=(first, stop),
                           n_hot_pixels=n_hot, movie_shape_yx=(ny, nx), replaced=replaced,
                           padding_px=(grids.padded_out[0] - grids.out_yx[0],
                                       grids.padded_out[1] - grids.out_yx[1]),
                           timings_s=timings, local=local, resolution=resolution,
                           gain_orientation=orientation, detector_pattern=detector_pattern,
                           hot_lines=hot_lines, alignment_advice=advice,
                           dose_count=dose_count)


#: raw frames whose mean is below this fraction of the dark's: the dark is not one frame's
_DARK_ABOVE_FRAMES = 0.75


def _defects_fitted(gain_reference: GainReference, frames_yx: tuple[int, int]) -> str | None:
    """How SerialEM's camera defect list was fitted onto the frames (one line); None for
    other defect files. Frames taken as a subarea of its camera are said in a warning (a list
    of another camera lands its defects elsewhere)."""
    camera = gain_reference.camera_defects
    if camera is None:
        return None
    fitted = camera.describe_fit(frames_yx)
    if camera.fit(frames_yx)[2:] != (0, 0):
        warnings.warn(f"{camera.path.name}: {fitted}: {SUBAREA_NOTE}", UserWarning,
                      stacklevel=2)
    return fitted


def _check_defects_in_frame(gain_reference: GainReference, shape_yx: tuple[int, int]) -> None:
    """Raise :class:`GainReferenceError` when a defect list has rectangles and none of them
    lies within the frames (a list of another camera, or another orientation: it was dropped
    without a word, as its rectangles are clipped to the frame)."""
    rects = gain_reference.defect_rects
    ny, nx = shape_yx
    if rects and not any(x < nx and y < ny and x + w > 0 and y + h > 0
                         for x, y, w, h in rects):
        raise GainReferenceError(gain_reference.defects_path,
                                 f"none of its {len(rects)} defects lies within the {nx} x {ny} "
                                 "frames (x y w h, 0-based, in the movie's pixels): a list of "
                                 "another camera, or of another orientation?")


def _check_dark_level(raw_mean_per_frame: float, gain_reference: GainReference) -> None:
    """Refuse a dark reference larger than the frames it is subtracted from (a dark of the
    whole exposure, N frames' worth: every corrected pixel came out negative, about -(N - 1)
    darks, with no other sign than a detector-pattern warning). A frame is the dark plus a
    signal that is never negative, so its mean is at least the dark's.

    Raises
    ------
    GainReferenceError
        The frames' mean is below :data:`_DARK_ABOVE_FRAMES` of the dark's.
    """
    dark, defects = gain_reference.dark, gain_reference.defect_mask  # the dark is 0 at defects
    n_valid = dark.size - (0 if defects is None else int(np.count_nonzero(defects)))
    dark_mean = float(dark.sum(dtype=np.float64)) / max(1, n_valid)
    if dark_mean > 0 and raw_mean_per_frame < _DARK_ABOVE_FRAMES * dark_mean:
        raise GainReferenceError(
            gain_reference.dark_path,
            f"dark reference above the frames: its mean {dark_mean:.4g} per pixel against the "
            f"frames' {raw_mean_per_frame:.4g} per pixel and frame; --dark is the dark of one "
            "frame (divide a dark of the whole exposure by its frame count)")


def _pixels_to_tell_relion(bad: np.ndarray | None, gain_reference: GainReference | None,
                           shape_yx: tuple[int, int], *, gain_zeros_told: bool = True
                           ) -> ReplacedPixels:
    """The replaced pixels (``bad``, on the frames' grid) that RELION's polishing, which reads
    the raw movie again, learns of only from ``data_hot_pixels``: all of them but those it
    masks anyway, the zeros of the gain exported for it (every defect of the reference is 0
    there: ``others_in="gain"``) or, without a gain, the defect list named as
    ``rlnMicrographDefectFile`` when RELION reads that file as it is
    (:func:`correction.defects.relion_reads_defect_list`: ``others_in="defect_file"``). So the
    hot pixels and damaged pixels found in the movie, a dark reference's non-finite pixels
    without a gain, and a defect map or a list RELION cannot read, without a gain."""
    told, others_in = None, None
    if gain_reference is not None and gain_reference.gain_path is not None:
        if gain_zeros_told:  # not a gain RELION combines from a finer grid its own way
            told, others_in = gain_reference.defect_mask, "gain"
    elif gain_reference is not None and gain_reference.defect_rects \
            and gain_reference.defects_path is not None \
            and relion_reads_defect_list(gain_reference.defects_path):
        told, others_in = rasterize_defects(gain_reference.defect_rects, shape_yx), "defect_file"
    if bad is None:
        return ReplacedPixels(others_in=others_in)
    yx, count = first_coordinates_yx(bad if told is None else np.greater(bad, told),  # and not
                                     MAX_REPLACED_PIXELS_LISTED)
    return ReplacedPixels(yx, count, others_in)


def _gain_advice(gain_reference: GainReference | None) -> str | None:
    """How an EER movie's gain file was applied and the other way to try
    (:meth:`correction.gain.GainReference.eer_advice`)."""
    return gain_reference.eer_advice() if gain_reference is not None else None


#: NaN or Inf pixels in a float movie's raw sum, as a fraction of a frame, beyond which the
#: movie is damaged (a frame or part of one lost), not a few dead pixels stored as NaN
NONFINITE_DAMAGED_FRACTION = 0.01


def _nonfinite_defects(raw_sum: np.ndarray, frames: np.ndarray,
                       movie_path: str | Path | None, *, first: int = 0,
                       n_movie: int | None = None) -> np.ndarray | None:
    """The pixels that are NaN or Inf in any frame of a float movie (``raw_sum`` their sum),
    to be replaced in every frame as defects; None when there are none. ``frames`` are the
    movie's ``first:`` frames used (after ``--throw``) of ``n_movie``, as messages number
    them.

    Raises
    ------
    UnreadableMovieError
        More than :data:`NONFINITE_DAMAGED_FRACTION` of a frame's pixels: replaced from their
        neighbours they would wipe out that part of every frame (half a frame of NaN in one of
        12 frames left the sums' half noise, an all-NaN frame left them zeros, said done).
    """
    nonfinite = ~np.isfinite(raw_sum)
    count = int(np.count_nonzero(nonfinite))
    if count == 0:
        return None
    if count > NONFINITE_DAMAGED_FRACTION * nonfinite.size:
        hit = [first + i for i in range(len(frames)) if not np.isfinite(frames[i]).all()]
        listed = ", ".join(str(i) for i in hit[:10]) + (" ..." if len(hit) > 10 else "")
        total = len(frames) if n_movie is None else n_movie
        raise UnreadableMovieError(
            movie_path, f"{count:,} pixels ({100 * count / nonfinite.size:.0f} % of a frame) "
                        f"are NaN or Inf in {len(hit)} of {total} frames ({listed}, "
                        "0-based): a damaged float movie, not dead pixels")
    return nonfinite


def _gain_given(gain_reference: GainReference | None) -> bool:
    """Whether a gain was applied: a gain file, or (from arrays) a gain that is not all ones
    (a reference of a dark or defects alone has a gain of ones)."""
    return gain_reference is not None and (gain_reference.gain_path is not None
                                           or not bool(np.all(gain_reference.gain == 1)))


def _check_orientation(raw_sum: np.ndarray | None, used: np.ndarray,
                       gain_reference: GainReference | None,
                       params: CorrectionParams) -> GainOrientationCheck | None:
    """Gain orientation check on ``(sum of raw frames - n dark)``, as configured in ``params.gain``.

    ``raw_sum`` None sums only the central window (hot-pixel detection off). None without a
    gain file or for frames under 16 pixels on a side. The reference must have been oriented
    by ``params.gain`` (:func:`correction.gain.load_gain_reference`).
    """
    if gain_reference is None or gain_reference.gain_path is None \
            or min(gain_reference.shape_yx) < 16:
        return None
    frame_shape = None
    if raw_sum is None:
        frame_shape = gain_reference.shape_yx
        window = central_window(frame_shape, DEFAULT_CROP_PX)
        raw_sum = sum_raw_frames(used[:, window[0], window[1]])
        if gain_reference.dark is not None:
            raw_sum -= np.float32(used.shape[0]) * gain_reference.dark[window]
    return check_gain_orientation(
        raw_sum, gain_reference.gain, frame_shape_yx=frame_shape,
        configured=(params.gain.rotate_quarter_turns, params.gain.flip),
        gain_file_rows_as_stored=Path(gain_reference.gain_path).suffix.lower() == ".gain")


def _tile_fill(fill: float | None, frame_means: dict[int, float], n: int, binned: bool,
               bin_yx: tuple[float, float]) -> float | np.ndarray | None:
    """The value the tiles read outside the frame: ``fill`` (times the pixels a Fourier-binned
    pixel holds: binning keeps totals), else each frame's mean as the forward pass measured
    it (so that the local sums need not read every frame once more for it); None for binned
    frames without ``fill`` (their means are measured as they are read)."""
    if fill is not None:
        return fill * float(np.prod(bin_yx)) if binned else fill
    if binned or len(frame_means) < n:
        return None
    return np.array([frame_means[i] for i in range(n)])


def _transform_align_sum(used: np.ndarray, grids: Grids, params: CorrectionParams,
                         gain_reference: GainReference | None, bad: np.ndarray | None,
                         fill: float | None, dose_end: np.ndarray, pixel_size_A: float,
                         workers: int, timings: dict[str, float],
                         pattern: HalfSumWindows | None = None, *,
                         frame_dose: np.ndarray | None = None
                         ) -> tuple[np.ndarray, GlobalAlignment, SumImages, LocalMotion,
                                    FRCResolution | None] | None:
    """Steps 4-6 of the module docstring: (shifts in output pixels, global alignment, the four
    sums, local motion, even/odd resolution); None when a shift exceeds the padding. Each
    gain-corrected frame is also added to ``pattern`` (once) as it is transformed.
    ``frame_dose`` (e/Å², each used frame's own) normalises the weighted sums of frames of
    unequal dose (:mod:`correction.dose`)."""
    n = used.shape[0]
    t = time.perf_counter()
    ny, nx = grids.frame_yx
    py, px = grids.padded_in
    # the padded frame's buffer and rfft2_cropped's row buffer: made when used, freed after
    # the forward pass (and made again for the sums' pass when no spectra are kept)
    pad_buffer: list[np.ndarray] = []
    row_buffer: list[np.ndarray] = []
    block_sums = align_from_block_sums(grids)
    out_half = (grids.padded_out[0], grids.padded_out[1] // 2 + 1)
    binned = grids.padded_in != grids.padded_out
    # every output spectrum is kept when all fit; else the first frames' as far as they raise
    # no stage of the predicted peak (frames_kept); for the others the forward pass makes the
    # alignment crop alone (from the 2 x 2 block sums: 0.10 s per super-resolution frame
    # here, against 0.35 s for the output grid's spectrum), and they are transformed once more
    # for the sums. With a patch grid on unbinned output the spectra are kept alike: they give
    # the sums when the local model is not applied (common at tomography dose: no second
    # pass over the frames); when it is, they are released and the sums come from the tiles
    # of local_sums. Measured at 4096^2 x 10 on the 2-core test machine, quiet, one process
    # correcting the movie again and again (4 runs each, user CPU time and wall time per
    # movie): no local field (model not applied) 4.5-4.7 -> 3.2-4.0 s CPU, 3.1-3.5 -> 2.6-3.8
    # s wall (more memory touched: more system time); a 3-px field (applied) 5.3-6.0 ->
    # 5.6-7.1 s CPU, 3.5-4.4 -> 4.2-4.8 s wall (the whole spectrum made and kept in vain);
    # peak memory as without a patch grid (4K x 10: 1.0-1.1 -> 1.5 GB measured, 1.2 -> 2.0 GB
    # predicted)
    sums_from_tiles = params.align.local_enabled and not binned
    n_keep = frames_kept_for(grids, n, params, out_half[0] * out_half[1] * 8)
    # defects and hot pixels are replaced on the padded frame by one plan (padded geometry);
    # the gain arithmetic is C's apply_gain, without its own (unpadded) replacement plan
    plan = None
    if bad is not None and bad.any():
        bad_padded = np.zeros((py, px), bool)
        bad_padded[:ny, :nx] = bad
        plan = plan_replacement(bad_padded)
        del bad_padded
    arith = dataclasses.replace(gain_reference, plan=None) if gain_reference is not None else None

    drop = memory_model.mapped_bytes(used) > memory_model.MAPPED_BUDGET_BYTES

    frame_means: dict[int, float] = {}  # padding value of each frame (without ``fill``)

    def padded_frame(i: int) -> np.ndarray:
        """Frame ``i`` gain-corrected, padded and with its defects replaced (one buffer)."""
        if not pad_buffer:
            pad_buffer.append(np.empty((py, px), np.float32))
        pad_buf = pad_buffer[0]
        frame_view = pad_buf[:ny, :nx]
        apply_gain(used[i], arith, out=frame_view, workers=workers)
        if drop:
            _drop_mapped(used[i])
        if fill is not None:
            value = fill
        else:  # a frame transformed again for the sums reuses its mean
            if i not in frame_means:  # its defects (NaN pixels of a float movie) left out
                frame_means[i] = frame_mean(frame_view, workers) if bad is None else \
                    float(np.mean(frame_view[~bad], dtype=np.float64))
            value = frame_means[i]
        pad_buf[:ny, nx:] = value
        pad_buf[ny:, :] = value
        if plan is not None:
            plan.apply(pad_buf)
        if pattern is not None:
            pattern.add(i, frame_view)
        return pad_buf

    # rfft2_cropped's row buffer (0.2 GB for the binned grid of a super-resolution frame),
    # made once at its largest use and reused frame after frame instead of faulting in fresh
    # pages each time; with block sums their rows and the sums themselves (after the rows)
    align_cx = grids.align[1] // 2 + 1
    sums_rows = (py // 2) * align_cx  # the block sums' row transforms
    sums_slots = ((py // 2) * (px // 2) + 1) // 2  # the block sums, float32 in complex64 slots
    # binned with block sums: the output grid's row transforms first, the block sums after
    # them (both made in one pass over a kept frame's rows, kept_from_rows)
    work_size = max(py * (grids.padded_out[1] // 2 + 1) + (sums_slots if block_sums else 0)
                    if binned else 0,
                    sums_rows + sums_slots if block_sums else py * align_cx)

    def work() -> np.ndarray:
        if not row_buffer:
            row_buffer.append(np.empty(work_size, np.complex64))
        return row_buffer[0]

    def crop_of(frame: np.ndarray, out_yx: tuple[int, int]) -> np.ndarray:
        """A padded frame's spectrum Fourier-cropped to ``out_yx``, without the full one."""
        return rfft2_cropped(frame, out_yx, workers=workers, work=work())

    def spectrum_of(frame: np.ndarray) -> np.ndarray:
        """A padded frame's output spectrum (the frame's buffer is overwritten)."""
        if binned:  # the binned grid's crop alone: no full-size spectrum (0.75 GB at 8K x 11K)
            return crop_of(frame, grids.padded_out)
        return rfft2(frame, workers=workers, overwrite_x=True)

    def spectrum(i: int) -> np.ndarray:
        """Output spectrum of frame ``i``, one not kept, for the sums."""
        if fill is not None and (pattern is None or i in pattern.seen):
            return spectrum_from_rows(i)
        return spectrum_of(padded_frame(i))

    gained_rows: list[GainedRows] = []  # made at its first use (needs ``fill``)

    def gained() -> GainedRows:
        """Gain-corrected rows of the frames, defects replaced as on the padded frame."""
        if not gained_rows:
            gained_rows.append(GainedRows(used, arith, plan, fill, grids.padded_in))
        return gained_rows[0]

    def padded_rows(i: int) -> Callable[[int, int, np.ndarray], None]:
        """A band filler of the padded frame ``i`` (``fill_rows(r0, r1, band)``) from its
        gain-corrected rows (:func:`gained`), padded with ``fill``: the padded frame's values
        without the frame written and read again."""
        frame_rows, value = gained(), np.float32(fill)

        def fill_rows(r0: int, r1: int, band: np.ndarray) -> None:
            f1 = min(r1, ny)  # rows of the frame, then of the padding
            if f1 > r0:
                frame_rows.rows(i, r0, f1, out=band[:f1 - r0, :nx])
                band[:f1 - r0, nx:] = value
            band[max(0, f1 - r0):] = value

        return fill_rows

    def spectrum_from_rows(i: int, sums: np.ndarray | None = None) -> np.ndarray:
        """:func:`spectrum_of` the padded frame ``i`` made band by band (:func:`padded_rows`),
        to the bit, and its 2 x 2 block sums into ``sums`` when given: binned, the crop's row
        transforms in ``work`` (the block sums after them); else the whole spectrum in memory
        of its own (it is kept, or summed)."""
        return rfft2_cropped_of_rows(padded_rows(i), (py, px), grids.padded_out,
                                     workers=workers, work=work() if binned else None,
                                     sums_2x2=sums)

    def block_sums_buffer() -> tuple[np.ndarray, np.ndarray]:
        """The row buffer of the block sums' transforms and the block sums (in ``work``)."""
        buffer = work()
        sums = buffer[work_size - sums_slots:].view(np.float32)[:(py // 2) * (px // 2)]
        return buffer[:sums_rows], sums.reshape(py // 2, px // 2)

    def alignment_crop(frame: np.ndarray) -> np.ndarray:
        """The alignment grid's crop of a padded frame, through its 2 x 2 block sums when
        the frame is at least 8 times the alignment grid (align_from_block_sums)."""
        if not block_sums:
            return crop_of(frame, grids.align)
        rows, sums = block_sums_buffer()
        sum_2x2(frame, out=sums, workers=workers)
        return rfft2_cropped_of_2x2(sums, (py, px), grids.align, workers=workers, work=rows)

    # A frame whose output spectrum is not kept needs only its alignment crop from this pass:
    # with a padding value known beforehand (the movie's, from the hot-pixel pass) the crop
    # is made from gain-corrected bands of its rows (defects replaced as on the padded frame,
    # GainedRows), never from a whole padded frame: the same values, and one pass over the
    # raw frame instead of writing the padded frame and reading it again. With block sums
    # the bands are summed 2 x 2 (a super-resolution frame on 2 cores: 52 ms against 40 + 25
    # ms, the whole pass of a 60-frame movie binned by 2 9.8 -> 9.4 s); else each band's rows
    # are transformed (rfft2_cropped_of_rows; a K3 frame on 2 cores: 38-40 ms against 42-44
    # ms; the same crop to the bit)
    crop_of_rows = fill is not None and (not block_sums or (ny % 2 == 0 and nx % 2 == 0))

    def add_to_pattern_from_rows(i: int) -> None:
        """Frame ``i``'s detector-pattern window, from its gain-corrected rows."""
        if pattern is None:
            return
        frame_rows = gained()
        (wy0, wy1), (wx0, wx1) = ((w.start, w.stop) for w in pattern.window)
        pattern.add_window(i, frame_rows.rows(i, wy0, wy1, wx0, wx1))
        if frame_rows.drop:
            _drop_mapped(used[i, wy0:wy1])

    def alignment_crop_from_rows(i: int) -> np.ndarray:
        """:func:`alignment_crop` of frame ``i`` from its gain-corrected rows (:func:`gained`);
        the frame also goes into ``pattern`` (once)."""
        add_to_pattern_from_rows(i)
        if not block_sums:
            return rfft2_cropped_of_rows(padded_rows(i), (py, px), grids.align,
                                         workers=workers, work=work())
        rows, sums = block_sums_buffer()
        frame_rows = gained()
        sum_2x2_of_rows(lambda y0, y1: frame_rows.rows(i, y0, y1), (ny, nx),
                        out=sums[:ny // 2, :nx // 2], workers=workers)
        value = np.float32(fill)
        sums[:ny // 2, nx // 2:] = value * np.float32(4)  # padding: (v + v) + (v + v) = 4 v
        sums[ny // 2:] = value * np.float32(4)
        return rfft2_cropped_of_2x2(sums, (py, px), grids.align, workers=workers, work=rows)

    def kept_from_rows(i: int) -> tuple[np.ndarray, np.ndarray]:
        """The output spectrum of frame ``i`` (kept) and its alignment crop, from one pass
        over its gain-corrected rows: each band is
        transformed and, with block sums, summed 2 x 2 while in cache; no padded frame is
        written and read again. A super-resolution frame binned by 2 on 2 cores: 0.35-0.38 s,
        against 0.44-0.52 s for the padded frame (0.4 GB), its block sums and the binned crop
        (20 frames, 8 spectra kept: forward pass 4.8-5.0 -> 4.2 s, peak RSS 2145 -> 1905-1947
        MB); 4096^2 x 10 unbinned, all kept: the same time as from padded frames (stages 1.54-1.64
        against 1.54-1.56 s), peak RSS 1437 -> 1406 MB. The spectra are those of the padded
        frame to the bit."""
        add_to_pattern_from_rows(i)
        rows, sums = block_sums_buffer() if block_sums else (None, None)
        spec = spectrum_from_rows(i, sums)
        if block_sums:
            return spec, rfft2_cropped_of_2x2(sums, (py, px), grids.align, workers=workers,
                                              work=rows)
        return spec, fourier_crop(spec, grids.padded_out, grids.align)  # the same frequencies

    kept: list[np.ndarray | None] = []

    def take_kept(i: int) -> np.ndarray:
        """Kept spectrum ``i``, released from the list (summed or made a frame only once)."""
        spec, kept[i] = kept[i], None
        return spec

    align_spectra = np.empty((n,) + (grids.align[0], grids.align[1] // 2 + 1), np.complex64)
    frame = None
    for i in range(n):
        if crop_of_rows and i >= n_keep:
            align_spectra[i] = alignment_crop_from_rows(i)
            continue
        if crop_of_rows:
            spec, align_spectra[i] = kept_from_rows(i)
            kept.append(spec)
            del spec
            continue
        frame = padded_frame(i)
        if i >= n_keep or block_sums:  # the alignment crop of the input grid's spectrum
            align_spectra[i] = alignment_crop(frame)
        if i >= n_keep:
            continue
        spec = spectrum_of(frame)
        if not block_sums:  # the same frequencies, cut from the output spectrum
            align_spectra[i] = fourier_crop(spec, grids.padded_out, grids.align)
        kept.append(spec)
        del spec
    del frame  # the padded frame's buffer (0.4 GB at super-resolution) is released below
    pad_buffer.clear()  # 0.1 GB at K3 size, not held through alignment and the local sums
    row_buffer.clear()
    timings["fft"] = time.perf_counter() - t

    t = time.perf_counter()
    scale_yx = np.array(grids.out_px_per_align_px)
    alignment = whole_frame_alignment(align_spectra, params=params.align,
                                      shape_yx=grids.align, scale_yx=scale_yx, workers=workers)
    shifts_out = alignment.shifts_yx_px * scale_yx[None, :]
    timings["align"] = time.perf_counter() - t
    if not alignment.supported and not alignment.note:  # a note was warned of where it arose
        warnings.warn(unaligned_message(alignment), stacklevel=2)
    pad = np.array(grids.padded_out) - np.array(grids.out_yx)
    if np.any(np.abs(shifts_out).max(axis=0) > pad):
        return None

    # 5b. patch-based local motion on the globally aligned alignment-grid spectra
    t = time.perf_counter()
    local = estimate_local_motion(align_spectra, grids.align, grids.padded_out, shifts_out,
                                  params=params.align, frame_shape_yx=grids.out_yx,
                                  workers=workers)
    del align_spectra
    timings["local_align"] = time.perf_counter() - t
    if local.applied or (sums_from_tiles and n_keep == 0):
        # 6b. all four sums with global + local shifts, tile-wise Fourier shifts (re-reads
        # the gain-corrected frames on the output grid; for Fourier-binned output the tiles
        # are cut from the kept spectra). With a patch grid on unbinned output and no spectra
        # kept, the tiles make the sums even when the model is not applied, with the global
        # shifts alone (the frames are transformed once more either way)
        t = time.perf_counter()
        model = local.model if local.applied else None
        tile_fill = _tile_fill(fill, frame_means, n, binned, grids.bin_yx)
        common = dict(pixel_size_A=pixel_size_A * float(np.mean(grids.bin_yx)),
                      voltage_kV=params.dose.voltage_kV, shape_yx=grids.out_yx,
                      workers=workers, movie_dose_end_e_A2=dose_end,
                      movie_frame_dose_e_A2=frame_dose)
        if not binned:
            kept.clear()  # unused: the tiles transform every frame again
            tiles = local_sums(GainedRows(used, arith, plan, fill, grids.padded_in), shifts_out,
                               model, dose_end_e_A2=dose_end, fill=tile_fill, **common)
        else:
            # Fourier-binned frames: those with kept spectra as one block (each spectrum
            # released as its frame is made: no parts kept across blocks), then the others,
            # made again, in blocks; the second part adds into the first's sums
            tiles = None
            one_frame = int(np.prod(grids.out_yx)) * 4
            for start, stop in ((0, n_keep), (n_keep, n)):
                if stop <= start:
                    continue
                source = take_kept if start < n_keep else spectrum
                frames_out = _BinnedFrames(stop - start, _From(source, start), grids, workers)
                tiles = local_sums(frames_out, shifts_out[start:stop], model,
                                   dose_end_e_A2=dose_end[start:stop], first_frame=start,
                                   fill=tile_fill, add_to=tiles,  # binned: one value or None
                                   block_bytes=(stop - start) * one_frame if start < n_keep
                                   else None, **common)
        kept.clear()
        timings["local_sum" if local.applied else "sum"] = time.perf_counter() - t
        t = time.perf_counter()
        resolution = even_odd_resolution_fast(
            tiles.even, tiles.odd, workers=workers,
            pixel_size_A=pixel_size_A * float(np.mean(grids.bin_yx)))[0]
        timings["resolution"] = time.perf_counter() - t
        return shifts_out, alignment, SumImages(sum=tiles.plain, dw=tiles.dose_weighted,
                                                even=tiles.even, odd=tiles.odd), local, resolution

    t = time.perf_counter()
    # a list (all kept) is summed block by block in cache and its memory reused for the four
    # sums; a stream (the kept spectra, each released once summed, then the others made
    # again) in groups
    sums = accumulate_sums(kept if n_keep == n else  # the kept spectra first, then the others
                           (take_kept(i) if i < n_keep else spectrum(i) for i in range(n)),
                           shifts_out,
                           padded_shape_yx=grids.padded_out, dose_end_e_A2=dose_end,
                           frame_dose_e_A2=frame_dose,
                           pixel_size_A=pixel_size_A * float(np.mean(grids.bin_yx)),
                           voltage_kV=params.dose.voltage_kV, workers=workers)
    kept.clear()
    timings["sum"] = time.perf_counter() - t
    t = time.perf_counter()  # even/odd FRC on the half spectra, before they are overwritten
    resolution = even_odd_resolution_from_spectra(
        sums.even, sums.odd, shape_yx=grids.padded_out,
        pixel_size_A=pixel_size_A * float(np.mean(grids.bin_yx)))[0]
    timings["resolution"] = time.perf_counter() - t
    t = time.perf_counter()
    images = sums_to_images(sums, padded_shape_yx=grids.padded_out, shape_yx=grids.out_yx,
                            workers=workers)
    timings["ifft"] = time.perf_counter() - t
    return shifts_out, alignment, images, local, resolution


def correct_movie(movie_path: str | Path, out_dir: str | Path, params: CorrectionParams, *,
                  gain_reference: GainReference | None = None, stem: str | None = None,
                  extra_record: dict[str, Any] | None = None,
                  workers: int = -1, scratch_dir: str | Path | None = None,
                  named_as: str | Path | None = None) -> CorrectionResult:
    """Correct one movie file and write its four images, quick-look pictures and motion record
    as one set (:class:`correction.write.OutputSet`).

    Within the call the C allocator reuses freed memory (:func:`correction.allocator.
    movie_memory_settings`); its arena limit stays in place afterwards.

    Parameters
    ----------
    movie_path : str or Path
        MRC, TIFF or EER movie.
    out_dir : str or Path
        Output folder (created if missing).
    params : CorrectionParams
    gain_reference : GainReference, optional
        Already loaded reference (load once for many movies); when None, the references named
        in ``params.gain`` are loaded here (none named: no gain correction).
    stem : str, optional
        Output stem S, a file name without a folder; default the movie's file name without
        its suffix.
    extra_record : dict, optional
        Extra top-level fields for ``motion.json`` (e.g. tilt-series facts).
    workers : int
        Threads for :mod:`scipy.fft`.
    scratch_dir : str or Path, optional
        Folder for a compressed movie too large to decode in memory (:mod:`correction.io.spill`:
        an unnamed temporary file of its decoded size); default ``out_dir``. Give a local disk
        when ``out_dir`` is a network share.
    named_as : str or Path, optional
        The movie's path as its user names it, for the images' header labels, where it is read
        under another (a cluster node's mount of the session); default ``movie_path``.

    Returns
    -------
    CorrectionResult

    Raises
    ------
    CorrectionError
        Any subclass (unreadable/truncated movie, gain mismatch, missing pixel size, bad
        parameters); ``str(error)`` is one line naming the file.
    OSError
        The outputs could not be written (full disk, read-only folder): ``errno`` kept, and
        no output of the set is left behind (:class:`correction.write.OutputSet`); or the
        decoded movie could not be written to the scratch folder.
    """
    with movie_memory_settings():
        return _prepare_movie(movie_path, out_dir, params, gain_reference=gain_reference,
                              stem=stem, extra_record=extra_record, workers=workers,
                              scratch_dir=scratch_dir, named_as=named_as).write()


def prepare_movie(movie_path: str | Path, out_dir: str | Path, params: CorrectionParams, *,
                  gain_reference: GainReference | None = None, stem: str | None = None,
                  extra_record: dict[str, Any] | None = None,
                  workers: int = -1, scratch_dir: str | Path | None = None,
                  named_as: str | Path | None = None) -> PreparedMovie:
    """:func:`correct_movie` up to its outputs: the movie corrected, nothing written yet.

    Parameters and errors as :func:`correct_movie` (less the writing); its
    :meth:`PreparedMovie.write` writes the outputs, and may run while the next movie is
    prepared.
    """
    with movie_memory_settings():
        return _prepare_movie(movie_path, out_dir, params, gain_reference=gain_reference,
                              stem=stem, extra_record=extra_record, workers=workers,
                              scratch_dir=scratch_dir, named_as=named_as)


def _refuse_output_clash(movie_path: Path, out_dir: Path, stem: str, *, chosen: bool) -> None:
    """Raise :class:`OutputClashError` when another stem whose outputs share a name with
    ``stem``'s has its motion record in ``out_dir`` (``x.motion.json`` for stem ``x_DW``:
    ``x``'s dose-weighted sum is ``x_DW.mrc``), or, for the default stem (``chosen`` false),
    when its own record names another movie that is still there (``Grid1/TS_01_001.mrc`` and
    ``Grid2/TS_01_001.mrc``). ``motionwatch correct`` and ``watch`` choose stems that never
    clash (``x_DW_mrc``, ``x_mrc``) and own a moved movie's record; a library caller gives
    ``stem``."""
    if not chosen:
        other_movie = stem_recorded_for_another(out_dir, stem, movie_path)
        if other_movie is not None:
            raise OutputClashError(movie_path, f"its outputs (stem {stem!r}) would replace "
                                               f"those of {other_movie} in {out_dir}: give "
                                               "another stem")
    for other in sorted(stems_sharing_an_output(stem) - {stem}):
        record = out_dir / f"{other}.motion.json"
        if record.exists():
            raise OutputClashError(movie_path, f"its outputs (stem {stem!r}) would replace "
                                               f"those of {other!r} in {out_dir} ({record.name} "
                                               "is there): give another stem")


def _prepare_movie(movie_path: str | Path, out_dir: str | Path, params: CorrectionParams, *,
                   gain_reference: GainReference | None, stem: str | None,
                   extra_record: dict[str, Any] | None, workers: int,
                   scratch_dir: str | Path | None = None,
                   named_as: str | Path | None = None) -> PreparedMovie:
    """:func:`prepare_movie` without the allocator settings."""
    from .io import read_movie  # noqa: PLC0415 - readers pull in tifffile/imagecodecs
    from .io.eer import grouping_record  # noqa: PLC0415

    t0 = time.perf_counter()
    if not isinstance(params, CorrectionParams):
        raise ParameterError(f"params must be a CorrectionParams, got {type(params).__name__}")
    if stem is not None and (not isinstance(stem, str) or stem in ("", ".", "..")
                             or "/" in stem or "\0" in stem):
        raise ParameterError(f"stem must be a file name without a folder (outputs go into "
                             f"out_dir), got {stem!r}")
    movie_path = Path(movie_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _refuse_output_clash(movie_path, out_dir, stem or fit_output_stem(movie_path.stem),
                         chosen=stem is not None)  # before the work, not after
    stem = stem or fit_output_stem(movie_path.stem)
    # a compressed movie too large to decode in memory is decoded into an unnamed file in the
    # scratch folder, by default the output folder (on a disk, unlike a RAM-backed /tmp), and
    # used memory-mapped
    movie = read_movie(movie_path, params=params.read,
                       spill_dir=out_dir if scratch_dir is None else Path(scratch_dir),
                       movie_dose_e_A2=params.dose.movie_dose_e_A2)
    pixel_size_A = movie.pixel_size_A  # params.read.pixel_size_A, else the file's
    if not pixel_size_A or not pixel_size_A > 0:
        raise MissingPixelSizeError(movie_path, "no pixel size given and none usable in the "
                                                "header (0, or exactly 1.0 Å, which writers "
                                                "leave when they know none)")
    given_pixel_A = params.read.pixel_size_A
    movie_pixel = movie_pixel_size_record(
        given_pixel_A, movie.header.get("header_pixel_size_A", pixel_size_A)
        if given_pixel_A is not None else None, pixel_size_A)
    if gain_reference is None:
        gain_reference = load_gain_reference(params.gain)
    is_eer = movie.header.get("format") == "eer"
    super_res = float(movie.header.get("super_resolution_factor", 1))
    # an 8K EER gain for frames decoded at 4K: its 2 x 2 sub-pixels combined, as RELION
    gain_binned_by = 2 if (gain_reference is not None and is_eer and super_res == 1
                           and gain_reference.shape_yx == tuple(
                               2 * n for n in movie.frames.shape[1:])) else 1
    # an EER movie's gain file that is not a .gain file is a count image (as RELION takes it)
    gain_reference = reference_for_movie(gain_reference, params.gain, is_eer=is_eer,
                                         coarser_by=gain_binned_by)
    t_read = time.perf_counter() - t0

    # EER sampling 2: 8K frames, kept on that grid unless --bin (MotionCor2's -EerSampling);
    # a physical-pixel gain is expanded onto it (correct_frames)
    frame_params = params
    # no dose given: the EER header's (``params`` itself, and so its fingerprint, unchanged)
    if not params.dose.known and movie.header.get("format") == "eer" \
            and movie.dose_per_frame_e_A2:
        frame_params = dataclasses.replace(frame_params, dose=dataclasses.replace(
            params.dose, dose_per_frame_e_A2=float(movie.dose_per_frame_e_A2)))
    eer_grouping = grouping_record(movie)
    memory = predict_peak_bytes(movie.frames, frame_params)
    corrected = correct_frames(movie.frames, pixel_size_A=float(pixel_size_A),
                               params=frame_params, gain_reference=gain_reference,
                               movie_path=movie_path, workers=workers,
                               raw_frames_per_frame=movie.raw_frames_per_frame,
                               raw_frames_per_group=movie.header.get("eer_group_frames"),
                               super_resolution_factor=int(super_res),
                               gain_binned_by=gain_binned_by)
    gain_expanded_by = (int(super_res) if gain_reference is not None
                        and not gain_reference.on_movie_grid
                        and gain_reference.shape_yx != tuple(movie.frames.shape[1:]) else 1)
    float_frames = movie.frames.dtype.kind == "f"
    frames_yx = (int(movie.frames.shape[1]), int(movie.frames.shape[2]))
    del movie
    images = corrected.images
    if float_frames and not all(np.isfinite(frame_mean(image, workers)) for image in (
            images.sum, images.dw, images.even, images.odd)):  # a damaged float movie
        raise UnreadableMovieError(movie_path, "the corrected sums are not finite: the frames "
                                               "hold values beyond float32's range (or NaN/Inf, "
                                               "replaced only by the hot-pixel search)")

    names = output_names(stem)
    if not out_dir.is_dir():  # made at the start: someone moved or removed it since
        raise FileNotFoundError(errno.ENOENT, "the output folder went away while the movie "
                                              "was corrected (not made again)", str(out_dir))
    outputs = {kind: out_dir / name for kind, name in names.items()}
    timings = {"read": t_read, **corrected.timings_s}
    references = (reference_record(gain_reference.gain_path, gain_reference.dark_path,
                                   gain_reference.defects_path, expanded_by=gain_expanded_by,
                                   binned_by=gain_binned_by,
                                   applied_as=gain_reference.applied_as,
                                   eer_rule=gain_reference.eer_rule,
                                   defects_fitted=_defects_fitted(gain_reference, frames_yx),
                                   read=gain_reference.read)
                  if gain_reference is not None else reference_record())
    alignment = corrected.alignment
    quality = [None if not np.isfinite(q) else round(float(q), 4)
               for q in alignment.peak_quality]
    record = motion_record(
        movie=str(Path(movie_path).absolute()), shape_yx=corrected.shape_yx,
        pixel_size_A=corrected.pixel_size_A, voltage_kV=params.dose.voltage_kV,
        shifts_yx_px=corrected.shifts_yx_px, frame_doses_e_A2=corrected.frame_doses_e_A2,
        pre_exposure_e_A2=params.dose.pre_exposure_e_A2,
        dose_counted=(corrected.dose_count.to_record()
                      if corrected.dose_count is not None else None),
        outputs={k: str(p.name) for k, p in outputs.items()},
        timings_s={**timings, "total": time.perf_counter() - t0},
        frames_in_movie=len(corrected.frame_doses_e_A2),
        throw_frames=params.read.throw_frames, trunc_frames=params.read.trunc_frames,
        alignment={"iterations": alignment.iterations, "converged": alignment.converged,
                   "supported": alignment.supported,
                   **({} if alignment.supported else {"note": unaligned_message(alignment)}),
                   **({"advice": list(corrected.alignment_advice)}
                      if corrected.alignment_advice else {}),
                   "peak_significance": _rounded(alignment.peak_significance, 2),
                   "noise_peak_significance": _rounded(alignment.noise_peak_significance, 2),
                   "last_update_px": round(float(alignment.last_update_px), 5),
                   "dark_frames": [params.read.throw_frames + i for i in alignment.dark_frames],
                   **({"fitted_path": alignment.fitted_path.to_record()}
                      if alignment.fitted_path is not None else {}),
                   "peak_quality": quality, "hot_pixels": corrected.n_hot_pixels,
                   **({"hot_lines": corrected.hot_lines.to_record()}
                      if corrected.hot_lines else {}),
                   "bin_factor": frame_params.read.bin_factor,
                   "group_frames": params.align.group_frames,
                   "params_fingerprint": params.fingerprint()},
        resolution=(corrected.resolution.to_record()
                    if corrected.resolution is not None else None),
        local=(local_motion_record(corrected.local, corrected.shifts_yx_px)
               if corrected.local is not None else None),
        references=references, software=software_record(),
        movie_shape_yx=corrected.movie_shape_yx, replaced_pixels=corrected.replaced,
        extra={**(extra_record or {}), "movie_pixel_size": movie_pixel,
               **({"eer": eer_grouping} if eer_grouping else {}),
               **({"gain_orientation": corrected.gain_orientation.to_record()}
                  if corrected.gain_orientation is not None else {}),
               **({"detector_pattern": corrected.detector_pattern.to_record(
                   gain_given=corrected.detector_pattern.detected
                   and _gain_given(gain_reference), gain_advice=_gain_advice(gain_reference),
                   hot_pixels_searched=params.gain.detect_hot_pixels)}
                  if corrected.detector_pattern is not None else {})})
    record["memory"] = {**memory.to_record(), "process_peak_MB": round(peak_resident_MB())}
    return PreparedMovie(movie_path=movie_path, out_dir=out_dir, stem=stem, outputs=outputs,
                         images=corrected.images, pixel_size_A=corrected.pixel_size_A,
                         record=record, shifts_yx_px=corrected.shifts_yx_px,
                         timings_s=timings, started_s=t0,
                         named_as=None if named_as is None else Path(named_as))
