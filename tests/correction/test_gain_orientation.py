"""Gain orientation check: the raw sum of a movie correlates with 1/gain in the orientation that
fits the data (a counting detector records Poisson(dose / gain), so raw * gain is flat).

Truth: a known gain pattern ``gain_true`` in the frame's orientation; the gain file is
``gain_true`` stored in each of the 8 orientations (written with an independent pixel-coordinate
inverse of MotionCor2's -RotGain/-FlipGain, see test_gain.py), and the check must name the
flags that turn the file back into ``gain_true``.
"""

from __future__ import annotations

import itertools
import json

import mrcfile
import numpy as np
import pytest

from correction.gain import load_gain_reference, orient
from correction.gain_orientation import (MIN_MARGIN_R, ORIENTATIONS, Orientation,
                                         central_window, check_gain_orientation,
                                         gain_orientation_scores)
from correction.params import AlignParams, CorrectionParams, DoseParams, GainParams
from correction.pipeline import correct_movie
from correction.synthetic import gain_pattern, render_movie


def _truth_orient(image, k, flip):
    """-RotGain k then -FlipGain flip as a pixel mapping: (y, x) -> (x, ny - 1 - y) per turn."""
    out = image
    for _ in range(k):
        h, w = out.shape
        turned = np.empty((w, h), dtype=out.dtype)
        y, x = np.indices((h, w))
        turned[x, h - 1 - y] = out[y, x]
        out = turned
    if flip in ("updown", 1):
        out = out[::-1, :]
    elif flip in ("leftright", 2):
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _stored_as_written(gain_true, k, flip):
    return _truth_orient(_truth_orient(gain_true, 0, flip), (4 - k) % 4, "none")


def _raw_sum(rng, gain_true, *, n_frames=15, e_per_px_per_frame=1.0, n_hot=200):
    """Raw counts summed over frames: Poisson(dose x illumination / gain) + hot pixels."""
    ny, nx = gain_true.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    illumination = 1.0 + 0.3 * np.cos(2 * np.pi * yy / ny) * np.sin(np.pi * xx / nx)  # smooth
    lam = n_frames * e_per_px_per_frame * illumination / gain_true
    raw = rng.poisson(lam).astype(np.float32)
    hot = rng.integers(0, ny, n_hot), rng.integers(0, nx, n_hot)
    raw[hot] += 40.0 * n_frames
    return raw


@pytest.fixture(scope="module")
def k3_like():
    """A 1024 x 1440 frame (K3 aspect), its gain and a 15-frame raw sum at 1 e/px/frame."""
    rng = np.random.default_rng(2024)
    gain_true = gain_pattern(rng, (1024, 1440))      # 5 % per pixel, 3 % per column
    gain_true[rng.integers(0, 1024, 50), rng.integers(0, 1440, 50)] = 0.0   # defects
    raw = _raw_sum(rng, np.where(gain_true > 0, gain_true, 1.0))
    return gain_true, raw


def test_the_8_orientations_are_distinct_pixel_mappings_and_flipgain_2_is_among_them():
    image = np.arange(12).reshape(3, 4)
    mappings = {(o.view(image).shape, o.view(image).tobytes()) for o in ORIENTATIONS}
    assert len(ORIENTATIONS) == 8 and len(mappings) == 8
    for k, flip in itertools.product(range(4), ["none", "updown", "leftright"]):
        o = Orientation(k, flip)
        np.testing.assert_array_equal(o.view(image), _truth_orient(image, k, flip))
        np.testing.assert_array_equal(o.canonical().view(image), _truth_orient(image, k, flip))
        np.testing.assert_array_equal(o.inverse_view(o.view(image)), image)
        assert o.canonical() in ORIENTATIONS


@pytest.mark.parametrize("index", range(8))
def test_check_names_the_orientation_the_gain_file_was_stored_in_on_a_k3_like_frame(
        k3_like, index):
    gain_true, raw = k3_like
    true = ORIENTATIONS[index]
    stored = _stored_as_written(gain_true, true.rotate_quarter_turns, true.flip)
    # the user forgot the flags (or copied the old counter-clockwise meaning): the nearest
    # setting that still fits the shape
    wrong = Orientation(0, "none") if stored.shape == gain_true.shape else Orientation(3, "none")
    if wrong == true:
        wrong = Orientation((wrong.rotate_quarter_turns + 2) % 4, "none")
    as_configured = orient(stored, rotate_quarter_turns=wrong.rotate_quarter_turns,
                           flip=wrong.flip)
    check = check_gain_orientation(raw, as_configured, configured=wrong)
    assert check.best == true
    assert len(check.scores) == 4                    # non-square: only shapes that fit
    assert check.clearly_better
    assert check.best_r > 0.1 and check.best_r - check.configured_r > 3 * check.margin_r
    assert check.message.startswith(f"gain orientation: {true.motioncor2_flags} fits better")
    assert f"the configured {wrong.motioncor2_flags}" in check.message

    right = check_gain_orientation(raw, gain_true, configured=true)
    assert right.best == true and not right.clearly_better
    assert right.best_r == pytest.approx(check.best_r, abs=1e-9)
    assert right.message.startswith(f"gain orientation: the configured {true.motioncor2_flags}")


def test_check_accepts_flipgain_2_as_the_equivalent_rotated_flip(k3_like):
    gain_true, raw = k3_like
    # -RotGain 2 -FlipGain 2 is the same mapping as -RotGain 0 -FlipGain 1
    stored = _stored_as_written(gain_true, 2, 2)
    check = check_gain_orientation(raw, gain_true, configured=(2, 2))
    assert not check.clearly_better and check.best == Orientation(0, "updown")
    assert check.configured.motioncor2_flags == "-RotGain 2 -FlipGain 2"
    assert check.to_record()["configured"]["flip_gain"] == 2
    wrong = check_gain_orientation(raw, orient(stored, rotate_quarter_turns=0), configured=(0, 0))
    assert wrong.clearly_better and wrong.best == Orientation(0, "updown")


def test_square_frame_has_all_8_candidates_and_finds_a_quarter_turn():
    rng = np.random.default_rng(5)
    gain_true = gain_pattern(rng, (512, 512))
    raw = _raw_sum(rng, gain_true, n_frames=10)
    stored = _stored_as_written(gain_true, 1, 0)
    check = check_gain_orientation(raw, orient(stored, rotate_quarter_turns=3), configured=(3, 0))
    assert len(check.scores) == 8
    assert check.best == Orientation(1, "none") and check.clearly_better
    assert "-RotGain 1 -FlipGain 0 fits better" in check.message


def test_a_gain_without_pixel_pattern_never_claims_a_better_orientation():
    rng = np.random.default_rng(6)
    ny, nx = 600, 800
    yy, xx = np.mgrid[0:ny, 0:nx]
    smooth_gain = (1.0 + 0.2 * (yy / ny) + 0.1 * (xx / nx) ** 2).astype(np.float32)
    raw = _raw_sum(rng, smooth_gain, n_frames=20)
    for configured in [(0, 0), (2, 0), (0, 1), (2, 1)]:
        as_configured = orient(smooth_gain, rotate_quarter_turns=configured[0],
                               flip=configured[1])
        check = check_gain_orientation(raw, as_configured, configured=configured)
        assert not check.clearly_better
        assert max(abs(s.r) for s in check.scores) < MIN_MARGIN_R


def test_scores_from_the_central_window_alone_equal_those_from_the_whole_sum(k3_like):
    gain_true, raw = k3_like
    window = central_window(raw.shape, 512)
    whole = gain_orientation_scores(raw, gain_true, crop_px=512)
    part = gain_orientation_scores(np.ascontiguousarray(raw[window]), gain_true,
                                   frame_shape_yx=raw.shape, crop_px=512)
    assert [s.orientation for s in whole] == [s.orientation for s in part]
    np.testing.assert_allclose([s.r for s in whole], [s.r for s in part], atol=1e-12)
    with pytest.raises(ValueError, match="central window"):
        gain_orientation_scores(raw[:100, :100], gain_true, frame_shape_yx=raw.shape)
    with pytest.raises(ValueError, match="does not fit"):
        check_gain_orientation(raw, gain_true.T, configured=(1, 0))


def _write_mrc(path, data, voxel_size=None):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(data))
        if voxel_size is not None:
            mrc.voxel_size = voxel_size


@pytest.mark.parametrize("hot_pixels", [True, False])
def test_motion_record_reports_a_better_gain_orientation_and_none_when_right(tmp_path,
                                                                              hot_pixels):
    rng = np.random.default_rng(11)
    syn = render_movie(rng, shape_yx=(192, 320), n_frames=12, electrons_per_px_per_frame=1.0,
                       pixel_size_A=1.1, dtype=np.uint8)
    _write_mrc(tmp_path / "movie.mrc", syn.frames, voxel_size=1.1)
    stored = _stored_as_written(syn.gain, 1, 1)              # transposed on disk
    _write_mrc(tmp_path / "gain.mrc", stored)
    records = {}
    for label, k in (("right", 1), ("wrong", 3)):   # 3 = what the old "1" meant
        gain = GainParams(gain_path=tmp_path / "gain.mrc", rotate_quarter_turns=k, flip=1,
                          detect_hot_pixels=hot_pixels)
        params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0), gain=gain,
                                  align=AlignParams(patches_x=1, patches_y=1))
        result = correct_movie(tmp_path / "movie.mrc", tmp_path / label, params,
                               gain_reference=load_gain_reference(gain))
        on_disk = json.loads(result.outputs["motion"].read_text())
        assert on_disk["gain_orientation"] == json.loads(json.dumps(
            result.record["gain_orientation"]))
        records[label] = on_disk["gain_orientation"]
    assert records["right"]["clearly_better"] is False
    assert records["right"]["best"]["rot_gain"] == 1 and records["right"]["best"]["flip_gain"] == 1
    wrong = records["wrong"]
    assert wrong["clearly_better"] is True
    assert (wrong["best"]["rot_gain"], wrong["best"]["flip_gain"]) == (1, 1)
    assert (wrong["configured"]["rot_gain"], wrong["configured"]["flip_gain"]) == (3, 1)
    assert wrong["message"].startswith("gain orientation: -RotGain 1 -FlipGain 1 fits better")


@pytest.mark.parametrize("stored_as", [(0, "none"), (2, "none"), (1, "updown")])
def test_a_gain_given_as_its_reciprocal_is_said_to_be_inverted_and_no_orientation_is_proposed(
        k3_like, stored_as):
    """A flat-field count image given as the gain (the file holds 1 / multiplier): its score
    is strongly negative where it fits. Before, the check proposed the orientation nearest
    r = 0 (-RotGain 2 for a file in the right orientation), and following that left the movie
    with no gain correction at all."""
    gain_true, raw = k3_like
    k, flip = stored_as
    reciprocal = np.where(gain_true > 0, 1.0 / np.where(gain_true > 0, gain_true, 1.0), 0.0)
    stored = _stored_as_written(reciprocal, k, flip)
    as_configured = orient(stored, rotate_quarter_turns=0, flip="none") \
        if stored.shape == gain_true.shape else orient(stored, rotate_quarter_turns=3)
    configured = Orientation(0, "none") if stored.shape == gain_true.shape \
        else Orientation(3, "none")
    check = check_gain_orientation(raw, as_configured, configured=configured)
    assert check.inverted == Orientation(k, flip).canonical()
    assert check.inverted_r < -0.1 and not check.clearly_better and check.suspect
    assert check.message.startswith("gain orientation: the gain looks inverted")
    assert "fits better" not in check.message
    assert check.to_record()["inverted"]["r"] < -0.1

    right = check_gain_orientation(raw, gain_true, configured=Orientation(0, "none"))
    assert right.inverted is None and not right.suspect
    assert "inverted" not in right.to_record()



@pytest.mark.parametrize("orientation", ORIENTATIONS + (Orientation(1, "leftright"),))
def test_motioncor3_flags_for_a_gain_file_orient_its_rows_as_read_by_motioncor3_as_here(
        orientation):
    """MotionCor3 reads a ``.gain`` through its TIFF reader, rows reversed
    (``CLoadTiffImage::mReadByStrip``), then applies -RotGain and -FlipGain; motionwatch keeps
    a ``.gain``'s stored rows. The MotionCor3 numbers named must give the same gain."""
    stored = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)  # as in the file, row 0 first
    here = orientation.view(stored)
    rot, flip = (int(v) for v in orientation.motioncor3_gain_file_flags.split()[1::2])
    assert np.array_equal(_truth_orient(stored[::-1], rot, flip), here)


def test_the_message_for_a_gain_file_names_motioncor3s_flags_beside_motionwatchs(k3_like):
    """An EER's ``.gain`` stored upside down: ``--gain-flip 1`` here, which a MotionCor3 EER
    job gives as ``-FlipGain 0`` (its reader already reversed the rows); the message named only
    "-RotGain 0 -FlipGain 1", wrong for MotionCor3 users."""
    gain_true, raw = k3_like
    stored = _stored_as_written(gain_true, 0, "updown")
    check = check_gain_orientation(raw, orient(stored), configured=Orientation(0, "none"),
                                   gain_file_rows_as_stored=True)
    assert check.clearly_better and check.best == Orientation(0, "updown")
    assert check.message.startswith("gain orientation: -RotGain 0 -FlipGain 1 (MotionCor3 on "
                                    "this .gain: -RotGain 0 -FlipGain 0) fits better")
    assert "the configured -RotGain 0 -FlipGain 0 (MotionCor3 on this .gain: -RotGain 0 " \
           "-FlipGain 1)" in check.message
    plain = check_gain_orientation(raw, orient(stored), configured=Orientation(0, "none"))
    assert "MotionCor3" not in plain.message  # an MRC or TIFF gain: the same numbers
