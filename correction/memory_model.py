"""The memory model of correcting one movie: the predicted peak resident memory
(:func:`predict_peak_bytes`, printed by ``motionwatch correct --json``) and the budgets the
pipeline keeps to (how many output spectra it keeps, when a mapped movie's pages are dropped).

All sizes are bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .align_global import alignment_working_bytes
from .fourier import binned_length
from .grids import EXTRA_MARGIN_PX, Grids, align_from_block_sums, plan_grids
from .local_apply import band_scratch_bytes
from .params import CorrectionParams

__all__ = ["MemoryEstimate", "predict_peak_bytes", "frames_kept", "frames_kept_for",
           "stage_bytes", "mapped_bytes", "SPECTRA_BUDGET_BYTES", "MAPPED_BUDGET_BYTES",
           "BASE_BYTES"]

#: the output spectra kept from the forward pass for the sums, at most (:func:`frames_kept`)
SPECTRA_BUDGET_BYTES = 1_200_000_000
#: a memory-mapped movie larger than this has its pages dropped from memory once used
MAPPED_BUDGET_BYTES = 1 << 30


def mapped_bytes(frames: np.ndarray) -> int:
    """Bytes of ``frames`` that are a file mapping (0 for arrays in memory)."""
    return int(frames.nbytes) if isinstance(frames, np.memmap) else 0


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """Predicted peak memory of correcting one movie (see :func:`predict_peak_bytes`).

    Attributes
    ----------
    peak_bytes : int
        Predicted peak resident memory of the process (bytes).
    terms_bytes : dict
        The parts: ``movie`` (frames held in memory, or mapped pages kept), ``references``
        (gain and dark as float32, defect mask), ``stage`` (the largest working set of one
        stage), ``base`` (interpreter and libraries).
    stage : str
        The stage that sets the peak: ``"hot_pixels"``, ``"fft"``, ``"align"``, ``"sums"``,
        ``"local_align"`` or ``"local"``.
    """

    peak_bytes: int
    terms_bytes: dict[str, int]
    stage: str

    def to_record(self) -> dict[str, Any]:
        """JSON-ready form (MB rounded)."""
        return {"predicted_peak_MB": round(self.peak_bytes / 2**20),
                "stage": self.stage,
                "terms_MB": {k: round(v / 2**20) for k, v in self.terms_bytes.items()}}


BASE_BYTES = 300 << 20  # interpreter, numpy/scipy/tifffile and the CLI's imports, FFT plans


def frames_kept(n_frames: int, spectrum_bytes: int, *,
                peak_for: Callable[[int], int] | None = None) -> int:
    """How many frames' output spectra (``spectrum_bytes`` each) are kept from the forward
    pass for the sums: all while they fit ``SPECTRA_BUDGET_BYTES``; else those of the first
    frames, as many as fit the budget without raising ``peak_for(k)``, the predicted peak
    with ``k`` kept (:func:`stage_bytes`), above its value with none: they take memory that
    a later stage needs anyway (the local sums' accumulators, the running sums). The forward
    pass makes the alignment crop alone for the others, which the sums transform once more;
    a kept frame is transformed once (its alignment crop cut from its spectrum, or made from
    its 2 x 2 block sums: :func:`align_from_block_sums`), a frame not kept twice
    (super-resolution frame on 2 cores, quiet: 0.35 s for the binned grid's crop, 0.20 s for
    the alignment crop alone from the whole frame, 0.10 s from its block sums). Without
    ``peak_for`` none are kept then.

    With a patch grid on unbinned output the same rule holds: the kept spectra give the sums
    when the local model is not applied, and are released unused when it is (the sums then
    come from the tiles of :func:`local_apply.local_sums`, which transform every frame
    again); the figures are at ``correction.pipeline._transform_align_sum``."""
    if n_frames * spectrum_bytes <= SPECTRA_BUDGET_BYTES:
        return n_frames
    if peak_for is None:
        return 0
    most = min(n_frames - 1, SPECTRA_BUDGET_BYTES // max(1, spectrum_bytes))
    ceiling = peak_for(0)
    return max((k for k in range(most + 1) if peak_for(k) <= ceiling), default=0)


def frames_kept_for(g: Grids, n: int, params: CorrectionParams, spectrum_bytes: int) -> int:
    """:func:`frames_kept` for a movie of ``n`` frames on grids ``g``."""
    return frames_kept(n, spectrum_bytes,
                       peak_for=lambda k: max(stage_bytes(g, n, params, k).values()))


def stage_bytes(g: Grids, n: int, params: CorrectionParams, n_kept: int) -> dict[str, int]:
    """Working memory of each stage of ``correction.pipeline._transform_align_sum`` with the
    output spectra of the first ``n_kept`` of ``n`` frames kept (bytes;
    :func:`predict_peak_bytes`)."""
    from .local_apply import _BLOCK_BYTES  # noqa: PLC0415 - the local step's own budget
    from .summation import _GROUP_BYTES as _SUM_GROUP_BYTES  # noqa: PLC0415

    ap = params.align
    pi, pp, p = (int(np.prod(s)) for s in (g.padded_in, g.padded_out, g.out_yx))
    a = int(np.prod(g.align))
    binned = g.padded_in != g.padded_out
    sums_from_tiles = ap.local_enabled and not binned
    kept = n_kept * 4 * pp
    all_kept = n_kept == n
    stages = {"hot_pixels": 16 * int(np.prod(g.frame_yx)),
              # with block sums, on an unbinned grid: the sums (and their rows) beside the
              # frame and its spectrum; binned, they use the crop's row buffer
              "fft": (8 * pi + (4 * pp if binned else pi if align_from_block_sums(g) else 0)
                      + 4 * a * n + kept),
              "align": kept + 4 * a * n + alignment_working_bytes(4 * a * n)}
    if not sums_from_tiles or n_kept:  # with tiles: the kept spectra, if the model is not applied
        # all kept: summed in place, then the sums' spectra and their images; else a stream:
        # the kept spectra first (the first groups, released as they are summed), then groups
        # made again, beside the running sums; at the end the sums' spectra (the running
        # sums' memory) and their images
        stages["sums"] = (kept + 16 * pp + 16 * p if all_kept else
                          max(max(kept, min(_SUM_GROUP_BYTES, 4 * pp * (n - n_kept)))
                              + 16 * pp, 16 * pp + 16 * p))
    if ap.local_enabled:
        stages["local_align"] = kept + 8 * a * n + 4 * a + _patch_threads_bytes(g, n, params)
        # Fourier-binned: the frames whose spectra are kept are one block (each spectrum
        # transformed in place into its frame and released, one new frame in flight); the
        # others are read in blocks, whose parts are kept for all tiles (43 P)
        binned_frames = 0
        if binned:
            binned_frames = max(kept + 4 * p if n_kept else 0,
                                43 * p + _BLOCK_BYTES if n_kept < n else 0)
        stages["local"] = 16 * p + band_scratch_bytes(g.out_yx) + binned_frames
    return stages


def _patch_threads_bytes(g: Grids, n: int, params: CorrectionParams) -> int:
    """The patch loop's scratch (:func:`correction.align_local.measure_patch_shifts`): one
    patch's alignment, and the patches aligned beside it in other threads, which it keeps
    within the aligned frames' size (4 bytes per patch-grid pixel per frame)."""
    from .align_local import LocalParams, patch_grid, patch_scratch_bytes  # noqa: PLC0415

    local = LocalParams()
    shape = tuple(int(v) for v in g.align)
    if min(shape) > local.patch_grid_px:
        factor = min(shape) / local.patch_grid_px
        shape = (binned_length(shape[0], factor), binned_length(shape[1], factor))
    grid = patch_grid(shape, g.padded_out, (params.align.patches_y, params.align.patches_x))
    return patch_scratch_bytes(n, grid.patch_shape_yx) + 4 * n * int(np.prod(shape))


def predict_peak_bytes(frames: np.ndarray, params: CorrectionParams) -> MemoryEstimate:
    """Predicted peak memory of :func:`correction.pipeline.correct_frames` on ``frames`` (the
    memory model).

    With ``P`` the output pixels, ``Pp`` the padded output grid, ``Pi`` the padded input
    grid, ``A`` the alignment grid (short side ``align_size_px``) and ``n`` the frames used:

    * movie: the frames as read (stored dtype); a memory-mapped MRC's pages only up to
      ``MAPPED_BUDGET_BYTES`` (beyond it they are dropped once used: about one frame);
    * references: 4 bytes per input pixel for each of gain and dark, 1 for the defect mask,
      held throughout (as named in ``params.gain``; a dark reference or defects given alone
      come with a gain of ones);
    * hot pixels: about 16 bytes per input pixel (the raw sum and the detector's maps);
    * fft stage: ``8 Pi`` (padded frame + its spectrum) + ``4 Pp``
      (Fourier crop, binned output; unbinned, ``Pi`` for the 2 x 2 block sums when
      :func:`align_from_block_sums`) + ``4 A`` per frame (alignment spectra) + the kept
      output spectra, ``4 Pp`` per frame, for the frames :func:`frames_kept` keeps (all while
      ``n 4 Pp <= SPECTRA_BUDGET_BYTES``, else the first ones as far as they raise no
      stage above the largest with none kept);
    * global sums (without a patch grid, Fourier-binned, or all spectra kept): all kept, them +
      ``16 Pp`` spectra and ``16 P`` images of the four sums; else the larger of the kept
      spectra or a group of spectra made again on the fly (up to ``summation._GROUP_BYTES``) +
      ``16 Pp`` of running sums, and the running sums (which become the sums' spectra) +
      ``16 P`` images;
    * whole-frame alignment: the kept spectra + ``8 A`` per frame (alignment spectra and the
      aligned stack, which the cross spectra overwrite) + batches of correlation maps;
    * patch alignment: the kept spectra + ``8 A`` per frame (alignment spectra and the
      aligned frames on the patch grid) + one patch stack's alignment
      (:func:`correction.align_local.patch_scratch_bytes`) + at most ``4 A`` per frame more
      for the patches aligned at once in other threads (their number is kept to that);
    * local sums: ``16 P`` (four images) + one band of tiles per thread
      (:func:`correction.local_apply.band_scratch_bytes`) + for Fourier-binned
      output the larger of the kept spectra + ``4 P`` (the kept frames are one block, each
      spectrum released as its frame is made) and, when some are not kept, ``43 P`` (parts
      of the sums for all tiles) + ``_BLOCK_BYTES`` of frames made again (:func:`stage_bytes`).

    So the peak is the movie plus about 36 bytes per output pixel (global) or 16-60 (local),
    plus 8 bytes per alignment pixel per frame (~12 MB at 1024 x 1440; with a patch grid up to
    about 14, the patch loop's threads included) and 4 bytes per padded
    output pixel per kept frame (at most ``SPECTRA_BUDGET_BYTES`` in all).
    """
    n_all, ny, nx = (int(v) for v in frames.shape)
    rp, ap = params.read, params.align
    n = max(1, n_all - rp.throw_frames - rp.trunc_frames)
    margin = int(np.ceil(min(ap.max_shift_px, max(ny, nx)))) + EXTRA_MARGIN_PX  # as corrected
    g = plan_grids((ny, nx), rp.bin_factor, margin, ap.align_size_px)
    pp = int(np.prod(g.padded_out))
    mapped = mapped_bytes(frames)
    movie = (min(mapped, MAPPED_BUDGET_BYTES) if mapped <= MAPPED_BUDGET_BYTES
             else 2 * ny * nx * frames.itemsize) if mapped else int(frames.nbytes)
    stages = stage_bytes(g, n, params, frames_kept_for(g, n, params, 4 * pp))
    stage = max(stages, key=stages.get)
    gp = params.gain
    any_reference = (gp.gain_path is not None or gp.dark_path is not None
                     or gp.defects_path is not None)  # a dark or defects alone: a gain of ones
    references = ny * nx * (5 * any_reference + 4 * (gp.dark_path is not None))
    terms = {"movie": movie, "references": references, "stage": stages[stage],
             "base": BASE_BYTES}
    return MemoryEstimate(int(sum(terms.values())), terms, stage)
