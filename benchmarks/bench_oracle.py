"""Global alignment error beside its bound: the leave-one-out oracle.

For each movie with known motion this runs the whole-frame alignment of the pipeline
(``correct_frames`` with one patch, i.e. global only) and the *oracle*: every frame correlated
against the sum of all other frames shifted by their TRUE displacements
(:func:`correction.align_global.leave_one_out_oracle`, on the full padded grid, no Fourier
crop), with the matched filter and with a range of B-factors. The oracle's error is what the
noise of the frames leaves to any leave-one-out aligner; the estimator should come within 1.5x
of the best of them where the frames' signal stands out (the synthetic movies at 30 % contrast,
1 e/px/frame; the cryo-like field at 0.3 e/px/frame and more). Below that, at 10 % contrast
and under 0.3 e/px/frame, the oracle favours the truth (its filter is measured on the frames
aligned by it, and it searches near it) and reads 2-12x below what any aligner reaches:
:func:`~correction.align_global.leave_one_out_oracle` gives the figures.

Two kinds of movie, both with exactly known motion:

* ``exposure``: a counted exposure split into frames. Each electron of one exposure goes to a
  random frame (binomial thinning, so every frame is an independent counted exposure of the same
  specimen) and each frame is a window of the field at a known integer offset (no wrap, no
  interpolation: the truth is exact). With ``--exposure FILE`` (an MRC of integer counts) the
  field is that real exposure; otherwise a stand-in with a cryo-EM-like spectrum is rendered:
  a ``1/k`` amplitude specimen through a 300 kV contrast transfer function (1.5 um defocus,
  Cs 2.7 mm, 7 % amplitude contrast) with a B = 80 A^2 envelope, 7 % relative contrast, Poisson
  counts at ``--dose`` e/px per frame. A real one: ``benchmarks/real_exposure.py`` fetches a
  K2 counting-mode exposure from PyPI (the only one there) and writes its counts; the dose per
  frame is then its mean over ``--frames``, and the output adds the field's power over the
  Poisson level per ring of spatial frequency and, for frames larger than the alignment grid,
  the oracle on that grid's Fourier crop (the frequencies the estimator is given).
* ``synthetic``: the project's synthetic movies (:func:`correction.synthetic.render_movie`, 30 %
  contrast, sub-pixel drift, gain and hot pixels), as in ``bench_correct.py``.

Errors are RMS over frames and seeds after removing the common offset (px).

    .venv/bin/python benchmarks/bench_oracle.py [--sizes 1024] [--seeds 3] [--frames 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from correction.align_global import leave_one_out_oracle  # noqa: E402
from correction.fourier import (fast_length, fourier_crop, irfft2,  # noqa: E402
                                radial_frequency_sq, rfft2)
from correction.gain import GainReference, apply_gain  # noqa: E402
from correction.params import AlignParams, CorrectionParams, DoseParams  # noqa: E402
from correction.pipeline import correct_frames  # noqa: E402
from correction.synthetic import drift_trajectory, render_movie  # noqa: E402

PIXEL_SIZE_A = 1.0
ORACLE_BFACTORS_PX2 = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)


#: the estimator's error within this many times the oracle's (the docstring's cases)
RATIO_BOUND = 1.5

def cryo_field(rng: np.random.Generator, shape_yx: tuple[int, int], *, contrast: float = 0.07,
               pixel_size_A: float = PIXEL_SIZE_A, defocus_A: float = 15000.0,
               voltage_kV: float = 300.0, cs_mm: float = 2.7, amplitude_contrast: float = 0.07,
               envelope_A2: float = 80.0) -> np.ndarray:
    """A positive image of mean 1 with a cryo-EM-like power spectrum (Thon rings), float32."""
    k2 = radial_frequency_sq(shape_yx, scale_yx=(pixel_size_A, pixel_size_A)).astype(np.float64)
    volts = voltage_kV * 1e3
    wavelength_A = 12.2643 / np.sqrt(volts * (1 + 0.978466e-6 * volts))
    chi = np.pi * wavelength_A * defocus_A * k2 - 0.5 * np.pi * cs_mm * 1e7 * wavelength_A**3 * k2**2
    ctf = -(np.sqrt(1 - amplitude_contrast**2) * np.sin(chi) + amplitude_contrast * np.cos(chi))
    amplitude = np.exp(-envelope_A2 * k2 / 4) / np.sqrt(k2 + (1 / 300.0) ** 2)
    img = irfft2(rfft2(rng.standard_normal(shape_yx, dtype=np.float32))
                 * (amplitude * ctf).astype(np.complex64), shape_yx)
    img = (img - img.mean()) / img.std()
    return np.maximum(1 + contrast * img, 0).astype(np.float32)


def split_exposure(rng: np.random.Generator, counts: np.ndarray, offsets_yx_px: np.ndarray,
                   frame_shape_yx: tuple[int, int]) -> np.ndarray:
    """Split a counted exposure into frames: each electron to a random frame, frame ``i`` the
    window of the field that shows the specimen displaced by ``offsets_yx_px[i]`` (integers).

    ``counts`` must exceed the frame by ``max|offset|`` on every side; the window of frame ``i``
    starts at ``margin - offset``, so a feature at ``y0`` of the centre window is at
    ``y0 + dy`` in frame ``i`` (:mod:`correction.conventions`).
    """
    n = len(offsets_yx_px)
    ny, nx = frame_shape_yx
    margin = (counts.shape[0] - ny) // 2, (counts.shape[1] - nx) // 2
    remaining = counts.astype(np.int64)
    frames = np.empty((n, ny, nx), np.int16)
    for i, (dy, dx) in enumerate(np.asarray(offsets_yx_px, dtype=np.int64)):
        part = remaining if i == n - 1 else rng.binomial(remaining, 1.0 / (n - i))
        remaining = remaining - part
        r0, c0 = margin[0] - dy, margin[1] - dx
        frames[i] = part[r0:r0 + ny, c0:c0 + nx]
    return frames


def exposure_movie(rng: np.random.Generator, size: int, n_frames: int, dose_e_px: float,
                   field: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frames and integer true shifts (``[dy, dx]``, mean not removed) from one exposure."""
    shifts = np.round(drift_trajectory(rng, n_frames, total_px=8.0)).astype(np.int64)
    margin = int(np.abs(shifts).max())
    shape = (size + 2 * margin, size + 2 * margin)
    if field is None:
        counts = rng.poisson(cryo_field(rng, shape) * dose_e_px * n_frames)
    else:
        if min(field.shape) < shape[0]:
            raise SystemExit(f"the exposure {field.shape} is smaller than {shape}")
        counts = field[:shape[0], :shape[1]]
    return split_exposure(rng, counts, shifts, (size, size)), shifts.astype(np.float64)


def padded_spectra(frames: np.ndarray, gain: np.ndarray | None, margin_px: int,
                   hot_yx: np.ndarray | None = None) -> np.ndarray:
    """Gain-corrected frames padded with their mean (no wrap-around), full-grid half spectra.

    The known hot pixels ``hot_yx`` (row, column) are set to the frame mean: they stay put
    while the specimen moves and would pull the oracle's peak towards zero shift.
    """
    n, ny, nx = frames.shape
    shape = (fast_length(ny + margin_px), fast_length(nx + margin_px))
    ref = GainReference.from_arrays(gain) if gain is not None else None
    out = np.empty((n, shape[0], shape[1] // 2 + 1), np.complex64)
    buf = np.empty(shape, np.float32)
    for i in range(n):
        view = buf[:ny, :nx]
        if ref is not None:
            apply_gain(frames[i], ref, out=view)
        else:
            view[:] = frames[i]
        if hot_yx is not None and len(hot_yx):
            view[hot_yx[:, 0], hot_yx[:, 1]] = view.mean()
        buf[:ny, nx:] = view.mean()
        buf[ny:, :] = view.mean()
        out[i] = rfft2(buf)
    return out


def _errors(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return (found - found.mean(0)) - (truth - truth.mean(0))


def _rms(errors: list[np.ndarray]) -> float:
    e = np.concatenate(errors)
    return float(np.sqrt(np.nanmean(np.sum(e**2, axis=1))))


def power_over_poisson(counts: np.ndarray, edges: tuple[float, ...] = (
        0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)) -> list[tuple[float, float, float]]:
    """(ring start, ring end in cycles/pixel, mean power over the mean count) of a counted
    field: 1 where it holds Poisson noise alone, above 1 where specimen or detector correlation
    adds power."""
    field = counts.astype(np.float64)
    mean = field.mean()
    power = np.abs(np.fft.rfft2(field - mean)) ** 2 / field.size
    k = np.sqrt(np.fft.fftfreq(field.shape[0])[:, None] ** 2
                + np.fft.rfftfreq(field.shape[1])[None, :] ** 2)
    return [(lo, hi, float(power[(k > lo) & (k <= hi)].mean() / mean))
            for lo, hi in zip(edges[:-1], edges[1:])]


def crop_oracle(spectra: np.ndarray, truth: np.ndarray, align_px: int) -> np.ndarray | None:
    """The oracle on the Fourier crop whose short side is ``align_px`` (shifts in input px);
    None when the grid is not larger."""
    ny, nx = spectra.shape[1], 2 * (spectra.shape[2] - 1)
    if min(ny, nx) <= align_px:
        return None
    ratio = align_px / min(ny, nx)
    out = (2 * int(round(ny * ratio / 2)), 2 * int(round(nx * ratio / 2)))
    cropped = fourier_crop(spectra, (ny, nx), out)
    return leave_one_out_oracle(cropped, truth * (out[0] / ny), shape_yx=out) / (out[0] / ny)


def run(kind: str, size: int, n_frames: int, seeds: int, dose_e_px: float,
        field: np.ndarray | None, *, field_spectrum: bool = False) -> None:
    est, orc, orc_crop = [], [], []
    align_px = AlignParams().align_size_px
    orc_b: dict[float, list[np.ndarray]] = {b: [] for b in ORACLE_BFACTORS_PX2}
    t_align = []
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        if kind == "exposure":
            frames, truth = exposure_movie(rng, size, n_frames, dose_e_px, field)
            gain, hot = None, None
            if field is not None:  # a real exposure: its own dose
                dose_e_px = float(frames.mean())
        else:
            syn = render_movie(rng, shape_yx=(size, size), n_frames=n_frames,
                               electrons_per_px_per_frame=dose_e_px, pixel_size_A=PIXEL_SIZE_A,
                               n_hot_pixels=max(20, size * size // 50000), dtype=np.int16)
            frames, truth, gain, hot = syn.frames, syn.shifts_yx_px, syn.gain, syn.hot_pixels_yx
        params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=dose_e_px / PIXEL_SIZE_A**2),
                                  align=AlignParams(patches_x=1, patches_y=1))
        out = correct_frames(frames, pixel_size_A=PIXEL_SIZE_A, params=params,
                             gain_reference=GainReference.from_arrays(gain)
                             if gain is not None else None)
        t_align.append(out.timings_s.get("align", float("nan")))
        est.append(_errors(out.shifts_yx_px, truth))
        spectra = padded_spectra(frames, gain, int(np.ceil(np.abs(truth).max())) + 16, hot)
        orc.append(_errors(leave_one_out_oracle(spectra, truth), truth))
        cropped = crop_oracle(spectra, truth, align_px)
        if cropped is not None:
            orc_crop.append(_errors(cropped, truth))
        for b in ORACLE_BFACTORS_PX2:
            orc_b[b].append(_errors(leave_one_out_oracle(spectra, truth, bfactor_px2=b), truth))
        del spectra
    e, o = _rms(est), _rms(orc)
    ob = {b: _rms(v) for b, v in orc_b.items()}
    best_b = min(ob, key=ob.get)
    bound = min(o, ob[best_b])
    label = "real exposure" if (kind == "exposure" and field is not None) else \
        ("exposure stand-in (NOT real data)" if kind == "exposure" else "synthetic")
    print(f"{label}, {size}^2 x {n_frames}, {dose_e_px} e/px/frame, {seeds} seeds:")
    print(f"  global error {e:.4f} px RMS vs oracle {bound:.4f} px (ratio {e / bound:.2f}; "
          f"bound {RATIO_BOUND:g}x where the frames' signal stands out)"
          f"   [align {np.median(t_align):.2f} s]")
    print(f"  oracle: matched filter {o:.4f} px; B-factor (px^2) "
          + ", ".join(f"{b:g}: {v:.4f}" for b, v in ob.items()), flush=True)
    if orc_crop:
        oc = _rms(orc_crop)
        print(f"  oracle on the alignment grid's crop ({align_px} px short side): {oc:.4f} px "
              f"(estimator {e / oc:.2f}x that)", flush=True)
    if kind == "exposure" and field is not None and field_spectrum:
        rings = power_over_poisson(field)
        print("  the field's power over the Poisson level per ring (cycles/px): "
              + ", ".join(f"{lo:g}-{hi:g}: {r:.3f}" for lo, hi, r in rings), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dose", type=float, default=1.0, help="e/px per frame")
    parser.add_argument("--kinds", nargs="+", default=["exposure", "synthetic"],
                        choices=["exposure", "synthetic"])
    parser.add_argument("--exposure", type=Path,
                        help="MRC of one real counted exposure (integer counts) to split")
    args = parser.parse_args(argv)
    field = None
    if args.exposure is not None:
        import mrcfile

        with mrcfile.open(args.exposure, permissive=True) as mrc:
            field = np.asarray(mrc.data).reshape(mrc.data.shape[-2:]).astype(np.int64)
    for size in args.sizes:
        for kind in args.kinds:
            t = time.perf_counter()
            run(kind, size, args.frames, args.seeds, args.dose, field,
                field_spectrum=size == args.sizes[-1])
            print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
