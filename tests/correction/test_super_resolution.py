"""Super-resolution movies binned to the physical pixel give the physical movie's shifts.

"The same movie" at two samplings means the same electrons: a detector's physical pixel counts
the events of its 2 x 2 super-resolution sub-pixels. So the physical-size movie here is the 2 x 2
sum of the super-resolution counts (rendered by :mod:`correction.synthetic` at twice the
sampling, with the drift in super-resolution pixels), and the EER case decodes one file at
sampling 1 and at sampling 2. The pipeline bins the super-resolution frames by 2 in Fourier space
(``ReadParams.bin_factor``, or the EER sampling); the shifts it finds, in physical pixels, must
match those found on the physical movie within 0.05 px, and both must match the truth.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from correction import grids as grid_plans
from correction import memory_model
from correction.grids import EXTRA_MARGIN_PX, align_from_block_sums, plan_grids
from correction.params import AlignParams, CorrectionParams, DoseParams, ReadParams
from correction.pipeline import correct_frames, correct_movie
from correction.synthetic import render_movie

PHYS_PIXEL_A = 1.2
GLOBAL = AlignParams(patches_x=1, patches_y=1, max_shift_px=20.0)


def _load_writer():
    path = Path(__file__).parents[1] / "helpers" / "eer_writer.py"
    spec = importlib.util.spec_from_file_location("motionwatch_test_eer_writer_sr", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _truth_phys(n_frames: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n_frames)
    shifts = np.stack([-4.0 * t + 0.3 * np.sin(7 * t), 5.0 * np.sqrt(t)], axis=1)
    return shifts - shifts.mean(0)


def _mean_zero(s: np.ndarray) -> np.ndarray:
    return s - s.mean(0)


def test_super_resolution_movie_binned_by_2_gives_the_physical_shifts_within_0_05_px():
    n, phys = 12, (192, 256)
    truth = _truth_phys(n)
    rng = np.random.default_rng(2024)
    # 0.5 e per super-resolution pixel per frame = 2 e per physical pixel per frame
    sr = render_movie(rng, shape_yx=(2 * phys[0], 2 * phys[1]), n_frames=n,
                      shifts_yx_px=2.0 * truth, electrons_per_px_per_frame=0.5,
                      pixel_size_A=PHYS_PIXEL_A / 2, gain=None, n_hot_pixels=0,
                      dtype=np.uint8)
    # the same electrons, counted by physical pixels
    physical = sr.frames.reshape(n, phys[0], 2, phys[1], 2).sum(axis=(2, 4), dtype=np.uint16)

    dose = DoseParams(dose_per_frame_e_A2=2.0 / PHYS_PIXEL_A ** 2)
    binned = correct_frames(sr.frames, pixel_size_A=PHYS_PIXEL_A / 2,
                            params=CorrectionParams(dose=dose, read=ReadParams(bin_factor=2.0),
                                                    align=GLOBAL))
    direct = correct_frames(physical, pixel_size_A=PHYS_PIXEL_A,
                            params=CorrectionParams(dose=dose, align=GLOBAL))

    assert binned.shape_yx == direct.shape_yx == phys
    assert binned.pixel_size_A == pytest.approx(PHYS_PIXEL_A)
    np.testing.assert_allclose(_mean_zero(binned.shifts_yx_px), _mean_zero(direct.shifts_yx_px),
                               atol=0.05)
    np.testing.assert_allclose(_mean_zero(binned.shifts_yx_px), truth, atol=0.15)
    np.testing.assert_allclose(_mean_zero(direct.shifts_yx_px), truth, atol=0.15)


def _eer_events(rng, p_sub: np.ndarray, phys_shape: tuple[int, int]):
    """One raw frame: events drawn on the super-resolution grid, at most one per physical
    pixel; returns flat physical positions and true 2-bit sub-pixel (x, y) per event."""
    ny, nx = phys_shape
    ys, xs = np.nonzero(rng.random(p_sub.shape, dtype=np.float32) < p_sub)
    flat = (ys // 2) * nx + xs // 2
    flat, first = np.unique(flat, return_index=True)   # a pixel holds one event per frame
    ys, xs = ys[first], xs[first]
    # the first sub-pixel bit says which half; the second is a finer position within it
    sub = np.stack([(xs % 2) * 2 + rng.integers(0, 2, xs.size),
                    (ys % 2) * 2 + rng.integers(0, 2, ys.size)], axis=1)
    return flat, sub


def test_eer_decoded_at_sampling_2_gives_the_sampling_1_shifts_within_0_05_px(tmp_path):
    """One EER file whose events carry true sub-pixel positions: decoded at sampling 2 (8K-like
    grid) and binned back by 2 (MotionCor2's -EerSampling 2 -FtBin 2), it must give the shifts
    of the same file decoded at sampling 1, in physical pixels; without the binning its sums
    stay on the 8K grid, at half the physical pixel."""
    from correction.fourier import apply_shift, irfft2, rfft2
    from correction.synthetic import specimen_image

    writer = _load_writer()
    n_fractions, group, phys = 8, 10, (256, 256)
    rate = 0.15                        # events per physical pixel per raw frame
    truth = _truth_phys(n_fractions)
    rng = np.random.default_rng(7)
    margin = 32
    canvas_shape = (2 * phys[0] + 2 * margin, 2 * phys[1] + 2 * margin)
    canvas_spec = rfft2(specimen_image(rng, canvas_shape) * np.float32(rate / 4))
    raw, subpixels = [], []
    for f in range(n_fractions):
        signal = irfft2(apply_shift(canvas_spec, canvas_shape, 2.0 * truth[f]), canvas_shape)
        p_sub = np.clip(signal[margin:margin + 2 * phys[0], margin:margin + 2 * phys[1]], 0, 1)
        for _ in range(group):
            flat, sub = _eer_events(rng, p_sub, phys)
            raw.append(flat)
            subpixels.append(sub)
    path = writer.write_eer(tmp_path / "sr.eer", raw, shape_yx=phys, subpixels=subpixels,
                            metadata=[("numberOfFrames", None, str(len(raw))),
                                      ("sensorPixelSize.width", "m", f"{PHYS_PIXEL_A}e-10")])
    dose = DoseParams(dose_per_frame_e_A2=rate * group / PHYS_PIXEL_A ** 2)
    results = {}
    for sampling in (1, 2):
        params = CorrectionParams(dose=dose, align=GLOBAL,
                                  read=ReadParams(eer_group_frames=group, eer_sampling=sampling,
                                                  bin_factor=float(sampling)))
        results[sampling] = correct_movie(path, tmp_path / f"out{sampling}", params)
    fine = correct_movie(path, tmp_path / "out8k", CorrectionParams(
        dose=dose, align=GLOBAL, read=ReadParams(eer_group_frames=group, eer_sampling=2)))
    record = json.loads(fine.outputs["motion"].read_text())
    assert record["shape"] == [2 * n for n in phys]
    assert record["pixel_size_A"] == pytest.approx(PHYS_PIXEL_A / 2)

    for result in results.values():
        record = json.loads(result.outputs["motion"].read_text())
        assert record["shape"] == list(phys)
        assert record["pixel_size_A"] == pytest.approx(PHYS_PIXEL_A)
        assert record["frames"] == n_fractions
    s1, s2 = (_mean_zero(results[k].shifts_yx_px) for k in (1, 2))
    np.testing.assert_allclose(s2, s1, atol=0.05)
    np.testing.assert_allclose(s1, truth, atol=0.15)


@pytest.mark.parametrize("bin_factor", [2.0, 1.0])
def test_a_frame_eight_times_the_alignment_grid_is_aligned_on_its_2x2_block_sums(monkeypatch,
                                                                                  bin_factor):
    """A super-resolution frame (here 8 times the alignment grid on each axis), binned to the
    physical pixel or not, gets its alignment crop from its 2 x 2 block sums, a quarter of the
    rows' transforms: the shifts are as close to the truth as those aligned on the crop of the
    whole frame's spectrum (the bound), and every frame is treated alike, so keeping no output
    spectrum (over the memory budget) gives the same shifts bit for bit."""
    from correction import pipeline

    n, phys = 10, (320, 384)
    truth = _truth_phys(n)
    sr = render_movie(np.random.default_rng(7), shape_yx=(2 * phys[0], 2 * phys[1]),
                      n_frames=n, shifts_yx_px=2.0 * truth, electrons_per_px_per_frame=0.5,
                      pixel_size_A=PHYS_PIXEL_A / 2, gain=None, n_hot_pixels=0,
                      dtype=np.uint8)
    align = AlignParams(patches_x=1, patches_y=1, max_shift_px=20.0, align_size_px=64)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=2.0 / PHYS_PIXEL_A ** 2),
                              read=ReadParams(bin_factor=bin_factor), align=align)
    grids = plan_grids((2 * phys[0], 2 * phys[1]), bin_factor,
                            int(np.ceil(align.max_shift_px)) + EXTRA_MARGIN_PX,
                            align.align_size_px)
    assert align_from_block_sums(grids)

    calls = []
    real = pipeline.rfft2_cropped_of_2x2
    monkeypatch.setattr(pipeline, "rfft2_cropped_of_2x2",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    blocks = correct_frames(sr.frames, pixel_size_A=PHYS_PIXEL_A / 2, params=params)
    assert len(calls) == n

    monkeypatch.setattr(memory_model, "SPECTRA_BUDGET_BYTES", 0)  # no output spectrum kept
    none_kept = correct_frames(sr.frames, pixel_size_A=PHYS_PIXEL_A / 2, params=params)
    assert len(calls) == 2 * n
    np.testing.assert_array_equal(none_kept.shifts_yx_px, blocks.shifts_yx_px)

    monkeypatch.setattr(grid_plans, "BLOCK_SUM_MIN_RATIO", 10 ** 6)  # the whole frame's crop
    whole = correct_frames(sr.frames, pixel_size_A=PHYS_PIXEL_A / 2, params=params)
    assert len(calls) == 2 * n  # none more

    def rms_error(result) -> float:  # physical pixels
        found = _mean_zero(result.shifts_yx_px) * bin_factor / 2.0
        return float(np.sqrt(np.mean((found - truth) ** 2)))

    # binned, seeds 1, 2, 3, 7: 0.048-0.068 px with block sums, 0.049-0.069 px whole; unbinned,
    # seed 7: 0.054 against 0.054 px
    assert rms_error(blocks) <= 1.2 * rms_error(whole) + 0.01, (rms_error(blocks),
                                                                rms_error(whole))
    assert rms_error(blocks) < 0.1


def test_every_super_resolution_frame_is_made_from_gain_corrected_rows_never_a_padded_frame(
        monkeypatch):
    """A super-resolution frame is never gain-corrected into a whole padded frame: its bands of
    gain-corrected raw rows (defects and hot pixels replaced as on the padded frame) are
    transformed for the binned spectrum and summed 2 x 2 for the alignment crop in one pass
    when its spectrum is kept; when it is not, the forward pass makes the block sums alone and
    the sums' pass the binned spectrum. The crops are the same to the bit either way, so the
    shifts and the detector-pattern check of the two runs are equal, and so are the four sums
    (to the float rounding of another order of summation)."""
    from correction import pipeline
    from correction.defects import plan_replacement
    from correction.gain import GainReference

    n, phys = 6, (320, 384)
    sr = render_movie(np.random.default_rng(11), shape_yx=(2 * phys[0], 2 * phys[1]),
                      n_frames=n, shifts_yx_px=2.0 * _truth_phys(n),
                      electrons_per_px_per_frame=0.5, pixel_size_A=PHYS_PIXEL_A / 2,
                      gain=True, n_hot_pixels=20, dtype=np.uint8)
    defects = np.zeros(sr.frames.shape[1:], bool)
    defects[:, 301] = True  # a bad column
    defects[2 * phys[0] - 1, :40] = True  # on the last row: replaced from the padding
    reference = GainReference(gain=sr.gain, defect_mask=defects, plan=plan_replacement(defects))
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=2.0 / PHYS_PIXEL_A ** 2),
                              read=ReadParams(bin_factor=2.0),
                              align=AlignParams(patches_x=1, patches_y=1, max_shift_px=20.0,
                                                align_size_px=64))

    def run(budget_bytes: int | None) -> tuple[object, dict[str, int]]:
        calls = {"padded frame": 0, "block sums alone": 0, "rows transformed": 0,
                 "rows transformed and summed": 0}
        real_gain, real_sums = pipeline.apply_gain, pipeline.sum_2x2_of_rows
        real_rows = pipeline.rfft2_cropped_of_rows

        def rows(*a, **k):
            calls["rows transformed" if k.get("sums_2x2") is None
                  else "rows transformed and summed"] += 1
            return real_rows(*a, **k)

        def gain(*a, **k):
            calls["padded frame"] += 1
            return real_gain(*a, **k)

        def sums(*a, **k):
            calls["block sums alone"] += 1
            return real_sums(*a, **k)

        monkeypatch.setattr(pipeline, "apply_gain", gain)
        monkeypatch.setattr(pipeline, "sum_2x2_of_rows", sums)
        monkeypatch.setattr(pipeline, "rfft2_cropped_of_rows", rows)
        if budget_bytes is not None:
            monkeypatch.setattr(memory_model, "SPECTRA_BUDGET_BYTES", budget_bytes)
        result = correct_frames(sr.frames, pixel_size_A=PHYS_PIXEL_A / 2, params=params,
                                gain_reference=reference)
        monkeypatch.undo()
        return result, calls

    all_kept, calls = run(None)
    assert all_kept.n_hot_pixels >= 20
    assert calls == {"padded frame": 0, "block sums alone": 0, "rows transformed": 0,
                     "rows transformed and summed": n}  # one pass over each frame's rows
    none_kept, calls = run(0)  # no output spectrum kept
    assert calls == {"padded frame": 0, "block sums alone": n, "rows transformed": n,
                     "rows transformed and summed": 0}  # two passes
    np.testing.assert_array_equal(none_kept.shifts_yx_px, all_kept.shifts_yx_px)
    assert none_kept.detector_pattern == all_kept.detector_pattern
    for name in ("sum", "dw", "even", "odd"):
        np.testing.assert_allclose(getattr(none_kept.images, name),
                                   getattr(all_kept.images, name), rtol=1e-5, atol=1e-4)
