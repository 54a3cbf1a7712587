"""Format flags of ``correct``/``watch`` reach the correction parameters (issue 4)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from daemon.settings.correction_options import add_correction_arguments, params_from_args


def _parse(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_correction_arguments(parser)
    return params_from_args(parser.parse_args(["--dose-per-frame", "1.0", *argv]))


def test_eer_grouping_sampling_binning_and_skipped_frames_flags_map_to_read_params():
    params = _parse(["--eer-group", "30", "--eer-sampling", "2", "--bin", "1.5",
                     "--throw", "2", "--trunc", "1"])
    read = params.read
    assert (read.eer_group_frames, read.eer_dose_per_fraction_e_A2, read.eer_sampling) == \
        (30, None, 2)
    assert (read.bin_factor, read.throw_frames, read.trunc_frames) == (1.5, 2, 1)


def test_eer_dose_per_fraction_and_defects_flags_map_to_params():
    params = _parse(["--eer-dose-per-fraction", "0.8", "--defects", "defects.txt"])
    assert params.read.eer_dose_per_fraction_e_A2 == 0.8 and params.read.eer_group_frames is None
    assert params.read.eer_sampling == 1
    assert params.gain.defects_path == Path("defects.txt")


def test_eer_group_and_dose_per_fraction_are_mutually_exclusive(capsys):
    with pytest.raises(SystemExit):
        _parse(["--eer-group", "30", "--eer-dose-per-fraction", "0.8"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_eer_sampling_other_than_1_or_2_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        _parse(["--eer-sampling", "4"])
    assert "--eer-sampling" in capsys.readouterr().err
