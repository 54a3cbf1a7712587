"""SerialEM's camera defect list (IMOD's CorrectDefects format) fitted onto a movie's frames.

The expected masks are drawn pixel by pixel from the format's meaning on the camera grid as
SerialEM writes it (row 0 at the top; ranges inclusive; a bad pixel of a list scaled to
super-resolution is the 2 x 2 block from it), then taken to the frames as IMOD's
``CorDefSetupToCorrect`` does (scaled up by 2, or binned: a binned pixel is bad when any of
its pixels is), and flipped in y, as motionwatch (and IMOD) hold frames with row 0 at the
bottom.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from serialem_frames import camera_defect_list  # tests/helpers

from correction.camera_defects import read_camera_defect_list
from correction.defects import read_defect_list
from correction.errors import GainReferenceError
from correction.gain import load_gain_reference
from correction.params import GainParams

#: a K2-like list as SerialEM writes it: super-resolution coordinates (WasScaled 1) on a
#: 64 x 48 camera; keys in CorDefDefectsToString's order
K2_LIKE = camera_defect_list((64, 48), """PartialBadColumn 20 2 6 17
PartialBadRow 30 2 40 61
BadPixels 10 4 50 44 0 0
BadColumns 7 8 40
BadRows 12
""", rotation_flip=3)

def drawn_top_down(cam_x: int, cam_y: int, block: int) -> np.ndarray:
    """The defects of ``K2_LIKE`` drawn on its camera, row 0 at the top."""
    mask = np.zeros((cam_y, cam_x), bool)
    mask[6:18, 20:22] = True          # PartialBadColumn 20 2 6 17
    mask[30:32, 40:62] = True         # PartialBadRow 30 2 40 61
    for x, y in ((10, 4), (50, 44), (0, 0)):
        mask[y:y + block, x:x + block] = True
    mask[:, [7, 8, 40]] = True        # BadColumns
    mask[12, :] = True                # BadRows
    return mask


def binned_any(mask: np.ndarray, b: int) -> np.ndarray:
    ny, nx = mask.shape
    return mask[:ny - ny % b, :nx - nx % b].reshape(ny // b, b, nx // b, b).any(axis=(1, 3))


@pytest.fixture
def k2_list(tmp_path):
    path = tmp_path / "defects_session_0001.txt"
    path.write_text(K2_LIKE.replace("\n", "\r\n"))  # written on Windows
    return path


def test_super_resolution_frames_take_the_list_as_it_is_flipped_in_y(k2_list):
    expected = np.flipud(drawn_top_down(64, 48, block=2))
    np.testing.assert_array_equal(read_defect_list(k2_list, (48, 64)), expected)


def test_counting_frames_take_the_super_resolution_list_binned_by_two(k2_list):
    expected = np.flipud(binned_any(drawn_top_down(64, 48, block=2), 2))
    np.testing.assert_array_equal(read_defect_list(k2_list, (24, 32)), expected)


def test_a_list_on_physical_pixels_is_scaled_up_onto_super_resolution_frames(tmp_path):
    path = tmp_path / "defects.txt"
    path.write_text(K2_LIKE.replace("CameraSizeX 64", "CameraSizeX 32")
                    .replace("CameraSizeY 48", "CameraSizeY 24").replace("WasScaled 1",
                                                                         "WasScaled 0")
                    .replace("PartialBadRow 30 2 40 61", "PartialBadRow 15 1 20 30")
                    .replace("BadPixels 10 4 50 44 0 0", "BadPixels 5 2 25 22 0 0")
                    .replace("BadColumns 7 8 40", "BadColumns 3 4 20")
                    .replace("BadRows 12", "BadRows 6")
                    .replace("PartialBadColumn 20 2 6 17", "PartialBadColumn 10 1 3 8"))
    physical = np.zeros((24, 32), bool)
    physical[3:9, 10] = True
    physical[15, 20:31] = True
    for x, y in ((5, 2), (25, 22), (0, 0)):
        physical[y, x] = True
    physical[:, [3, 4, 20]] = True
    physical[6, :] = True
    expected = np.flipud(np.kron(physical, np.ones((2, 2), bool)).astype(bool))
    np.testing.assert_array_equal(read_defect_list(path, (48, 64)), expected)


def test_frames_smaller_than_the_camera_are_a_subarea_centred_on_it(k2_list):
    ny, nx = 30, 40  # 64 // 40 = 1: not binned; centred at column 12, row 9
    expected = np.flipud(drawn_top_down(64, 48, block=2))[9:9 + ny, 12:12 + nx]
    np.testing.assert_array_equal(read_defect_list(k2_list, (ny, nx)), expected)


def test_the_usable_area_marks_the_rows_and_columns_outside_it(tmp_path):
    path = tmp_path / "defects.txt"
    path.write_text("CameraSizeX 16\nCameraSizeY 12\nUsableArea 2 1 9 14\n")
    top_down = np.ones((12, 16), bool)
    top_down[2:10, 1:15] = False  # first and last good row 2..9, column 1..14
    np.testing.assert_array_equal(read_defect_list(path, (12, 16)), np.flipud(top_down))


def test_shortened_tags_comments_and_unknown_tags_read_as_imod_reads_them(tmp_path):
    path = tmp_path / "defects.txt"
    path.write_text("# a comment\nCameraSizeX 16\nCameraSizeY 12\nSomethingNew 5\n"
                    "BadC 3\nBadPix 5 6\n")
    top_down = np.zeros((12, 16), bool)
    top_down[:, 3] = True   # BadC: BadColumns (BadPixels does not start with it)
    top_down[6, 5] = True   # BadPix: BadPixels, on physical pixels (no WasScaled)
    np.testing.assert_array_equal(read_defect_list(path, (12, 16)), np.flipud(top_down))


def test_frames_that_fit_the_list_only_transposed_are_refused(k2_list):
    with pytest.raises(GainReferenceError, match=r"defects_session_0001\.txt: camera defect "
                                                 r"list of another orientation: the frames "
                                                 r"are 48 x 64, its camera .* 64 x 48"):
        read_defect_list(k2_list, (64, 48))


def test_frames_more_than_twice_the_camera_are_refused(k2_list):
    with pytest.raises(GainReferenceError, match="camera defect list of a smaller camera: "
                                                 "the frames are 192 x 144"):
        read_defect_list(k2_list, (144, 192))


@pytest.mark.parametrize(("line", "why"), [
    ("BadPixels 1 2 3", "needs x y pairs"),
    ("PartialBadColumn 5 1 10", "needs 4 values"),
    ("BadColumns 4 x", "holds a value that is not an integer"),
    ("PartialBadRow 5 1 30 20", "has an empty range"),
    ("BadRows -3", "has a negative value"),
    (" BadColumns 3", "does not start with its tag"),
    ("BadRows ", "has no value"),
])
def test_a_malformed_entry_is_quoted_with_its_line_number(tmp_path, line, why):
    path = tmp_path / "defects.txt"
    path.write_text(f"CameraSizeX 64\nCameraSizeY 48\n{line}\n")
    with pytest.raises(GainReferenceError, match=rf"defects\.txt: camera defect list line 3 "
                                                 rf"{why}: '{line.strip()}'"):
        read_camera_defect_list(path)


def test_a_list_without_its_camera_size_or_with_a_defect_outside_it_is_refused(tmp_path):
    path = tmp_path / "defects.txt"
    path.write_text("RotationAndFlip 0\nBadColumns 4\n")
    with pytest.raises(GainReferenceError, match="without CameraSizeX and CameraSizeY"):
        read_camera_defect_list(path)
    path.write_text("CameraSizeX 64\nCameraSizeY 48\nBadColumns 64\n")
    with pytest.raises(GainReferenceError, match="a defect at x 64, y 0, outside its 64 x 48"):
        read_camera_defect_list(path)


def test_the_list_given_alone_is_fitted_onto_each_movie_grid(k2_list):
    reference = load_gain_reference(GainParams(defects_path=k2_list))
    for shape, expected in (((48, 64), np.flipud(drawn_top_down(64, 48, 2))),
                            ((24, 32), np.flipud(binned_any(drawn_top_down(64, 48, 2), 2)))):
        np.testing.assert_array_equal(reference.fit_to(shape).defect_mask, expected)


def test_with_a_gain_the_list_is_fitted_onto_the_gain_and_joins_its_defects(tmp_path, k2_list):
    gain = np.ones((24, 32), np.float32)
    gain[2, 30] = 0  # a defect of the gain itself (row 2 from the top as read: row 21 here)
    tifffile.imwrite(tmp_path / "gain.tif", gain)
    reference = load_gain_reference(GainParams(gain_path=tmp_path / "gain.tif",
                                               defects_path=k2_list))
    expected = np.flipud(binned_any(drawn_top_down(64, 48, 2), 2))
    expected[21, 30] = True  # the TIFF's rows are reversed on reading
    np.testing.assert_array_equal(reference.defect_mask, expected)
    assert reference.camera_defects is not None
    assert reference.camera_defects.describe_fit((24, 32)) == (
        "SerialEM camera defect list of a 64 x 48 camera, binned by 2")


def test_a_falcon_list_is_refused_with_the_reason(tmp_path):
    """IMOD makes one from a Falcon gain file's defects; EER frames keep their stored row order
    (not IMOD's), so its rows would land mirrored."""
    path = tmp_path / "falcon.txt"
    path.write_text("CameraSizeX 4096\nCameraSizeY 4096\nWasScaled 0\nFalconType 1\n"
                    "BadRows 0\n")
    with pytest.raises(GainReferenceError, match=r"falcon\.txt: a Falcon camera defect list"):
        read_camera_defect_list(path)


def test_a_fit_only_at_a_binning_no_camera_saves_is_refused_as_another_camera_s_list(k2_list):
    """A K3's list (11520 x 8184) on frames of another camera fitted "binned by 21": refused,
    not applied with its defects elsewhere. SerialEM's binnings (1-8 on super-resolution
    pixels) fit."""
    with pytest.raises(GainReferenceError, match=r"camera defect list of another camera \(or "
                                                 r"frames of a small subarea\): the frames are "
                                                 r"7 x 5, its camera 64 x 48, which fits only "
                                                 r"binned by 9"):
        read_defect_list(k2_list, (5, 7))
    for binning in (3, 4, 6, 8):
        assert read_defect_list(k2_list, (48 // binning, 64 // binning)).any()
