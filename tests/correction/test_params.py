"""The parameter dataclasses refuse a value of the wrong kind with a ParameterError naming the
field, as they refuse one out of range: a pixel size read from a text file as "0.83", or a
patch count of 2.5, failed later inside numpy with a TypeError that named nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from correction.errors import ParameterError
from correction.params import AlignParams, CorrectionParams, DoseParams, GainParams, ReadParams


@pytest.mark.parametrize("make, field, value", [
    (ReadParams, "pixel_size_A", "0.83"),
    (ReadParams, "throw_frames", 1.5),
    (ReadParams, "bin_factor", "2"),
    (AlignParams, "patches_x", 2.5),
    (AlignParams, "max_iterations", 2.5),
    (AlignParams, "group_frames", True),
    (DoseParams, "voltage_kV", None),
    (DoseParams, "dose_per_frame_e_A2", "1.2"),
    (GainParams, "detect_hot_pixels", "no"),
    (GainParams, "gain_path", 3),
])
def test_a_value_of_the_wrong_kind_is_refused_naming_the_field_and_the_value(make, field, value):
    with pytest.raises(ParameterError, match=rf"^{field} must be .*, got {value!r}$".replace(
            "(", r"\(").replace(")", r"\)")):
        make(**{field: value})


def test_numbers_of_numpy_and_paths_as_strings_are_accepted_as_they_were():
    read = ReadParams(pixel_size_A=np.float32(0.83), throw_frames=np.int64(2), bin_factor=2)
    assert read.throw_frames == 2 and read.bin_factor == 2
    assert GainParams(gain_path="gain.mrc", detect_hot_pixels=np.bool_(False)).gain_path \
        == "gain.mrc"
    assert GainParams(gain_path=Path("gain.mrc")).gain_path == Path("gain.mrc")
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1, voltage_kV=200))
    assert params.dose.voltage_kV == 200


@pytest.mark.parametrize("pixel", [0.083, 1e-9, 5000.0])
def test_a_pixel_size_no_detector_has_is_refused_a_value_in_nm_named_as_such(pixel):
    """0.083 (the nm value of 0.83 Å typed as Å) weighted every movie for a tenfold wrong
    frequency scale and wrote it into every header and STAR file, with no word."""
    with pytest.raises(ParameterError, match=r"pixel_size_A must be 0.1-1000 Å") as caught:
        ReadParams(pixel_size_A=pixel)
    assert ("a value in nm?" in str(caught.value)) == (pixel < 0.1)
    assert ReadParams(pixel_size_A=0.2).pixel_size_A == 0.2  # EER 8K at 0.4 Å physical


def test_nested_parameters_of_the_wrong_kind_are_refused_naming_the_field():
    """A dict for the dose was accepted, and failed later as an AttributeError naming nothing."""
    with pytest.raises(ParameterError, match=r"^dose must be a DoseParams, got dict$"):
        CorrectionParams(dose={"dose_per_frame_e_A2": 1.0})
    with pytest.raises(ParameterError, match=r"^read must be a ReadParams, got DoseParams$"):
        CorrectionParams(dose=DoseParams(), read=DoseParams())


def test_frame_doses_given_as_a_list_or_array_are_kept_as_a_tuple_and_hash():
    """A list was kept as given: the frozen parameters could not be hashed."""
    listed = DoseParams(frame_doses_e_A2=[1.0, 2.0])
    from_array = DoseParams(frame_doses_e_A2=np.array([1.0, 2.0]))
    assert listed.frame_doses_e_A2 == from_array.frame_doses_e_A2 == (1.0, 2.0)
    assert hash(listed) == hash(DoseParams(frame_doses_e_A2=(1.0, 2.0)))
    float32 = DoseParams(frame_doses_e_A2=tuple(np.array([1.0, 2.5], np.float32)))
    assert CorrectionParams(dose=float32).fingerprint() == CorrectionParams(
        dose=DoseParams(frame_doses_e_A2=[1.0, 2.5])).fingerprint()  # one key for one list
    assert DoseParams(frame_doses_e_A2=(d for d in (1.0, 2.0))).frame_doses_e_A2 == (1.0, 2.0)
    for given in (["a lot"], "12", b"12", 1.5, np.array(1.5), [True, False]):
        with pytest.raises(ParameterError, match=r"frame_doses_e_A2 must be a sequence of "
                                                 r"doses"):
            DoseParams(frame_doses_e_A2=given)


@pytest.mark.parametrize("nx, ny, local", [(5, 5, True), (5, 1, False), (1, 5, False),
                                           (0, 7, False), (2, 2, True)])
def test_a_patch_count_of_0_or_1_on_either_axis_means_global_only(nx, ny, local):
    """Mutant S16 (params.py:263, ``and`` -> ``or``): --patches' help and AlignParams say "a
    count of 0 or 1 on either axis = global only"; MotionCor2's -Patch 5 1 is no patch grid."""
    assert AlignParams(patches_x=nx, patches_y=ny).local_enabled is local


@pytest.mark.parametrize("nx, ny, named", [(-1, 5, "NX (across x) is -1"),
                                           (5, -2, "NY (down y) is -2"),
                                           (-3, -4, "NX (across x) is -3, NY (down y) is -4")])
def test_a_negative_patch_count_is_refused_naming_its_axis(nx, ny, named):
    """"patches must be >= 0, got 5 x -2" named neither axis (is 5 x -2 the NX NY order?)."""
    with pytest.raises(ParameterError, match=r"^patches must be >= 0 on each axis: ") as caught:
        AlignParams(patches_x=nx, patches_y=ny)
    assert str(caught.value).endswith(named)
