"""Configuration: TOML then flags, every problem reported at once, exit status 78."""

import argparse
from pathlib import Path

import pytest

from daemon import exitcodes
from daemon.commands.cli import main
from daemon.settings.config import ConfigError, load_config


def parse(argv):
    from daemon.commands import watch as service

    parser = argparse.ArgumentParser()
    service.add_arguments(parser)
    return parser.parse_args(argv)


def test_toml_values_apply_and_flags_override_them(tmp_path):
    (tmp_path / "w").mkdir()
    toml = tmp_path / "c.toml"
    toml.write_text(f'out = "{tmp_path / "o"}"\ndose_per_frame = 1.5\nworkers = 3\n'
                    f'settle-time = 0.25\npolling = "on"\npixel_size = 0.8\nhot_pixels = false\n'
                    f'movie_patterns = ["*.tif"]\n')
    config = load_config(parse([str(tmp_path / "w"), "--config", str(toml), "--workers", "2"]))
    assert config.workers == 2  # the flag wins
    assert config.settle_time_s == 0.25 and config.polling == "on"
    assert config.params.dose.dose_per_frame_e_A2 == 1.5
    assert config.params.read.pixel_size_A == 0.8
    assert config.params.gain.detect_hot_pixels is False
    assert config.movie_patterns == ("*.tif",)
    assert config.out_dir == tmp_path / "o" and config.state_dir == config.out_dir


def test_read_ahead_is_on_by_default_and_off_by_flag_or_toml(tmp_path):
    (tmp_path / "w").mkdir()
    base = [str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--dose-per-frame", "1"]
    assert load_config(parse(base)).read_ahead is True
    assert load_config(parse([*base, "--no-read-ahead"])).read_ahead is False
    toml = tmp_path / "c.toml"
    toml.write_text("read_ahead = false\n")
    assert load_config(parse([*base, "--config", str(toml)])).read_ahead is False


def test_every_correction_option_has_a_toml_key(tmp_path):
    """A value for each option of `motionwatch correct` is accepted from the config file."""
    from daemon.settings.correction_options import add_correction_arguments

    probe = argparse.ArgumentParser()
    add_correction_arguments(probe)
    dests = {a.dest for a in probe._actions if a.option_strings and a.dest != "help"}
    args = parse([str(tmp_path)])
    keys = {a.dest for a in args._config_parser._actions}
    assert dests <= keys


def test_all_problems_are_reported_together(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('workers = 0\nsettle_time = "soon"\nfrobnicate = 1\npolling = "sometimes"\n')
    with pytest.raises(ConfigError) as info:
        load_config(parse([str(tmp_path / "missing"), "--config", str(toml),
                           "--gain", str(tmp_path / "gain.mrc"), "--out", str(tmp_path / "o")]))
    text = "\n".join(info.value.problems)
    for expected in ("workers must be >= 1", "'settle_time'", f"{toml}: unknown key 'frobnicate'",
                     "'polling': 'sometimes' is not one of",
                     "gain reference", "watch folder", "does not exist"):
        assert expected in text, expected
    assert "dose" not in text  # each movie's dose may come from its metadata


def test_every_bad_correction_value_is_said_at_once_not_the_first_alone(tmp_path):
    """``bin = 0``, ``voltage = 0``, ``throw = -1``: the parameters named the voltage alone,
    then the bin at the next start, then the throw."""
    (tmp_path / "w").mkdir()
    toml = tmp_path / "c.toml"
    toml.write_text("bin = 0\nvoltage = 0\nthrow = -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(parse([str(tmp_path / "w"), "--config", str(toml),
                           "--out", str(tmp_path / "o")]))
    text = "\n".join(info.value.problems)
    for expected in ("--voltage must be", "--bin must be", "--throw must be >= 0"):
        assert expected in text, expected
    assert len(info.value.problems) == 3


def test_an_infinite_time_or_a_runaway_worker_count_is_a_configuration_error(tmp_path):
    """``settle_time = inf`` (TOML allows it) left every movie settling for ever while status
    said healthy; ``workers = 100000`` spawned processes until the machine ran out of memory."""
    (tmp_path / "w").mkdir()
    toml = tmp_path / "c.toml"
    toml.write_text("settle_time = inf\nheartbeat = nan\nworkers = 100000\n")
    with pytest.raises(ConfigError) as info:
        load_config(parse([str(tmp_path / "w"), "--config", str(toml),
                           "--out", str(tmp_path / "o")]))
    text = "\n".join(info.value.problems)
    for expected in ("settle_time must be a finite number, got inf",
                     "heartbeat must be a finite number, got nan", "workers must be <= 256"):
        assert expected in text, text
    assert not (tmp_path / "o").exists()
    toml.write_text("dose_per_frame = inf\n")  # one problem, said once (it was said twice,
    with pytest.raises(ConfigError) as info:  # the second time as a flag never given)
        load_config(parse([str(tmp_path / "w"), "--config", str(toml),
                           "--out", str(tmp_path / "o")]))
    assert info.value.problems == (f"dose_per_frame must be a finite number, got inf (config "
                                   f"file {toml}: dose_per_frame)",)
    # the file's value is wrong whatever the command line gives (the flag dropped one day, the
    # daemon would not start: it is said now)
    toml.write_text("settle_time = inf\n")
    with pytest.raises(ConfigError) as info:
        load_config(parse([str(tmp_path / "w"), "--config", str(toml), "--settle-time", "0.5",
                           "--out", str(tmp_path / "o"), "--dose-per-frame", "1"]))
    assert info.value.problems == (f"settle_time must be a finite number, got inf (config "
                                   f"file {toml}: settle_time)",)
    # nor hides another problem, nor is said again by a range check
    with pytest.raises(ConfigError) as info:
        load_config(parse([str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--heartbeat",
                           "nan", "--settle-time=-inf", "--pixel-size", "-2"]))
    problems = info.value.problems
    assert problems[:2] == ("heartbeat must be a finite number, got nan",
                            "settle_time must be a finite number, got -inf")
    assert len(problems) == 3 and "pixel" in problems[2], problems
    with pytest.raises(ConfigError) as info:  # the optics too
        load_config(parse([str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                           "--spherical-aberration", "nan"]))
    assert info.value.problems == ("spherical_aberration must be a finite number, got nan",)


def test_watch_starts_without_a_dose_flag_and_the_dose_stays_unknown_until_metadata(tmp_path):
    config = load_config(parse([str(tmp_path), "--out", str(tmp_path / "o")]))
    assert not config.params.dose.known
    assert config.params.dose.voltage_kV == 300.0


def test_a_dose_flag_replaces_the_other_dose_of_the_config_file(tmp_path):
    (tmp_path / "c.toml").write_text("dose_per_frame = 1.0\n")
    base = [str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(tmp_path / "c.toml")]
    dose = load_config(parse([*base, "--total-dose", "40"])).params.dose
    assert dose.total_dose_e_A2 == 40.0 and dose.dose_per_frame_e_A2 is None
    (tmp_path / "c.toml").write_text("total_dose = 40.0\n")
    dose = load_config(parse([*base, "--dose-per-frame", "2"])).params.dose
    assert dose.dose_per_frame_e_A2 == 2.0 and dose.total_dose_e_A2 is None


def test_an_eer_grouping_flag_replaces_the_other_grouping_of_the_config_file(tmp_path):
    (tmp_path / "c.toml").write_text("eer_group = 20\n")
    read = load_config(parse([str(tmp_path), "--out", str(tmp_path / "o"), "--config",
                              str(tmp_path / "c.toml"), "--eer-dose-per-fraction", "0.5"])
                       ).params.read
    assert read.eer_dose_per_fraction_e_A2 == 0.5 and read.eer_group_frames is None


@pytest.mark.parametrize(("toml", "keys"), [
    ("dose_per_frame = 1.0\ntotal_dose = 40.0\n", "'dose_per_frame' and 'total_dose'"),
    ("eer_group = 20\neer-dose-per-fraction = 0.5\n", "'eer_group' and 'eer-dose-per-fraction'"),
])
def test_two_options_that_exclude_each_other_in_the_config_file_are_one_error(
        tmp_path, capsys, toml, keys):
    (tmp_path / "w").mkdir()
    (tmp_path / "c.toml").write_text(toml)
    status = main(["watch", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                   "--config", str(tmp_path / "c.toml"), "--exit-when-idle", "0"])
    assert status == 78
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  - ")]
    assert errors == [f"  - config keys {keys} exclude each other: give only one"]


def test_two_options_that_exclude_each_other_on_the_command_line_are_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as info:
        parse([str(tmp_path), "--dose-per-frame", "1", "--total-dose", "40"])
    assert info.value.code == 2


@pytest.mark.parametrize(("value", "name"), [(0, "none"), (1, "updown"), (2, "leftright"),
                                             ('"updown"', "updown"), ('"2"', "leftright")])
def test_gain_flip_in_toml_may_be_motioncor2s_flipgain_number(tmp_path, value, name):
    toml = tmp_path / "c.toml"
    toml.write_text(f"gain_flip = {value}\ngain_rotate = 1\n")
    config = load_config(parse([str(tmp_path), "--out", str(tmp_path / "o"),
                                "--config", str(toml)]))
    assert config.params.gain.flip == name and config.params.gain.rotate_quarter_turns == 1


def test_gain_flip_outside_motioncor2s_numbers_is_a_config_error(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("gain_flip = 3\n")
    with pytest.raises(ConfigError, match="gain_flip"):
        load_config(parse([str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(toml)]))


def test_a_pattern_with_a_folder_part_is_a_config_error_naming_the_file_name_pattern(tmp_path):
    """Patterns match file names in every folder: ``Grid1/*.mrc`` or ``**/*.mrc`` matched
    nothing, and the daemon ran healthy, correcting nothing all night."""
    toml = tmp_path / "c.toml"
    toml.write_text('movie_patterns = ["**/*.mrc", "*.tif"]\nmetadata_patterns = ["a\\\\*.mdoc"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(parse([str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(toml)]))
    assert list(err.value.problems) == [
        "movie_patterns '**/*.mrc': a pattern matches file names, in every folder below the "
        f"watch folder: give '*.mrc' (config file {toml}: movie_patterns)",
        "metadata_patterns 'a\\\\*.mdoc': a pattern matches file names, in every folder below "
        f"the watch folder: give '*.mdoc' (config file {toml}: metadata_patterns)"]
    config = load_config(parse([str(tmp_path), "--out", str(tmp_path / "o"),
                                "--movie-patterns", "*.mrc", "*.eer"]))
    assert config.movie_patterns == ("*.mrc", "*.eer")


def test_an_output_folder_on_a_read_only_file_system_is_said_so_not_permission_denied(
        tmp_path, monkeypatch):
    """Under systemd's ProtectSystem=strict a folder left out of ReadWritePaths= is read-only:
    "permission denied" sent the administrator to chmod."""
    import os as os_module
    from types import SimpleNamespace

    from daemon.settings import config as config_module

    out = tmp_path / "out"
    out.mkdir()
    real_access, real_statvfs = os_module.access, os_module.statvfs
    monkeypatch.setattr(config_module.os, "access", lambda p, mode, **kw: (
        False if Path(p) == out and mode & os_module.W_OK else real_access(p, mode, **kw)))
    for flag, said in ((os_module.ST_RDONLY, "read-only file system; under systemd, is it in "
                                             "the unit's ReadWritePaths=?"),
                       (0, "permission denied")):
        monkeypatch.setattr(config_module.os, "statvfs", lambda p, flag=flag: SimpleNamespace(
            f_flag=flag) if Path(p) == out else real_statvfs(p))
        problems = []
        config_module._check_dir_creatable(out, "output folder", problems)
        assert [str(p) for p in problems] == [f"output folder {out}: not writable ({said})"]


def test_gain_flags_help_says_they_are_motioncor2s_rotgain_and_flipgain(capsys):
    from daemon.settings.correction_options import add_correction_arguments

    probe = argparse.ArgumentParser()
    add_correction_arguments(probe)
    helps = {a.dest: " ".join(a.help.split()) for a in probe._actions if a.help}
    assert "MotionCor2's -RotGain K" in helps["gain_rotate"]
    assert "gain[y, x] to [x, ny-1-y]" in helps["gain_rotate"]
    assert "1 and 3 turned the other way" in helps["gain_rotate"]
    assert "MotionCor2's -FlipGain" in helps["gain_flip"]
    assert "1 or updown" in helps["gain_flip"] and "2 or leftright" in helps["gain_flip"]
    assert probe.parse_args(["--gain-flip", "2"]).gain_flip == "leftright"


@pytest.mark.parametrize("extra", [
    ["--workers", "0"],
    ["--max-attempts", "0"],
    ["--max-attempts", "0", "--gain", "/nonexistent/gain.mrc"],  # a wrong value among them
])
def test_bad_configuration_exits_78(tmp_path, capsys, extra):
    (tmp_path / "w").mkdir()
    status = main(["watch", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                   "--dose-per-frame", "1", *extra])
    assert status == exitcodes.CONFIG == 78
    assert "invalid configuration" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--defects", "--dark"])
def test_a_defect_or_dark_file_that_cannot_be_read_is_refused_at_start_without_a_gain(
        tmp_path, option):
    """Gain-normalised frames and a defect list that does not read (here a camera defect list
    without its camera size): without --gain the file was read at the first movie only, failed
    there and again every 10 s, and stopped the daemon at the third movie; as `correct`,
    `watch` reads it before it starts."""
    (tmp_path / "w").mkdir()
    reference = tmp_path / "defects_K3.txt"
    reference.write_text("RotationAndFlip 0\nBadColumns 100\n")
    with pytest.raises(ConfigError, match=r"defects_K3\.txt"):
        load_config(parse([str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                           option, str(reference)]))


@pytest.mark.parametrize("what", ["watch folder", "gain reference", "frame integration file",
                                  "output folder"])
def test_a_folder_or_file_out_of_reach_at_start_up_exits_69_which_systemd_restarts(
        tmp_path, capsys, what):
    """A share not mounted yet (or away for a while) is no wrong value: with only such
    problems ``watch`` exits 69 (EX_UNAVAILABLE), with the same one-line reasons, and the unit
    restarts it (its RestartPreventExitStatus= holds 2 and 78 only) until the share is back."""
    watch, out = tmp_path / "w", tmp_path / "o"
    watch.mkdir()
    extra = []
    if what == "watch folder":
        watch = tmp_path / "unmounted" / "frames"
    elif what == "gain reference":
        extra = ["--gain", str(tmp_path / "unmounted" / "gain.mrc")]
    elif what == "frame integration file":
        extra = ["--fm-int-file", str(tmp_path / "unmounted" / "fmint.txt")]
    else:  # a folder nobody can create, not even root (as under an unmounted share's root)
        out = Path("/proc/motionwatch-unmounted-share/motioncorr")
    status = main(["watch", str(watch), "--out", str(out), "--dose-per-frame", "1", *extra])
    err = capsys.readouterr().err
    assert status == exitcodes.UNAVAILABLE == 69, err
    assert what in err
    assert "out of reach" in err and "invalid configuration" not in err  # no wrong value
    unit = (Path(__file__).resolve().parents[2] / "systemd" / "motionwatch.service").read_text()
    assert "RestartPreventExitStatus=2 78\n" in unit and "StartLimitIntervalSec=0\n" in unit


def test_unreadable_watch_folder_exits_78(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    status = main(["watch", str(tmp_path / "file.txt"), "--out", str(tmp_path / "o"),
                   "--dose-per-frame", "1"])
    assert status == 78 and "not a folder" in capsys.readouterr().err


def test_invalid_toml_is_a_config_error(tmp_path, capsys):
    (tmp_path / "w").mkdir()
    (tmp_path / "c.toml").write_text("workers = = 2")
    status = main(["watch", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                   "--dose-per-frame", "1", "--config", str(tmp_path / "c.toml")])
    assert status == 78 and "not valid TOML" in capsys.readouterr().err


def test_invalid_toml_is_the_only_problem_reported(tmp_path, capsys):
    """Without the file, a folder it would have named is not missing: one line, naming it."""
    (tmp_path / "c.toml").write_text('watch_dir = "w"\nout = "o"\nworkers = = 2\n')
    status = main(["watch", "--config", str(tmp_path / "c.toml")])
    err = capsys.readouterr().err
    assert status == 78 and f"config file {tmp_path / 'c.toml'}: not valid TOML" in err
    assert "no watch folder" not in err and "no output folder" not in err


def test_a_misspelt_config_key_names_the_file_and_the_key_meant(tmp_path):
    (tmp_path / "w").mkdir()
    toml = tmp_path / "typo.toml"
    toml.write_text("dose_per_frme = 1.0\n")
    with pytest.raises(ConfigError) as info:
        load_config(parse([str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                           "--config", str(toml)]))
    assert info.value.problems[0].startswith(
        f"config file {toml}: unknown key 'dose_per_frme' (did you mean 'dose_per_frame'?)")


@pytest.mark.parametrize("key, value, flag", [("dose_per_frame", "-1.0", "--dose-per-frame"),
                                              ("pixel_size", "0.0", "--pixel-size"),
                                              ("voltage", "0.3", "--voltage"),
                                              ("group", "0", "--group"),
                                              ("patch_group", "0", "--patch-group")])
def test_a_bad_correction_value_is_named_by_its_option_not_by_a_field(tmp_path, key, value, flag):
    (tmp_path / "w").mkdir()
    toml = tmp_path / "c.toml"
    toml.write_text(f"{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(parse([str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                           "--config", str(toml)]))
    assert any(p.startswith(f"{flag} must be ") for p in info.value.problems), info.value.problems


def test_output_folder_equal_to_the_watch_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is the watch folder"):
        load_config(parse([str(tmp_path), "--out", str(tmp_path), "--dose-per-frame", "1"]))


def test_an_output_folder_that_links_to_the_watch_folder_is_refused(tmp_path):
    (tmp_path / "frames").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "frames")
    with pytest.raises(ConfigError, match="is the watch folder"):
        load_config(parse([str(tmp_path / "frames"), "--out", str(tmp_path / "out"),
                           "--dose-per-frame", "1"]))


def test_an_output_folder_holding_the_demos_simulated_movies_is_refused(tmp_path):
    """The simulator writes movies as a detector does, not as motionwatch's outputs."""
    import numpy as np

    from daemon.simulation.movies import write_movie_progressively

    for grid in ("frames", "grid1"):  # two grids, the same names
        (tmp_path / grid).mkdir()
        write_movie_progressively(tmp_path / grid / "m.mrc", np.zeros((3, 8, 8), np.int16),
                                  pixel_size_A=1.0, frame_interval_s=0)
    with pytest.raises(ConfigError, match=r"holds movies"):
        load_config(parse([str(tmp_path / "frames"), "--out", str(tmp_path / "grid1"),
                           "--dose-per-frame", "1"]))


@pytest.mark.parametrize("out", ["grid1", "grid2/grid1"])
def test_an_output_folder_holding_raw_movies_is_refused_before_any_is_touched(tmp_path, out):
    """``watch session/grid2 --out session/grid1`` (a typo): grid1's movies have grid2's names
    (SerialEM's), so their sums would replace them; ``--out`` below the watch folder, on a
    grid's frames: those movies would never be watched."""
    import mrcfile
    import numpy as np

    (tmp_path / "grid2" / "grid1").mkdir(parents=True)
    (tmp_path / "grid1").mkdir()
    for folder in ("grid1", "grid2", "grid2/grid1"):  # SerialEM: the same names in each grid
        with mrcfile.new(tmp_path / folder / "TS_01_001_-3.0.mrc") as mrc:
            mrc.set_data(np.zeros((3, 8, 8), np.int16))
            mrc.set_image_stack()
    watch = tmp_path / "grid2"
    with pytest.raises(ConfigError, match=r"holds movies \(.*TS_01_001_-3\.0\.mrc\)"):
        load_config(parse([str(watch), "--out", str(tmp_path / out), "--dose-per-frame", "1"]))


def test_an_output_folder_of_motionwatch_outputs_is_accepted(tmp_path):
    import mrcfile
    import numpy as np

    from correction.write import write_json_atomic, write_mrc_atomic

    (tmp_path / "frames").mkdir()
    out = tmp_path / "mc"
    (out / "TS_01").mkdir(parents=True)
    write_mrc_atomic(out / "m.mrc", np.zeros((4, 4), np.float32), pixel_size_A=1.0)
    write_json_atomic(out / "m.motion.json", {})
    (out / "m_DW.mrc").write_bytes(b"")  # beside its record: not read
    write_mrc_atomic(out / "TS_01" / "TS_01.mrc", np.zeros((2, 4, 4), np.float32),
                     pixel_size_A=1.0)  # a stack: its label says whose it is
    with mrcfile.new(out / "gain.mrc") as mrc:  # a gain kept with the outputs: one image
        mrc.set_data(np.ones((8, 8), np.float32))
    (out / "notes.tif").write_text("not a TIFF")
    config = load_config(parse([str(tmp_path / "frames"), "--out", str(out),
                                "--dose-per-frame", "1"]))
    assert config.out_dir == out


def test_an_output_folder_with_other_programs_results_or_the_frames_inside_is_accepted(tmp_path):
    """The README's next steps write AreTomo3's volumes into TS_01/aretomo/ and RELION's jobs
    into the project (the output folder), and a RELION project may hold its frames folder:
    none is where an output goes, so a restart is not refused (78 is never restarted)."""
    import mrcfile
    import numpy as np

    project = tmp_path / "PROJ"
    volume = np.zeros((4, 8, 8), np.float32)
    for path in (project / "frames" / "TS_01_000_0.0.mrc",
                 project / "frames" / "TS_01" / "TS_01_001_3.0.mrc",
                 project / "TS_01" / "aretomo" / "TS_01.mrc_Vol.mrc",
                 project / "TS_01" / "TS_01_rec.mrc", project / "mask.mrc",
                 project / "particles.mrcs",
                 project / "Refine3D" / "job010" / "run_class001.mrc"):
        path.parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(path) as mrc:
            mrc.set_data(volume)
            if path.suffix == ".mrcs" or "frames" in path.parts:
                mrc.set_image_stack()
    config = load_config(parse([str(project / "frames"), "--out", str(project),
                                "--dose-per-frame", "1"]))
    assert config.out_dir == project


def test_the_watch_folder_can_come_from_the_config_file_as_in_the_systemd_unit(tmp_path):
    (tmp_path / "frames").mkdir()
    toml = tmp_path / "c.toml"
    toml.write_text(f'watch_dir = "{tmp_path / "frames"}"\nout = "{tmp_path / "mc"}"\n'
                    f'dose_per_frame = 1.0\n')
    config = load_config(parse(["--config", str(toml)]))
    assert config.watch_dir == tmp_path / "frames"
    with pytest.raises(ConfigError, match="no watch folder"):
        load_config(parse(["--out", str(tmp_path / "mc"), "--dose-per-frame", "1"]))


def test_the_example_config_of_the_systemd_unit_is_accepted(tmp_path):
    """systemd/motionwatch.toml uses only keys `motionwatch watch` knows."""
    import tomllib

    example = Path(__file__).resolve().parents[2] / "systemd" / "motionwatch.toml"
    table = tomllib.loads(example.read_text())
    # a voltage set here would override every movie's metadata: 200 kV data weighted at 300
    assert "voltage" not in table
    table.update(watch_dir=str(tmp_path), out=str(tmp_path / "mc"))
    table.pop("gain", None)
    lines = [f"{k} = {json_value(v)}" for k, v in table.items()]
    (tmp_path / "c.toml").write_text("\n".join(lines) + "\n")
    config = load_config(parse(["--config", str(tmp_path / "c.toml")]))
    assert config.out_dir == tmp_path / "mc"


def json_value(value):
    import json

    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def test_the_scratch_folder_is_checked_at_start_up_and_defaults_to_none(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "afile").write_text("x")
    base = [str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--dose-per-frame", "1"]
    with pytest.raises(ConfigError, match=r"scratch folder .*afile"):
        load_config(parse(base + ["--scratch", str(tmp_path / "afile")]))
    assert load_config(parse(base + ["--scratch", str(tmp_path / "s")])).scratch_dir == \
        tmp_path / "s"
    assert load_config(parse(base)).scratch_dir is None


def write_gain(path: Path) -> Path:
    import mrcfile
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.ones((16, 16), np.float32))
    return path


def test_reference_paths_expand_tilde_and_are_made_absolute_from_toml_and_flags(
        tmp_path, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    write_gain(home / "gain.mrc")
    write_gain(home / "dark.mrc")
    work.mkdir()
    (work / "defects.txt").write_text("0 0 1 1\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    (work / "c.toml").write_text('gain = "~/gain.mrc"\ndefects = "defects.txt"\n')
    config = load_config(parse([str(work), "--out", str(tmp_path / "o"), "--config", "c.toml",
                                "--dark", "~/dark.mrc"]))
    gain = config.params.gain
    assert Path(gain.gain_path) == home / "gain.mrc"
    assert Path(gain.dark_path) == home / "dark.mrc"
    assert Path(gain.defects_path) == work / "defects.txt"
    assert config.options["defects"] == work / "defects.txt"  # absolute, as the folders


def test_the_folders_of_an_invalid_configuration_are_not_created(tmp_path):
    (tmp_path / "w").mkdir()
    folders = ["--out", str(tmp_path / "o" / "deep"), "--state-dir", str(tmp_path / "st"),
               "--scratch", str(tmp_path / "scr")]
    with pytest.raises(ConfigError, match="workers"):
        load_config(parse([str(tmp_path / "w"), *folders, "--workers", "0"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
    config = load_config(parse([str(tmp_path / "w"), *folders]))
    assert config.out_dir.is_dir() and config.state_dir.is_dir() and config.scratch_dir.is_dir()


def test_watch_creates_no_folder_when_a_later_check_refuses_the_configuration(tmp_path, capsys):
    (tmp_path / "w").mkdir()
    status = main(["watch", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                   "--executor", "dask", "--exit-when-idle", "0"])  # dask without a scheduler
    assert status == 78 and "scheduler" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_output_folder_under_a_file_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"output folder .*: cannot be created \(.*afile is not"):
        load_config(parse([str(tmp_path), "--out", str(tmp_path / "afile" / "o")]))


def toml_problems(tmp_path, text):
    """The problems of a config file holding ``text`` (and a valid watch folder and output,
    unless ``text`` sets them)."""
    base = {"watch_dir": f'"{tmp_path}"', "out": f'"{tmp_path / "o"}"'}
    lines = [f"{k} = {v}" for k, v in base.items() if not text.startswith(k + " ")]
    (tmp_path / "c.toml").write_text("\n".join([*lines, text]) + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(parse(["--config", str(tmp_path / "c.toml")]))
    return info.value.problems


@pytest.mark.parametrize(("value", "got"), [
    ("[5]", "[5] (an array)"), ("5", "5 (an integer)"), ("[5, 5, 5]", "[5, 5, 5] (an array)"),
    ('["5", "5"]', "['5', '5'] (an array)"), ("[5, 5.5]", "[5, 5.5] (an array)"),
])
def test_patches_needs_a_list_of_exactly_two_integers(tmp_path, value, got):
    assert toml_problems(tmp_path, f"patches = {value}") == (
        f"config key 'patches': expected a list of 2 integers, got {got}",)


def test_every_option_with_a_fixed_count_of_values_takes_a_list_of_that_many(tmp_path):
    """Each option with an integer nargs (only --patches today) refuses a wrong count in TOML."""
    args = parse([str(tmp_path)])
    fixed = [a for a in args._config_parser._actions if isinstance(a.nargs, int) and a.nargs > 0]
    assert fixed
    for action in fixed:
        key = action.dest
        problems = toml_problems(tmp_path, f"{key} = [{', '.join(['1'] * (action.nargs + 1))}]")
        assert problems[0].startswith(f"config key {key!r}: expected a list of {action.nargs} ")


@pytest.mark.parametrize(("text", "expected"), [
    ('workers = "2"', "config key 'workers': expected an integer, got '2' (a string)"),
    ('settle_time = "5"', "config key 'settle_time': expected a number, got '5' (a string)"),
    ("out = 5", "config key 'out': expected a path (a string), got 5 (an integer)"),
    ("watch_dir = 5", "config key 'watch_dir': expected a path (a string), got 5 (an integer)"),
    ("gain = true", "config key 'gain': expected a path (a string), got True (a boolean)"),
    ("movie_patterns = []", "config key 'movie_patterns': expected a list of one or more strings, "
                            "got [] (an array)"),
    ("optics_group = [1, 2]", "config key 'optics_group': expected a string, got [1, 2] "
                              "(an array)"),
])
def test_a_toml_value_of_the_wrong_type_is_a_config_error_naming_key_and_type(
        tmp_path, text, expected):
    assert toml_problems(tmp_path, text) == (expected,)


def test_a_bad_value_from_the_config_file_names_the_file_and_its_key(tmp_path):
    """Under systemd the command line has only --config: "--dose-per-frame must be > 0" named
    no file. A value given as a flag is named by the flag alone."""
    toml = tmp_path / "c.toml"
    toml.write_text("dose_per_frame = -1.0\nworkers = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(parse([str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(toml)]),
                    make_output_folders=False)
    problems = info.value.problems
    assert (f"--dose-per-frame must be > 0 e/Å², got -1.0 (config file {toml}: "
            "dose_per_frame)") in problems
    assert f"workers must be >= 1, got 0 (config file {toml}: workers)" in problems
    with pytest.raises(ConfigError) as info:
        load_config(parse([str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(toml),
                           "--dose-per-frame", "-2", "--workers", "1"]),
                    make_output_folders=False)
    assert info.value.problems == ("--dose-per-frame must be > 0 e/Å², got -2.0",)


def test_toml_values_of_the_right_type_are_taken_as_the_flags_would_be(tmp_path):
    (tmp_path / "c.toml").write_text('workers = 2.0\nsettle_time = 3\nmovie_patterns = "*.eer"\n'
                                     'gain_flip = 1\nno_exposure_filtered = true\n')
    config = load_config(parse([str(tmp_path), "--out", str(tmp_path / "o"),
                                "--config", str(tmp_path / "c.toml")]))
    assert config.workers == 2 and config.settle_time_s == 3.0
    assert config.movie_patterns == ("*.eer",) and config.params.gain.flip == "updown"
    assert config.options["exposure_filtered"] is False


def test_a_plain_text_option_takes_a_number_or_a_toml_time_as_its_text(tmp_path):
    """``optics_group = 3`` and an unquoted ``executor_walltime = 08:00:00`` (a TOML time) are
    what the user means."""
    (tmp_path / "c.toml").write_text('optics_group = 3\nexecutor_walltime = 08:00:00\n')
    config = load_config(parse([str(tmp_path), "--out", str(tmp_path / "o"),
                                "--config", str(tmp_path / "c.toml")]))
    assert config.options["optics_group"] == "3"
    assert config.options["executor_walltime"] == "08:00:00"


def test_another_grids_tiff_frames_folder_as_the_output_folder_is_refused(tmp_path):
    """``watch session/grid2 --out session/grid1`` with K3 TIFF frames: the sums (S.mrc) would
    not replace the movies (S.tif) but land beside another grid's movies of the same names."""
    import numpy as np
    import tifffile

    frames = np.zeros((3, 8, 8), np.uint8)
    for grid in ("grid1", "grid2"):
        (tmp_path / grid).mkdir()
        tifffile.imwrite(tmp_path / grid / "TS_01_001_3.0.tif", frames, photometric="minisblack")
    with pytest.raises(ConfigError, match=r"grid1/TS_01_001_3\.0\.tif"):
        load_config(parse([str(tmp_path / "grid2"), "--out", str(tmp_path / "grid1"),
                           "--dose-per-frame", "1"]))


def test_an_output_folder_inside_the_watch_folder_with_relion_and_imod_stacks_is_accepted(
        tmp_path):
    """RELION's class averages and IMOD's aligned stack are image stacks (space group 0), as a
    movie is: only a movie a detector wrote refuses an output folder inside the watch folder."""
    import mrcfile
    import numpy as np

    session = tmp_path / "session"
    out = session / "motioncorr"
    for path in (out / "Class2D" / "job010" / "run_it025_classes.mrcs",
                 out / "grid1" / "TS_01" / "TS_01_ali.mrc"):
        path.parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(path) as mrc:
            mrc.set_data(np.zeros((5, 8, 8), np.float32))
            mrc.set_image_stack()
    config = load_config(parse([str(session), "--out", str(out), "--dose-per-frame", "1"]))
    assert config.out_dir == out
    with mrcfile.new(out / "grid1" / "TS_02_000_0.0.mrc") as mrc:  # a grid's movie in it
        mrc.set_data(np.zeros((4, 8, 8), np.int16))
        mrc.set_image_stack()
        mrc.header.label[0] = b"SerialEM: Digitized on Krios"
        mrc.header.nlabl = 1
    with pytest.raises(ConfigError, match=r"inside the watch folder, it is not watched"):
        load_config(parse([str(session), "--out", str(out), "--dose-per-frame", "1"]))


@pytest.mark.parametrize("text, expected", [
    ("pixel_size = 0.083", "--pixel-size must be 0.1-1000 Å, got 0.083 (a value in nm? 0.83 Å "
                           "is 0.083 nm)"),
    ("spherical_aberration = 2700", "spherical_aberration must be 0-20 mm, got 2700 (a value in "
                                    "µm? 2.7 mm is 2700 µm)"),
])
def test_a_value_in_the_wrong_unit_is_a_config_error_naming_the_unit(tmp_path, text, expected):
    """Both were accepted: a tenfold wrong pixel size in every output, a Cs in µm in RELION's
    optics table."""
    (problem,) = toml_problems(tmp_path, text)
    assert expected in problem


@pytest.mark.parametrize("key", ["out", "state_dir", "scratch", "gain"])
def test_an_empty_path_in_the_config_file_is_refused_naming_the_key(tmp_path, key):
    """`out = ""` meant the working folder: outputs and state went wherever the daemon was
    started, and under systemd (working folder /, read-only) it exited 69 to be restarted every
    30 s, naming the resolved folder, never the key."""
    problems = toml_problems(tmp_path, f'{key} = ""')
    assert f"config key {key!r}: an empty path ('' would be the working folder" in problems[0]


def test_engine_timeouts_and_the_dashboard_address_are_checked_with_the_others_before_folders(
        tmp_path, capsys):
    """They were checked once running: after the output folder was made, each alone, as a JSON
    log line, and a bad dashboard address was named as the dashboard command's --listen."""
    (tmp_path / "w").mkdir()
    status = main(["watch", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                   "--dose-per-frame", "1", "--movie-timeout-floor", "-1",
                   "--dashboard", "nonsense"])
    assert status == exitcodes.CONFIG
    err = capsys.readouterr().err
    assert "movie_timeout_floor" in err and "dashboard (--dashboard): 'nonsense' is not HOST:PORT" \
        in err
    assert not (tmp_path / "o").exists()


def test_the_built_in_dashboard_with_a_curve_encrypted_feed_is_refused_at_start(tmp_path, capsys):
    """It read the feed without keys: a page that stayed blank, with no word at start."""
    import zmq.auth

    (tmp_path / "w").mkdir()
    _, secret = zmq.auth.create_certificates(str(tmp_path), "server")
    status = main(["watch", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                   "--dose-per-frame", "1", "--dashboard", "127.0.0.1:0",
                   "--publish-curve-secret-key", secret])
    assert status == exitcodes.CONFIG
    assert "the dashboard reads the feed without CURVE keys" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("data, said", [
    ("# réglages: 5 µm\npixel_size = 0.83\n".encode("cp1252"), "not UTF-8 text"),
    ("pixel_size = 0.83\n".encode("utf-16"), "not UTF-8 text"),
    (b"\xef\xbb\xbfpixel_size = 0.83\n", "byte-order mark"),
])
def test_a_config_file_saved_in_another_encoding_is_a_config_error_naming_it(tmp_path, data,
                                                                             said):
    """Notepad's ANSI or UTF-16 file was a Python traceback and status 1: systemd restarted
    it every 30 s instead of stopping it as misconfigured (78)."""
    (tmp_path / "c.toml").write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(parse([str(tmp_path), "--out", str(tmp_path / "o"), "--config",
                           str(tmp_path / "c.toml")]))
    assert said in info.value.problems[0]


def _base(tmp_path):
    return [str(tmp_path), "--out", str(tmp_path / "o")]


def test_no_hot_pixels_true_in_the_toml_file_turns_hot_pixel_detection_off(tmp_path):
    """Mutant S6 (config.py:316, a flag-named boolean key ignored): ``no_hot_pixels = true``
    was accepted and silently did nothing."""
    toml = tmp_path / "c.toml"
    toml.write_text("no_hot_pixels = true\n")
    config = load_config(parse([*_base(tmp_path), "--config", str(toml)]),
                         make_output_folders=False)
    assert config.params.gain.detect_hot_pixels is False
    toml.write_text("hot_pixels = false\n")  # the dest's key too
    config = load_config(parse([*_base(tmp_path), "--config", str(toml)]),
                         make_output_folders=False)
    assert config.params.gain.detect_hot_pixels is False
    toml.write_text("no_hot_pixels = false\n")  # false: not given
    config = load_config(parse([*_base(tmp_path), "--config", str(toml)]),
                         make_output_folders=False)
    assert config.params.gain.detect_hot_pixels is True


@pytest.mark.parametrize("argv, flag", [
    (["--pre-exposure", "-5"], "--pre-exposure"),
    (["--settle-time", "-1"], "settle_time"),
])
def test_a_negative_pre_exposure_or_settle_time_is_a_config_error_naming_it(tmp_path, argv,
                                                                             flag):
    """Mutants S10 (correction_options.py:204, a negative --pre-exposure taken as its size:
    MotionCor2's -InitDose is a dose, >= 0) and S11 (config.py:543, settle_time's >= 0 check
    dropped): both went through."""
    with pytest.raises(ConfigError) as info:
        load_config(parse([*_base(tmp_path), *argv]), make_output_folders=False)
    assert any(p.startswith(flag) for p in info.value.problems), info.value.problems


def test_watch_defaults_are_those_its_help_and_the_config_class_say(tmp_path):
    """Mutant S8 (config.py:209, --retry-delay default 10 -> 1 s): no test read a default."""
    config = load_config(parse(_base(tmp_path)), make_output_folders=False)
    assert (config.settle_time_s, config.scan_interval_s, config.incomplete_grace_s,
            config.movie_timeout_s, config.max_attempts, config.retry_delay_s,
            config.heartbeat_s, config.workers) == (5.0, 2.0, 120.0, 1800.0, 3, 10.0, 10.0, 1)
    p = config.params
    assert (p.read.throw_frames, p.read.trunc_frames, p.read.bin_factor, p.read.eer_sampling,
            p.gain.rotate_quarter_turns, p.gain.flip, p.dose.pre_exposure_e_A2,
            p.align.group_frames, p.align.patch_group) == (0, 0, 1.0, 1, 0, "none", 0.0, 1, 1)


@pytest.mark.parametrize("argv, flag", [
    (["--trunc", "-1"], "--trunc"), (["--throw", "-1"], "--throw"),
    (["--eer-group", "0"], "--eer-group"), (["--max-shift", "0"], "--max-shift"),
    (["--total-dose", "0"], "--total-dose"), (["--pixel-size", "0.05"], "--pixel-size"),
])
def test_each_bad_frame_or_dose_flag_is_named_by_itself(tmp_path, argv, flag):
    """Mutant S17 (correction_options.py:24, a bad --trunc reported as --throw): each flag of
    _FLAG_OF_FIELD must name itself."""
    with pytest.raises(ConfigError) as info:
        load_config(parse([*_base(tmp_path), *argv]), make_output_folders=False)
    assert any(p.startswith(f"{flag} ") for p in info.value.problems), info.value.problems


def test_optics_default_to_relions_and_an_amplitude_contrast_of_1_is_refused(tmp_path):
    """Mutants S18 (optics.py:39, amplitude contrast 1 let through; the range is [0, 1)) and
    S19 (optics.py:28, default Cs 2.7 -> 2.0 mm)."""
    from daemon.settings.optics import optics_record_from

    assert optics_record_from({}) == {"spherical_aberration_mm": 2.7, "amplitude_contrast": 0.1}
    with pytest.raises(ConfigError, match="amplitude_contrast"):
        load_config(parse([*_base(tmp_path), "--amplitude-contrast", "1"]),
                    make_output_folders=False)


def test_default_drift_warning_thresholds_are_40_A_total_10_A_jump_and_no_early(tmp_path):
    """Mutant F8 (listener.py:59, --drift-warning-jump default 10 -> 20 A)."""
    from daemon.feed.listener import publish_config_from
    from daemon.feed.messages import DriftRules

    config = load_config(parse(_base(tmp_path)), make_output_folders=False)
    publish = publish_config_from(config)
    assert publish.drift == DriftRules(40.0, 10.0, None)
    assert publish.heartbeat_interval_s == config.heartbeat_s == 10.0


def test_watchdog_defaults_stuck_after_movie_timeout_plus_60_s_and_extend_at_least_30_s(
        tmp_path):
    """Mutants D5 (notify_listener.py:86, stuck = movie_timeout) and D7 (notify_listener.py:151,
    no 30 s floor on EXTEND_TIMEOUT_USEC): the defaults the module docstring and
    --watchdog-stuck-after's help give."""
    from daemon.system.notify_listener import NotifyListener, watchdog_thresholds

    config = load_config(parse([*_base(tmp_path), "--heartbeat", "2"]),
                         make_output_folders=False)
    stall, stuck = watchdog_thresholds(config, environ={})
    assert stuck == config.movie_timeout_s + 60.0 == 1860.0
    assert stall == max(3 * 2.0, 3 * 2.0, 10.0)
    listener = NotifyListener.from_config(config, environ={})
    assert listener.extend_s == 30.0


def test_a_watchdog_stuck_limit_not_above_the_movie_time_limit_is_refused_at_start(tmp_path,
                                                                                capsys):
    """``watchdog_stuck_after = 1860`` kept while ``movie_timeout`` was raised for K3
    super-resolution movies: a movie running past 1860 s under its own limit was taken for a
    stuck worker, the pings stopped and systemd killed the daemon mid-movie."""
    config = tmp_path / "session.toml"
    config.write_text("movie_timeout = 3600.0\nwatchdog_stuck_after = 1860.0\n")
    (tmp_path / "w").mkdir()
    status = main(["watch", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                   "--dose-per-frame", "1", "--config", str(config), "--exit-when-idle", "1"])
    err = capsys.readouterr().err
    assert status == 78, err
    assert "watchdog_stuck_after (1860 s) must be above movie_timeout (3600 s)" in err
    assert not (tmp_path / "o").exists()  # refused before any folder is made


def test_a_bad_worker_bound_is_a_config_error_even_while_the_watch_share_is_away(tmp_path,
                                                                              capsys):
    """The bound was checked after the folders: with the share away the run exited 69 (to be
    restarted every 30 s), the wrong value unsaid until the share came back."""
    status = main(["watch", str(tmp_path / "unmounted" / "frames"), "--out", str(tmp_path / "o"),
                   "--dose-per-frame", "1", "--worker-max-movies", "-1"])
    err = capsys.readouterr().err
    assert status == 78, err
    assert "worker_max_movies must be >= 0" in err and "watch folder" in err
