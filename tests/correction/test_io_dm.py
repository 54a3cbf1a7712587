"""Gatan DM4 gain references (K2/K3 from SerialEM/GMS), read through ncempy.

Fixtures come from tests/helpers/dm4_writer.py, written from the format description."""

from __future__ import annotations

import importlib.util

import dm4_writer  # tests/helpers (on sys.path via tests/conftest.py)
import numpy as np
import pytest

from correction.errors import GainReferenceError, UnreadableMovieError
from correction.gain import load_gain_reference
from correction.io import read_image
from correction.params import GainParams

# ncempy is the optional extra "dm4" (installed with the "test" extra): without it these skip
needs_ncempy = pytest.mark.skipif(importlib.util.find_spec("ncempy") is None,
                                  reason="ncempy (the 'dm4' extra) is not installed")


@needs_ncempy
@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
@pytest.mark.parametrize("thumbnail", [True, False])
def test_dm4_gain_reads_exactly_skipping_the_thumbnail(tmp_path, dtype, thumbnail):
    gain = (np.random.default_rng(1).uniform(0.5, 1.5, (36, 50)) * 100).astype(dtype)
    path = dm4_writer.write_dm4(tmp_path / "K3gain.dm4", gain, scale=0.083, unit="nm",
                                thumbnail=thumbnail)
    image, pixel_size_A = read_image(path)
    assert image.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(image, gain[::-1])  # MRC row order, as IMOD reads it
    assert pixel_size_A == pytest.approx(0.83)


@needs_ncempy
def test_a_dm4_gain_is_read_upside_down_as_imod_reads_it_like_the_same_image_as_tiff(tmp_path):
    """IMOD reads DM3/DM4 images, as TIFF pages, with their first stored row last
    (``iilikemrc.c``: ``info->yInverted = 1``): a DM4 gain fits the movies as IMOD's
    ``dm2mrc`` copy of it does, and exactly as the same image saved as a TIFF; it is then
    turned and flipped like any other."""
    import tifffile

    gain = np.ones((6, 10), np.float32)
    gain[0, 0] = 7.0  # stored first row
    dm4 = dm4_writer.write_dm4(tmp_path / "g.dm4", gain)
    tifffile.imwrite(tmp_path / "g.tif", gain)
    ref = load_gain_reference(GainParams(gain_path=dm4))
    assert ref.gain[5, 0] == 7.0
    np.testing.assert_array_equal(
        ref.gain, load_gain_reference(GainParams(gain_path=tmp_path / "g.tif")).gain)
    turned = load_gain_reference(GainParams(gain_path=dm4, rotate_quarter_turns=2))
    assert turned.gain[0, 9] == 7.0


@needs_ncempy
def test_corrupt_dm4_is_named(tmp_path):
    path = tmp_path / "bad.dm4"
    path.write_bytes(b"\x00\x00\x00\x07" + b"\x00" * 40)
    with pytest.raises(UnreadableMovieError, match=r"bad\.dm4: not a readable DM3/DM4 image"):
        read_image(path)
    with pytest.raises(GainReferenceError, match=r"bad\.dm4: gain reference: not a readable"):
        load_gain_reference(GainParams(gain_path=path))


def test_without_ncempy_a_dm4_gain_fails_with_one_line_naming_the_dm4_extra(tmp_path,
                                                                            monkeypatch):
    """Faults issue item 15: ncempy is the optional extra 'dm4'; without it, a .dm4 gain is
    refused with one line that says how to install it."""
    import sys

    path = dm4_writer.write_dm4(tmp_path / "K3gain.dm4", np.ones((6, 10), np.float32))
    monkeypatch.setitem(sys.modules, "ncempy", None)  # import ncempy... raises ImportError
    monkeypatch.setitem(sys.modules, "ncempy.io", None)
    with pytest.raises(GainReferenceError) as info:
        load_gain_reference(GainParams(gain_path=path))
    message = str(info.value)
    assert "\n" not in message and "K3gain.dm4" in message
    assert "pip install -e '.[dm4]' in the checkout" in message


def test_ncempy_is_an_optional_extra_installed_with_the_tests_not_a_core_dependency():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    core = [d.split(">")[0].split("=")[0].strip() for d in project["project"]["dependencies"]]
    extras = project["project"]["optional-dependencies"]
    assert "ncempy" not in core
    assert any(d.startswith("ncempy") for d in extras["dm4"])
    assert any(d.startswith("ncempy") for d in extras["test"])  # DM4 tests still run in CI
