"""Bad pixels: hot-pixel detection on the summed movie, defect lists and maps, replacement.

Every bad pixel (hot, dead, a defect-list rectangle, gain 0) is replaced the same way: by the
mean of its valid neighbours in the same frame (the 8-neighbourhood; a pixel inside a larger
defect region with no valid neighbour takes the nearest valid pixel). The neighbour indices
are worked out once per mask (:class:`ReplacementPlan`), so replacing costs a gather over the
bad pixels only, not a pass over the frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import GainReferenceError

__all__ = [
    "ReplacementPlan",
    "plan_replacement",
    "replace_pixels",
    "detect_hot_pixels",
    "read_defect_list",
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


def detect_hot_pixels(summed_frames: np.ndarray, *, sigma: float = 8.0) -> np.ndarray:
    """Find hot pixels in the gain-corrected sum of a movie.

    A pixel is hot when it exceeds the mean of its 8 neighbours by more than ``sigma`` times
    the expected counting spread there. The spread follows the Poisson model of a counting
    detector, variance = g * local mean, with the scale g measured robustly (median absolute
    deviation over a subsample) from the image itself, so it also holds for gain-scaled or
    integrating data. Specimen features span several pixels and are followed by the local
    mean, so at ordinary doses they are not flagged; a hot neighbour raises the local mean of
    a second hot pixel by only 1/8 of its excess, so pairs are still found.

    Parameters
    ----------
    summed_frames : ndarray, shape (ny, nx)
        Gain-corrected sum of all frames (counts or gain-scaled counts), ny, nx >= 3.
    sigma : float
        Threshold in units of the expected spread (``GainParams.hot_pixel_sigma``).

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        True at hot pixels.
    """
    img = np.asarray(summed_frames, dtype=np.float32)
    if img.ndim != 2 or min(img.shape) < 3:
        raise ValueError(f"summed_frames must be 2-D and at least 3x3, got shape {img.shape}")
    ny = img.shape[0]
    # Everything is computed on a few rows at a time (a subsample for the statistics, then
    # strips that stay in cache), never on full-size temporaries.
    floor = np.float32(max(float(np.mean(_neighbour_mean(img, np.arange(0, ny, 7))[:, ::7]))
                           * 1e-3, 1e-6))
    # Robust scale of resid / sqrt(local) from whole rows (about 2**20 pixels at most).
    step = max(1, img.size >> 20)
    rows = np.arange(0, ny, step)
    local = np.maximum(_neighbour_mean(img, rows), floor)
    z = (img[rows] - local) / np.sqrt(local)
    z = z[np.isfinite(z)].ravel()
    med = float(np.median(z))
    mad = float(np.median(np.abs(z - med))) * 1.4826
    if not mad > 0:
        # Noise-free or nearly constant data: fall back to the spread of the residual.
        mad = max(float(np.std(z)), 1e-6)
    c = med + sigma * mad
    hot = np.empty(img.shape, dtype=bool)
    strip = max(1, _STRIP_ELEMENTS // img.shape[1])
    for r0 in range(0, ny, strip):
        r1 = min(ny, r0 + strip)
        local = _neighbour_mean(img, np.arange(r0, r1))
        resid = np.subtract(img[r0:r1], local)
        out = hot[r0:r1]
        np.greater(resid, 0, out=out)
        if c <= 0:
            continue
        # resid > c * sqrt(local)  <=>  resid > 0 and resid**2 > c**2 * local
        np.maximum(local, floor, out=local)
        local *= np.float32(c * c)
        np.multiply(resid, resid, out=resid)
        out &= resid > local
    return hot


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


def read_defect_list(path: str | Path, shape_yx: tuple[int, int]) -> np.ndarray:
    """Turn a defect list into a mask.

    Each non-empty line not starting with ``#`` holds ``x y w h``: a rectangle of bad pixels
    whose first column is x and first row is y (0-based), w columns wide and h rows high, as
    MotionCor's defect files have them. Rectangles are clipped to the frame.

    Parameters
    ----------
    path : str or Path
    shape_yx : tuple of int
        Frame shape (ny, nx) in the detector orientation the list refers to.

    Returns
    -------
    ndarray of bool, shape ``shape_yx``

    Raises
    ------
    GainReferenceError
        Missing file or a malformed line (quoted with its number).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GainReferenceError(path, "defect list: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GainReferenceError(path, f"defect list unreadable: {exc}") from None
    mask = np.zeros(shape_yx, dtype=bool)
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0].strip()
        if not stripped:
            continue
        parts = stripped.replace(",", " ").split()
        try:
            x, y, w, h = (int(float(p)) for p in parts)
        except ValueError:
            raise GainReferenceError(
                path, f"defect list line {number} is not 'x y w h': {line.strip()!r}") from None
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise GainReferenceError(
                path, f"defect list line {number} has a negative position or empty size: "
                      f"{line.strip()!r}")
        mask[y:y + h, x:x + w] = True
    return mask


def defect_mask_from_image(image: np.ndarray) -> np.ndarray:
    """Turn a defect map image into a mask: any non-zero (or non-finite) pixel is a defect."""
    image = np.asarray(image)
    if image.dtype.kind == "f":
        return ~np.isfinite(image) | (image != 0)
    return image != 0
