"""Bad pixels: hot-pixel detection on the summed movie, defect lists and maps, replacement.

Every bad pixel (hot, dead, a defect-list rectangle, gain 0) is replaced the same way: by the
mean of its valid neighbours in the same frame (the 8-neighbourhood; a pixel inside a larger
defect region with no valid neighbour takes the nearest valid pixel). The neighbour indices
are worked out once per mask (:class:`ReplacementPlan`), so replacing costs a gather over the
bad pixels only, not a pass over the frame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage, special

from .allocator import zeros_written
from .camera_defects import CameraDefectList, is_camera_defect_list, parse_camera_defect_text
from .errors import GainReferenceError
from .metadata_text import decode_metadata_text
from .threads import run_chunks

__all__ = [
    "ReplacementPlan",
    "plan_replacement",
    "replace_pixels",
    "detect_hot_pixels",
    "gross_outliers",
    "read_defect_list",
    "load_defect_list",
    "parse_defect_list",
    "rasterize_defects",
    "relion_reads_defect_list",
    "first_coordinates_yx",
    "DefectRect",
    "defect_mask_from_image",
]

_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass(frozen=True, slots=True)
class ReplacementPlan:
    """How to fill the bad pixels of one mask; build it with :func:`plan_replacement`.

    Attributes
    ----------
    shape_yx : tuple of int
        Frame shape the plan is for.
    targets : ndarray of int64, shape (n_bad,)
        Flat indices of the bad pixels.
    sources : ndarray of int64, shape (n_bad, 8)
        Flat indices of the valid pixels each bad pixel is averaged from (padded by repeating).
    weights : ndarray of float32, shape (n_bad, 8)
        Averaging weights per source (rows sum to 1).
    """

    shape_yx: tuple[int, int]
    targets: np.ndarray
    sources: np.ndarray
    weights: np.ndarray

    @property
    def n_pixels(self) -> int:
        """Number of pixels replaced."""
        return int(self.targets.size)

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """Replace the planned pixels of ``frame`` in place and return it.

        Parameters
        ----------
        frame : ndarray, shape ``shape_yx``, float dtype, C-contiguous

        Returns
        -------
        ndarray
            ``frame`` itself.
        """
        if tuple(frame.shape) != self.shape_yx:
            raise ValueError(f"plan is for frames of shape {self.shape_yx}, got {frame.shape}")
        if self.targets.size:
            flat = frame.reshape(-1)
            values = np.einsum("ij,ij->i", flat[self.sources], self.weights, dtype=np.float64)
            flat[self.targets] = values
        return frame


def plan_replacement(mask: np.ndarray) -> ReplacementPlan:
    """Work out, for each True pixel of ``mask``, which valid pixels replace it.

    Parameters
    ----------
    mask : ndarray of bool, shape (ny, nx)
        True marks a bad pixel.

    Returns
    -------
    ReplacementPlan

    Raises
    ------
    ValueError
        When every pixel is bad.
    """
    mask = np.asarray(mask, dtype=bool)
    ny, nx = mask.shape
    bad_y, bad_x = np.nonzero(mask)
    n_bad = bad_y.size
    if n_bad == 0:
        empty = np.zeros((0, 8), dtype=np.int64)
        return ReplacementPlan((ny, nx), np.zeros(0, np.int64), empty,
                               np.zeros((0, 8), np.float32))
    if n_bad == mask.size:
        raise ValueError("every pixel is marked bad; nothing to replace them from")
    ys = bad_y[:, None] + np.array([d[0] for d in _NEIGHBOURS])[None, :]
    xs = bad_x[:, None] + np.array([d[1] for d in _NEIGHBOURS])[None, :]
    inside = (ys >= 0) & (ys < ny) & (xs >= 0) & (xs < nx)
    ys_c = np.clip(ys, 0, ny - 1)
    xs_c = np.clip(xs, 0, nx - 1)
    valid = inside & ~mask[ys_c, xs_c]
    sources = (ys_c * nx + xs_c).astype(np.int64)
    counts = valid.sum(axis=1)
    weights = np.where(valid, 1.0 / np.maximum(counts, 1)[:, None], 0.0).astype(np.float32)
    isolated = counts == 0
    if np.any(isolated):
        # Inside a larger defect: take the nearest valid pixel. The distance transform runs on
        # the bounding box of the isolated pixels grown until it holds valid pixels.
        iy, ix = bad_y[isolated], bad_x[isolated]
        nearest = _nearest_valid(mask, iy, ix)
        sources[isolated, :] = nearest[:, None]
        weights[isolated, :] = 0.0
        weights[isolated, 0] = 1.0
    # Padding slots point at a harmless valid index with weight 0.
    first_valid = np.where(weights > 0, sources, -1).max(axis=1)
    sources = np.where(weights > 0, sources, first_valid[:, None])
    targets = (bad_y.astype(np.int64) * nx + bad_x).astype(np.int64)
    return ReplacementPlan((ny, nx), targets, sources, weights)


def _nearest_valid(mask: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Flat index of the nearest valid (False) pixel for each (iy, ix)."""
    ny, nx = mask.shape
    margin = 8
    while True:
        y0, y1 = max(int(iy.min()) - margin, 0), min(int(iy.max()) + margin + 1, ny)
        x0, x1 = max(int(ix.min()) - margin, 0), min(int(ix.max()) + margin + 1, nx)
        sub = mask[y0:y1, x0:x1]
        if not sub.all():
            break
        margin *= 4
    _, (ny_idx, nx_idx) = ndimage.distance_transform_edt(sub, return_indices=True)
    yy = ny_idx[iy - y0, ix - x0] + y0
    xx = nx_idx[iy - y0, ix - x0] + x0
    return (yy.astype(np.int64) * nx + xx).astype(np.int64)


def replace_pixels(frame: np.ndarray, mask: np.ndarray | None = None, *,
                   plan: ReplacementPlan | None = None) -> np.ndarray:
    """Replace bad pixels of a frame, in place, by the mean of their valid neighbours.

    Parameters
    ----------
    frame : ndarray, shape (ny, nx), float dtype
        Modified in place.
    mask : ndarray of bool, shape (ny, nx), optional
        Bad pixels; ignored when ``plan`` is given.
    plan : ReplacementPlan, optional
        A plan from :func:`plan_replacement`, to reuse across frames.

    Returns
    -------
    ndarray
        ``frame``.
    """
    if plan is None:
        if mask is None:
            raise ValueError("give a mask or a plan")
        plan = plan_replacement(mask)
    return plan.apply(frame)


_STRIP_ELEMENTS = 1 << 16  # pixels per strip of rows (256 KiB of float32)


def _sum3(src: np.ndarray, out: np.ndarray, axis: int) -> np.ndarray:
    """Sum of each pixel and its two neighbours along ``axis`` (edges mirrored), into ``out``."""
    if axis == 0:
        np.add(src[:-2], src[1:-1], out=out[1:-1])
        out[1:-1] += src[2:]
        np.add(src[0], src[1], out=out[0])
        out[0] += src[1]
        np.add(src[-1], src[-2], out=out[-1])
        out[-1] += src[-2]
    else:
        np.add(src[:, :-2], src[:, 1:-1], out=out[:, 1:-1])
        out[:, 1:-1] += src[:, 2:]
        np.add(src[:, 0], src[:, 1], out=out[:, 0])
        out[:, 0] += src[:, 1]
        np.add(src[:, -1], src[:, -2], out=out[:, -1])
        out[:, -1] += src[:, -2]
    return out


def detect_hot_pixels(summed_frames: np.ndarray, *, sigma: float = 8.0,
                      gain: np.ndarray | None = None, exclude: np.ndarray | None = None,
                      false_positives: float = 0.01, workers: int = 1) -> np.ndarray:
    """Find hot pixels in the gain-corrected sum of a movie, with a Poisson test.

    A pixel is hot when its count is improbable given the count expected there: the Poisson
    probability of at least the observed count, given the local expected count, is below
    ``false_positives / n_pixels`` (Bonferroni over the image, so a clean movie has on average
    at most ``false_positives`` pixels flagged at any dose), *and* the excess exceeds ``sigma``
    times the expected spread ``sqrt(expected)``. At low counts (0.1-1 per pixel: low-dose
    tilts, super-resolution, EER) the first condition decides (at 0.1 counts expected, 6 or
    more counts are needed); at high counts the second one does, which keeps sharp bright
    specimen features that are not quite followed by the neighbourhood from being flagged.

    Expected count: the larger of the mean of the 8 neighbours (follows specimen features at
    high dose) and the mean of the pixel's block (16-128 px square, sized to hold at least ~256
    counts; the pixel itself left out), which is precise at low dose where 8 neighbours hold
    almost no counts. Both exclude the pixel; taking the larger one is conservative (a hot
    neighbour raises the expected count of a second hot pixel by 1/8 of its excess only, so
    pairs are still found).

    Counts and other data: the test runs in counts, ``summed_frames / gain`` when ``gain`` is
    given (``summed_frames`` is then the raw sum times the gain, with no dark subtracted; the
    expected count of a pixel is the local expectation of the corrected sum divided by its
    gain). The dispersion ``phi`` (variance / mean of the residual from the block mean) is
    measured robustly on about 2**18 pixels:

    * integer data (counting detectors) use ``phi = max(1, measured)``: exact Poisson, or
      conservatively over-dispersed (integer ADUs of an integrating camera);
    * other non-negative data (gain-normalised or gain-scaled floats) are treated as
      ``phi`` times Poisson counts: the test runs on ``value / phi`` with the incomplete gamma
      function as the continuous Poisson tail;
    * data with more than 0.1 % negative values (dark-subtracted integrating data) get a robust
      Gaussian test instead: excess over the 8-neighbour mean above
      ``max(sigma, z(false_positives / n_pixels))`` times the MAD-based spread.

    Parameters
    ----------
    summed_frames : ndarray, shape (ny, nx)
        Gain-corrected sum of all frames (counts or gain-scaled counts), ny, nx >= 3.
    sigma : float
        Minimum excess in units of the expected spread (``GainParams.hot_pixel_sigma``).
    gain : ndarray, shape (ny, nx), optional
        The gain ``summed_frames`` was multiplied by (counting data, no dark reference); pixels
        with gain <= 0 or non-finite are never flagged.
    exclude : ndarray of bool, shape (ny, nx), optional
        Pixels already known bad (defects, already replaced): never flagged, and left out of
        the statistics.
    false_positives : float
        Expected number of pixels flagged in a clean (Poisson) image; the per-pixel
        probability threshold is this over the number of pixels.
    workers : int
        Threads for the strips of the test (:mod:`correction.threads`).

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        True at hot pixels.
    """
    img = np.asarray(summed_frames, dtype=np.float32)
    if img.ndim != 2 or min(img.shape) < 3:
        raise ValueError(f"summed_frames must be 2-D and at least 3x3, got shape {img.shape}")
    if not (sigma > 0 and false_positives > 0):
        raise ValueError(f"sigma and false_positives must be > 0, got {sigma}, {false_positives}")
    ny, nx = img.shape
    hot = zeros_written(img.shape, bool)  # and-ed in place below
    g = None
    if gain is not None:
        g = np.asarray(gain, dtype=np.float32)
        if g.shape != img.shape:
            raise ValueError(f"gain has shape {g.shape}, the sum {img.shape}")
    p_max = float(false_positives) / img.size
    blocks = _Blocks(img, workers)
    if not blocks.mean > 0:
        return hot  # nothing recorded: nothing can be hot
    # statistics on whole rows, about 2**18 pixels at most
    rows = np.arange(0, ny, max(1, img.size >> 18))
    inv_gain_rows = None if g is None else _inverse_gain(g[rows])
    x, mu_blk = blocks.counts_and_block_expectation(img, rows, inv_gain_rows)
    keep = np.isfinite(x) & np.isfinite(mu_blk)
    if exclude is not None:
        keep &= ~np.asarray(exclude, dtype=bool)[rows]
    if inv_gain_rows is not None:
        keep &= inv_gain_rows > 0
    x, mu_blk = x[keep], mu_blk[keep]
    if x.size == 0:
        return hot
    if np.count_nonzero(x < -1e-6 * max(1.0, float(np.abs(x).max()))) > 1e-3 * x.size:
        _gaussian_test(img, sigma, p_max, hot)
    else:
        phi = _dispersion(x, mu_blk)
        if not phi > 0:
            return hot
        frac = np.abs(x - np.round(x))
        if np.count_nonzero(frac > 1e-3 + 4e-6 * np.abs(x)) <= 1e-4 * x.size:
            phi = max(phi, 1.0)  # integer counts: Poisson at least
        _poisson_test(img, blocks, g, phi, float(x.mean()), sigma, p_max, hot, workers)
    if exclude is not None:
        hot &= ~np.asarray(exclude, dtype=bool)
    return hot


def gross_outliers(image: np.ndarray, *, factor: float = 1e4) -> np.ndarray | None:
    """Pixels of a float movie's raw sum too far out for any statistics: beyond ``factor``
    times the median of ``|image|`` (at least 1) over about 2**18 sampled pixels, either
    sign; the median holds however many are damaged, up to half. A byte flip in a float32
    frame makes such values (1e30): they would overflow the hot-pixel test's float32
    arithmetic and leave it blind. None when there are none.
    """
    ny = image.shape[0]
    sample = np.abs(image[::max(1, image.size >> 18)], dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    bound = np.float32(factor * max(1.0, float(np.median(sample))))
    if not (float(np.nanmax(image)) > bound or float(np.nanmin(image)) < -bound):
        return None
    gross = np.empty(image.shape, bool)
    for y0 in range(0, ny, 256):
        np.greater(np.abs(image[y0:y0 + 256]), bound, out=gross[y0:y0 + 256])
    return gross


class _Blocks:
    """Sums of square blocks of the image, for block means that leave one pixel out."""

    def __init__(self, img: np.ndarray, workers: int = 1) -> None:
        ny, nx = img.shape
        sample = img[::max(1, img.size >> 18)]  # about 2**18 pixels choose the block size
        size = 16
        while size < 128 and size * size * float(sample.mean(dtype=np.float64)) < 256:
            size *= 2
        y0 = self._starts(ny, size)
        x0 = self._starts(nx, size)
        sums = np.empty((y0.size, x0.size), np.result_type(img.dtype, np.float32))
        ends = np.append(y0[1:], ny)

        def block_rows(lo: int, hi: int) -> None:
            # along rows first (contiguous), then down the small (rows, n_blocks_x) result;
            # the block rows split over threads (one pass over a super-resolution sum, 8184 x
            # 11520: 0.14-0.20 s on one thread, 0.074-0.081 s on two)
            part = img[y0[lo]:ends[hi - 1]]
            sums[lo:hi] = np.add.reduceat(np.add.reduceat(part, x0, axis=1), y0[lo:hi] - y0[lo],
                                          axis=0)

        run_chunks(block_rows, y0.size, workers)
        heights = np.diff(np.append(y0, ny))
        widths = np.diff(np.append(x0, nx))
        counts = heights[:, None] * widths[None, :] - 1.0
        self.mean = float(sums.sum(dtype=np.float64)) / img.size
        self.max_sum = float(sums.max())
        # per block row, each column's block sum and 1 / (pixels - 1)
        self.sums_cols = np.repeat(sums.astype(np.float32), widths, axis=1)
        self.inv_cols = np.repeat((1.0 / counts).astype(np.float32), widths, axis=1)
        self.row_block = np.repeat(np.arange(y0.size), heights)

    @staticmethod
    def _starts(n: int, size: int) -> np.ndarray:
        """Block starts; a remainder under half a block joins the last block."""
        starts = np.arange(0, n, size)
        if starts.size > 1 and n - starts[-1] < size // 2:
            starts = starts[:-1]
        return starts

    def expectation(self, img: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Mean of each pixel's block without the pixel, for ``img[rows]``, float32."""
        rb = self.row_block[rows]
        if rb[0] == rb[-1] and rows[-1] - rows[0] == rows.size - 1:  # one block row: broadcast
            out = np.subtract(self.sums_cols[rb[0]], img[rows[0]:rows[-1] + 1])
            out *= self.inv_cols[rb[0]]
        else:
            out = np.take(self.sums_cols, rb, axis=0)
            out -= img[rows]
            out *= np.take(self.inv_cols, rb, axis=0)
        return out

    def counts_and_block_expectation(self, img: np.ndarray, rows: np.ndarray,
                                     inv_gain_rows: np.ndarray | None
                                     ) -> tuple[np.ndarray, np.ndarray]:
        """Values and block expectations of ``img[rows]`` in counts (times ``inv_gain_rows``,
        the inverse gain of those rows)."""
        x = img[rows].astype(np.float32)
        mu = self.expectation(img, rows)
        if inv_gain_rows is not None:
            x *= inv_gain_rows
            mu *= inv_gain_rows
        return x, mu


def _dispersion(x: np.ndarray, mu: np.ndarray) -> float:
    """Robust ``phi`` in variance = phi * mean, from values and their expectations.

    Starts from the 99.9 % of smallest squared residuals, then keeps residuals within 10
    standard deviations (``r^2 <= 100 phi (mu + phi)``) and re-estimates, three times: a few
    hot pixels, however bright, do not inflate it.
    """
    r2 = np.square(x - mu, dtype=np.float64)
    mu = mu.astype(np.float64)
    keep = r2 <= np.percentile(r2, 99.9)
    phi = float("nan")
    for _ in range(4):
        denominator = float(mu[keep].sum())
        if not denominator > 0:
            return float("nan")
        phi = float(r2[keep].sum()) / denominator
        keep = r2 <= 100.0 * phi * (mu + phi)
    return phi


def _poisson_thresholds(mu_lo: float, mu_hi: float, p_max: float, sigma: float,
                        per_decade: int = 64) -> tuple[np.ndarray, float]:
    """Count thresholds on a log grid of expected counts, from ``mu_lo`` to past ``mu_hi``.

    Entry ``i`` (expected count ``mu_lo * 10**(i / per_decade)``) is the largest of ``a*``,
    where the continuous Poisson tail ``P(a, mu) = gammainc(a, mu)`` (``P(X >= a)`` for integer
    ``a``) falls to ``p_max``, and ``mu + sigma * sqrt(mu)``. A count above it is hot. Returns
    the table and the grid's log10 step.
    """
    n = int(np.ceil(np.log10(max(mu_hi, mu_lo) / mu_lo) * per_decade)) + 2
    mu = mu_lo * 10.0 ** (np.arange(n) / per_decade)
    lo = np.zeros(n)
    hi = mu + 40.0 * np.sqrt(mu) + 60.0
    for _ in range(64):  # bisection: gammainc(a, mu) decreases with a
        mid = 0.5 * (lo + hi)
        above = special.gammainc(mid, mu) >= p_max
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return np.maximum(hi, mu + sigma * np.sqrt(mu)), 1.0 / per_decade


def _inverse_gain(gain: np.ndarray) -> np.ndarray:
    """``1 / gain`` (float32), 0 where the gain is <= 0 or NaN (and 1/inf = 0)."""
    out = np.zeros(gain.shape, np.float32)
    np.divide(np.float32(1.0), gain, out=out, where=gain > 0)
    return out


def _poisson_test(img: np.ndarray, blocks: _Blocks, gain: np.ndarray | None, phi: float,
                  mean_counts: float, sigma: float, p_max: float, hot: np.ndarray,
                  workers: int = 1) -> None:
    """Flag ``value / phi > threshold(expected / phi)`` into ``hot``, a strip at a time.

    A cheap screen (excess above ``sigma`` spreads, which every threshold implies) leaves few
    candidates; only those look their threshold up (expected count rounded up to the grid,
    so conservatively).
    """
    ny, nx = img.shape
    # expected counts below mu_lo are raised to it (a lone count where nothing is expected)
    mu_lo = max(mean_counts / phi * 1e-3, 1e-4)
    # the largest inverse gain (1 / the smallest positive gain); the inverse itself is made
    # strip by strip (no image-sized array)
    gain_max = 1.0 if gain is None else max(
        1.0 / float(np.min(gain, where=gain > 0, initial=np.inf)), 1e-30)
    mu_hi = max(blocks.max_sum, 0.0) * gain_max / phi + 1.0  # no pixel holds more
    table, step = _poisson_thresholds(mu_lo, mu_hi, p_max, sigma)
    floor = np.float32(mu_lo * phi)
    s2phi = np.float32(sigma * sigma * phi)
    strip = max(1, _STRIP_ELEMENTS // nx)
    bounds = np.flatnonzero(np.diff(blocks.row_block)) + 1  # strips never straddle block rows
    starts = np.union1d(np.arange(0, ny, strip), bounds)
    ends = np.append(starts[1:], ny)

    def strips(lo: int, hi: int) -> None:
        for r0, r1 in zip(starts[lo:hi], ends[lo:hi]):  # each strip flags its own rows
            _poisson_strip(int(r0), int(r1))

    def _poisson_strip(r0: int, r1: int) -> None:
        rows = np.arange(r0, r1)
        mu = _neighbour_mean(img, rows)
        np.maximum(mu, blocks.expectation(img, rows), out=mu)
        x = img[r0:r1]
        if gain is not None:
            inv_gain = _inverse_gain(gain[r0:r1])
            x = x * inv_gain
            mu *= inv_gain
        np.maximum(mu, floor, out=mu)
        # screen: excess > sigma * sqrt(phi * mu), which every threshold implies
        excess = np.subtract(x, mu)
        cand = excess > 0
        np.square(excess, out=excess)
        cand &= excess > mu * s2phi
        if not cand.any():
            return
        iy, ix = np.nonzero(cand)
        m = mu[iy, ix].astype(np.float64) / phi
        idx = np.ceil(np.log10(m / mu_lo) / step - 1e-9).astype(np.int64)
        np.clip(idx, 0, table.size - 1, out=idx)
        flagged = x[iy, ix].astype(np.float64) / phi > table[idx]
        hot[r0 + iy[flagged], ix[flagged]] = True

    run_chunks(strips, len(starts), workers)


def _gaussian_test(img: np.ndarray, sigma: float, p_max: float, hot: np.ndarray) -> None:
    """Robust Gaussian test for non-count data: excess over the 8-neighbour mean above
    ``max(sigma, z(p_max))`` times 1.4826 MAD of that excess (measured on a subsample)."""
    ny, nx = img.shape
    rows = np.arange(0, ny, max(1, img.size >> 20))
    resid = (img[rows] - _neighbour_mean(img, rows)).ravel()
    resid = resid[np.isfinite(resid)]
    med = float(np.median(resid))
    scale = 1.4826 * float(np.median(np.abs(resid - med)))
    if not scale > 0:
        scale = max(float(np.std(resid)), 1e-12)
    limit = np.float32(med + max(sigma, -float(special.ndtri(p_max))) * scale)
    strip = max(1, _STRIP_ELEMENTS // nx)
    for r0 in range(0, ny, strip):
        rows = np.arange(r0, min(ny, r0 + strip))
        excess = np.subtract(img[rows], _neighbour_mean(img, rows))
        np.greater(excess, limit, out=hot[r0:r0 + rows.size])


def _neighbour_mean(img: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mean of the 8 neighbours of every pixel of ``img[rows]`` (edges mirrored), float32."""
    ny = img.shape[0]
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    if r1 - r0 == rows.size and r0 >= 1 and r1 <= ny - 1:  # inner strip: slices, no copies
        centre = img[r0:r1]
        vertical = np.add(img[r0 - 1:r1 - 1], centre)
        vertical += img[r0 + 1:r1 + 1]
    else:
        up = np.abs(rows - 1)                              # row -1 mirrors to row 1
        down = (ny - 1) - np.abs((ny - 1) - (rows + 1))    # row ny mirrors to row ny - 2
        centre = img[rows]
        vertical = img[up]
        vertical += centre
        vertical += img[down]
    box = _sum3(vertical, np.empty_like(vertical), axis=1)  # 3x3 box sums
    box -= centre
    box *= np.float32(1.0 / 8.0)
    return box


#: One defect-list rectangle: first column x, first row y (0-based), w columns, h rows.
DefectRect = tuple[int, int, int, int]


def read_defect_list(path: str | Path, shape_yx: tuple[int, int]) -> np.ndarray:
    """Turn a defect list (``x y w h`` lines, or SerialEM's camera defect list fitted onto the
    frames, :mod:`correction.camera_defects`) into a mask of ``shape_yx``."""
    listed = load_defect_list(path)
    rects = listed.rects_on(shape_yx) if isinstance(listed, CameraDefectList) else listed
    return rasterize_defects(rects, shape_yx)


def rasterize_defects(rects: tuple[DefectRect, ...], shape_yx: tuple[int, int]) -> np.ndarray:
    """A mask of ``shape_yx`` (ny, nx), True inside each ``x y w h`` rectangle (clipped to it)."""
    mask = np.zeros(shape_yx, dtype=bool)
    for x, y, w, h in rects:
        mask[y:y + h, x:x + w] = True
    return mask


def load_defect_list(path: str | Path) -> tuple[DefectRect, ...] | CameraDefectList:
    """Read a defect list file: ``x y w h`` rectangles in the movie's grid
    (:func:`parse_defect_list`), or SerialEM's camera defect list, whose rectangles depend on the
    frames' size (:class:`correction.camera_defects.CameraDefectList`).

    Raises
    ------
    GainReferenceError
        Missing file or a malformed line (quoted with its number).
    """
    path = Path(path)
    text = _defect_list_text(path)
    if is_camera_defect_list(text):
        return parse_camera_defect_text(text, path)
    return _rectangles(text, path)


def _defect_list_text(path: Path) -> str:
    try:
        return decode_metadata_text(path.read_bytes()).text  # a BOM, UTF-16, cp1252 too
    except FileNotFoundError:
        raise GainReferenceError(path, "defect list: no such file") from None
    except OSError as exc:
        raise GainReferenceError(path, f"defect list unreadable: {exc}") from None


def parse_defect_list(path: str | Path) -> tuple[DefectRect, ...]:
    """Read a defect list of rectangles, in the movie's pixel grid.

    Each non-empty line not starting with ``#`` holds ``x y w h``: a rectangle of bad pixels
    whose first column is x and first row is y (0-based), w columns wide and h rows high, as
    MotionCor's defect files have them. They are clipped to the frame when rasterized.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    tuple of (x, y, w, h)

    Raises
    ------
    GainReferenceError
        Missing file, a malformed line (quoted with its number), or SerialEM's camera defect
        list (read by :func:`load_defect_list`).
    """
    path = Path(path)
    text = _defect_list_text(path)
    if is_camera_defect_list(text):
        raise GainReferenceError(path, "a SerialEM camera defect list, not 'x y w h' lines: "
                                       "its rectangles depend on the frames' size")
    return _rectangles(text, path)


def _rectangles(text: str, path: Path) -> tuple[DefectRect, ...]:
    """The ``x y w h`` rectangles of a defect list's ``text``."""
    rects: list[DefectRect] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0].strip()
        if not stripped:
            continue
        parts = stripped.replace(",", " ").split()
        try:
            x, y, w, h = (int(float(p)) for p in parts)
        except (ValueError, OverflowError):  # OverflowError: inf
            raise GainReferenceError(
                path, f"defect list line {number} is not 'x y w h': {line.strip()!r}") from None
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise GainReferenceError(
                path, f"defect list line {number} has a negative position or empty size: "
                      f"{line.strip()!r}")
        rects.append((x, y, w, h))
    return tuple(rects)


_STRICT_RECT = re.compile(r"\s*\d+\s+\d+\s+\d+\s+\d+\s*")


def relion_reads_defect_list(path: str | Path) -> bool:
    """Whether RELION reads ``path`` as the defect list it is: named ``*.txt`` (RELION compares
    the extension exactly; any other name is read as an image) and nothing but ``x y w h``
    integers (``MotioncorrRunner::fillDefectMask`` reads ``f >> x >> y >> w >> h`` until end of
    file: a comment or a comma stops the stream short of the end, and the loop never ends).
    False when the file cannot be read."""
    path = Path(path)
    if path.suffix != ".txt":
        return False
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return all(not line.strip() or _STRICT_RECT.fullmatch(line) for line in lines)


def first_coordinates_yx(mask: np.ndarray, limit: int) -> tuple[np.ndarray, int]:
    """``([row, column] of the first ``limit`` True pixels in row order, how many there are)``,
    without listing them all (a damaged movie may have tens of millions). Through the flat
    indices: ``np.argwhere`` took 160 ms on a super-resolution frame, this 15 ms."""
    count = int(np.count_nonzero(mask))
    nx = mask.shape[1]
    if count <= limit:
        flat = np.flatnonzero(mask)
    else:
        found, got, rows = [], 0, max(1, (1 << 22) // max(1, nx))
        for y0 in range(0, mask.shape[0], rows):
            block = np.flatnonzero(mask[y0:y0 + rows]) + y0 * nx
            found.append(block)
            got += len(block)
            if got >= limit:
                break
        flat = np.concatenate(found)[:limit]
    return np.stack(np.divmod(flat, nx), axis=1).astype(np.int64), count


def defect_mask_from_image(image: np.ndarray) -> np.ndarray:
    """Turn a defect map image into a mask: any non-zero (or non-finite) pixel is a defect."""
    image = np.asarray(image)
    if image.dtype.kind == "f":
        return ~np.isfinite(image) | (image != 0)
    return image != 0
