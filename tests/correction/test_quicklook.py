"""Quick-look pictures read back as data: the drift plot draws the record's trajectory, the
spectrum puts a known periodic pattern's peak where it belongs, the contact sheet is in angle
order, the chart plots the values given."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
from scipy import ndimage

from correction import quicklook as ql
from correction.params import CorrectionParams, DoseParams
from correction.pipeline import correct_frames
from correction.report import motion_record
from correction.synthetic import render_movie


def decode(path):
    data = path.read_bytes()
    return imagecodecs.png_decode(data), ql.read_png_text(data)


def colour_mask(image, colour):
    return np.all(image == np.array(colour, np.uint8), axis=-1)


@pytest.fixture(scope="module")
def corrected_record():
    """A synthetic movie with known drift (12 frames, 256^2), corrected; its motion record."""
    rng = np.random.default_rng(7)
    truth = np.cumsum(np.full((12, 2), [0.35, -0.7]), axis=0)  # steady drift, pixels [dy, dx]
    truth[:3] += [[-1.5, 2.0], [-0.6, 0.9], [-0.1, 0.2]]       # a faster start
    truth -= truth.mean(axis=0)
    movie = render_movie(rng, shape_yx=(256, 256), n_frames=12, shifts_yx_px=truth, gain=None,
                         n_hot_pixels=0, pixel_size_A=1.3, electrons_per_px_per_frame=4.0)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=4.0 / 1.3 ** 2))
    out = correct_frames(movie.frames, pixel_size_A=1.3, params=params, workers=1)
    record = motion_record(movie="m.mrc", shape_yx=out.shape_yx, pixel_size_A=out.pixel_size_A,
                           voltage_kV=300.0, shifts_yx_px=out.shifts_yx_px,
                           frame_doses_e_A2=out.frame_doses_e_A2, pre_exposure_e_A2=0.0,
                           outputs={}, timings_s={},
                           resolution=out.resolution.to_record() if out.resolution else None)
    return record, out.images.dw, truth


def test_drift_plot_draws_the_records_trajectory_with_early_frames_in_orange(
        corrected_record, tmp_path):
    record, dw, _ = corrected_record
    paths = ql.write_movie_quicklook(tmp_path, "m", dw_image=dw, record=record)
    image, info = decode(paths["drift"])
    xy_A = np.asarray(record["global_shifts_px"]) * record["pixel_size_A"]
    (a, b), (c, d) = info["x_px"], info["y_px"]
    cols, rows = a + b * xy_A[:, 0], c + d * xy_A[:, 1]
    early = colour_mask(image, info["colours"]["early"])
    late = colour_mask(image, info["colours"]["late"])
    m = info["early_steps"]
    assert m == 3 and info["n_frames"] == 12
    for i, (col, row) in enumerate(zip(np.rint(cols).astype(int), np.rint(rows).astype(int))):
        assert (early if i <= m else late)[row, col], f"frame {i} marker missing"
    # every marker pixel lies within the marker radius of a recorded frame position
    rr, cc = np.nonzero(early | late)
    distance = np.hypot(rr[:, None] - rows[None, :], cc[:, None] - cols[None, :]).min(axis=1)
    assert distance.max() <= info["marker_radius_px"] + 0.75
    # markers drawn 1:1 from the record: their blob centroids give back the shifts within 0.05 Å
    labels, n = ndimage.label(early | late)
    assert n == 12  # this drift keeps every marker apart
    centres = np.array(ndimage.center_of_mass(early | late, labels, range(1, n + 1)))
    back_x, back_y = (centres[:, 1] - a) / b, (centres[:, 0] - c) / d
    got = np.sort(back_x + 1j * back_y)
    want = np.sort(xy_A[:, 0] + 1j * xy_A[:, 1])
    assert np.abs(got - want).max() < 0.05 + 0.75 / b


def test_drift_plot_of_the_pipeline_follows_the_true_drift_within_0_2_px(corrected_record):
    record, _, truth = corrected_record
    xy = np.asarray(record["global_shifts_px"])
    np.testing.assert_allclose(xy[:, ::-1], truth - truth.mean(axis=0), atol=0.2)


def test_spectrum_of_a_periodic_pattern_peaks_at_its_frequency_and_marks_the_resolution_ring(
        tmp_path):
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:512, :512]
    # period 8 px along x and 16 px along y: (ky, kx) = (1/16, 1/8) cycles per pixel
    image = (1 + 0.3 * np.cos(2 * np.pi * (x / 8 + y / 16)) +
             0.5 * rng.standard_normal((512, 512))).astype(np.float32)
    picture, info = ql.power_spectrum(image, pixel_size_A=1.0, resolution_A=4.0, box_px=256)
    path = ql.write_png_atomic(tmp_path / "s.png", picture, text=info)
    image_back, info_back = decode(path)
    box = info_back["box_px"]
    assert box == 256
    grey = np.where(np.ptp(image_back.astype(int), axis=-1) == 0, image_back[..., 0], 0)
    # the brightest 3 x 3 neighbourhood (single noise pixels saturate too)
    local = ndimage.uniform_filter(grey.astype(float), 3)
    peak_row, peak_col = np.unravel_index(np.argmax(local), grey.shape)
    offset = np.array([peak_row - box // 2, peak_col - box // 2])
    offset = offset if offset[1] > 0 else -offset  # the spectrum is point-symmetric
    assert np.abs(offset - [256 // 16, 256 // 8]).max() <= 1, offset  # within one ring
    ring = colour_mask(image_back, ql.YELLOW)
    rr, cc = np.nonzero(ring[40:, :])  # below the label
    radius = np.hypot(rr + 40 - box // 2, cc - box // 2)
    assert info_back["ring_radius_px"] == pytest.approx(box * 1.0 / 4.0)
    assert np.abs(radius - 64).max() <= 1.0


def test_thumbnail_is_binned_to_512_px_and_a_hot_pixel_does_not_flatten_its_contrast():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (1100, 900)).astype(np.float32)
    image[5, 5] = 1e7
    thumb = ql.thumbnail(image, max_px=512)
    assert thumb.shape == (366, 300) and thumb.dtype == np.uint8  # bin 3
    assert thumb.std() > 30  # grey levels span the range, not crushed by the hot pixel


def test_contact_sheet_tiles_are_in_tilt_angle_order(tmp_path):
    angles = [0.0, 3.0, -3.0, 6.0, -6.0, 9.0, -9.0]  # dose-symmetric acquisition order
    rng = np.random.default_rng(1)
    # each tilt's brightness encodes its acquisition index
    images = [np.full((64, 64), 10.0 + 5 * i) + rng.normal(0, 0.1, (64, 64))
              for i in range(len(angles))]
    sheet, info = ql.contact_sheet(images, angles, tile_px=64)
    path = ql.write_png_atomic(tmp_path / "sheet.png", sheet, text=info)
    image, info = decode(path)
    tiles = info["tiles"]
    assert [t["tilt_deg"] for t in tiles] == sorted(angles)
    means = [image[t["row"] + info["label_height_px"]:t["row"] + t["h"],
                   t["col"]:t["col"] + t["w"], 0].mean() for t in tiles]
    # tile k shows the tilt with the k-th smallest angle: its brightness ranks as its
    # acquisition index does among the angle-sorted tilts
    acquisition = [angles.index(a) for a in sorted(angles)]
    assert list(np.argsort(means)) == list(np.argsort(acquisition))


def test_series_chart_plots_each_tilts_drift_at_its_angle_and_marks_those_above_threshold(
        tmp_path):
    tilts = [ql.SeriesTilt(tilt_deg=a, drift_total_A=d, resolution_A=4 + abs(a) / 10,
                           dose_e_A2=3.0, pre_exposure_e_A2=3.0 * k)
             for k, (a, d) in enumerate([(0, 2.0), (3, 3.0), (-3, 12.0), (6, 4.0), (-6, 5.0)])]
    chart, info = ql.series_chart(tilts, drift_threshold_A=10.0)
    path = ql.write_png_atomic(tmp_path / "chart.png", chart, text=info)
    image, info = decode(path)
    panel = info["panels"]["drift_total_A"]
    (a, b), (c, d) = panel["x_px"], panel["y_px"]
    for t in tilts:
        row, col = int(round(c + d * t.drift_total_A)), int(round(a + b * t.tilt_deg))
        colour = ql.RED if t.drift_total_A > 10 else ql.BLUE
        assert colour_mask(image, colour)[row, col], t


def test_png_writer_without_imagecodecs_decodes_to_the_same_pixels():
    rng = np.random.default_rng(2)
    for image in (rng.integers(0, 256, (17, 23), dtype=np.uint8),
                  rng.integers(0, 256, (9, 31, 3), dtype=np.uint8)):
        plain = ql.encode_png(image, text={"a": 1}, use_imagecodecs=False)
        fast = ql.encode_png(image, text={"a": 1})
        for data in (plain, fast):
            np.testing.assert_array_equal(imagecodecs.png_decode(data), image)
            assert ql.read_png_text(data) == {"a": 1}


def test_movie_pictures_are_named_after_the_stem_and_written_atomically(corrected_record, tmp_path):
    record, dw, _ = corrected_record
    paths = ql.write_movie_quicklook(tmp_path, "TS_01_000_0.0", dw_image=dw, record=record)
    assert {k: p.name for k, p in paths.items()} == ql.quicklook_names("TS_01_000_0.0") == {
        "thumbnail": "TS_01_000_0.0.thumb.png", "spectrum": "TS_01_000_0.0.spectrum.png",
        "drift": "TS_01_000_0.0.drift.png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())


def test_a_polyline_is_one_unbroken_line_through_its_vertices():
    canvas = ql._canvas(64, 64)
    ql._polyline(canvas, [2, 60, 60, 10], [3, 40, 5, 60], ql.RED)
    mask = colour_mask(canvas, ql.RED)
    assert mask[3, 2] and mask[40, 60] and mask[5, 60] and mask[60, 10]
    _, n_pieces = ndimage.label(mask, structure=np.ones((3, 3)))
    assert n_pieces == 1
    assert all(mask[:, c].any() for c in range(2, 61))  # the long first segment has no gap
    # each segment is a thin line: about as many pixels as its length in pixels
    assert mask.sum() <= 1.3 * (np.hypot(58, 37) + 35 + np.hypot(50, 55)) + 4
