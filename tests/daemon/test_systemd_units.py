"""The systemd units pass ``systemd-analyze verify`` silently and score <= 2.0 on hardening.

``systemd-analyze verify`` fails a unit whose ExecStart binary is missing, and the units name
the production path ``/opt/motionwatch/venv/bin/motionwatch``. The tests therefore verify a copy
of each unit, with the same file name, in which only that binary path is replaced by this test
environment's ``motionwatch`` script (or its Python when the script is not installed); every
other line is checked as shipped. The check runs wherever ``systemd-analyze`` exists (no systemd
as PID 1 needed); without it the tests are skipped, except on CI (``CI=true``), where ``.ci/run``
installs the ``systemd`` package and a missing ``systemd-analyze`` is a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from system_tools import require_tool

from daemon import exitcodes

REPO = Path(__file__).resolve().parents[2]
UNIT_DIR = REPO / "systemd"
INSTALLED_BINARY = "/opt/motionwatch/venv/bin/motionwatch"
MAX_EXPOSURE = 2.0
UNITS = ("motionwatch.service", "motionwatch@.service")


def _systemd_analyze() -> str:
    return require_tool("systemd-analyze", "systemd")


def _test_binary() -> str:
    script = Path(sys.executable).with_name("motionwatch")
    return str(script if script.is_file() else Path(sys.executable))


def _unit_lines(name: str) -> dict[str, list[str]]:
    """Key -> values of one unit file (all sections; repeated keys keep every value)."""
    values: dict[str, list[str]] = {}
    for line in (UNIT_DIR / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        values.setdefault(key.strip(), []).append(value.strip())
    return values


def _copy_for_verify(name: str, folder: Path) -> Path:
    text = (UNIT_DIR / name).read_text()
    assert text.count(f"ExecStart={INSTALLED_BINARY} ") == 1, f"{name}: ExecStart moved?"
    copy = folder / name
    copy.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={_test_binary()} "))
    return copy


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _verify_output(analyze: str, unit: Path) -> tuple[int, str]:
    done = _run([analyze, "verify", "--man=no", unit.name], cwd=unit.parent)
    return done.returncode, (done.stdout + done.stderr).strip()


@pytest.mark.parametrize("name", UNITS)
def test_unit_passes_systemd_analyze_verify_without_any_output(name: str, tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    unit = _copy_for_verify(name, tmp_path)
    status, output = _verify_output(analyze, unit)
    assert (status, output) == (0, ""), f"systemd-analyze verify {name}:\n{output}"


def test_template_instance_passes_verify_without_any_output(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    template = _copy_for_verify("motionwatch@.service", tmp_path)
    instance = tmp_path / "motionwatch@krios-k3.service"
    instance.symlink_to(template.name)
    status, output = _verify_output(analyze, instance)
    assert (status, output) == (0, ""), f"systemd-analyze verify {instance.name}:\n{output}"


def test_verify_check_reports_an_unknown_key_as_output(tmp_path: Path) -> None:
    """Negative control: verify exits 0 on an unknown key, so the tests read its output."""
    analyze = _systemd_analyze()
    unit = _copy_for_verify("motionwatch.service", tmp_path)
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nWatchdogSecs=1min\n"))
    status, output = _verify_output(analyze, unit)
    assert status == 0
    assert "WatchdogSecs" in output


@pytest.mark.parametrize("name", [*UNITS, "motionwatch@krios-k3.service"])
def test_unit_security_exposure_is_at_most_2_and_ok(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    analyze = _systemd_analyze()
    if "@krios-k3" in name:
        _copy_for_verify("motionwatch@.service", tmp_path)
        (tmp_path / name).symlink_to("motionwatch@.service")
    else:
        _copy_for_verify(name, tmp_path)
    done = _run([analyze, "security", "--offline=yes", "--no-pager", name], cwd=tmp_path)
    output = done.stdout + done.stderr
    match = re.search(r"Overall exposure level for (\S+): (\d+\.\d+) (\S+)", output)
    assert match is not None, f"no overall score in:\n{output}"
    score, verdict = float(match.group(2)), match.group(3)
    with capsys.disabled():
        print(f"\n  systemd-analyze security --offline=yes {name}: {score:.1f} {verdict}")
    assert score <= MAX_EXPOSURE and verdict == "OK", output


@pytest.mark.parametrize("name", UNITS)
def test_unit_declares_notify_watchdog_restart_policy_and_config_exit_status(name: str) -> None:
    unit = _unit_lines(name)
    single = {key: values[-1] for key, values in unit.items()}
    assert single["Type"] == "notify"
    assert single["NotifyAccess"] == "main"
    assert single["WatchdogSec"]
    assert single["Restart"] == "on-failure"
    # neither a bad config nor a command line argparse refuses will fix itself
    assert single["RestartPreventExitStatus"].split() == [str(exitcodes.USAGE),
                                                          str(exitcodes.CONFIG)]
    assert single["KillMode"] == "mixed" and single["KillSignal"] == "SIGTERM"
    assert single["TimeoutStopSec"] == "10min"
    assert single["User"] == single["Group"] == "motionwatch"
    assert single["ProtectSystem"] == "strict"
    assert single["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6 AF_NETLINK"
    # every log line has its <N> priority; a line without one (a traceback, the watchdog's
    # stack dump) is an error, not info hidden from journalctl -p warning
    assert single["SyslogLevel"] == "err"
    config = "%i.toml" if "@" in name else "motionwatch.toml"
    assert single["ExecStart"] == f"{INSTALLED_BINARY} watch --config /etc/motionwatch/{config}"


@pytest.mark.parametrize("name", ["motionwatch.service", "motionwatch@.service"])
def test_unit_is_ordered_after_the_shares_but_requires_no_mount(name: str) -> None:
    """A share that failed to mount at boot must not keep the service from starting: the start
    of a unit that requires the mount fails with result 'dependency', which Restart= does not
    retry. The daemon itself waits for the share (exit 69, restarted every 30 s)."""
    unit = _unit_lines(name)
    assert "remote-fs.target" in unit["After"][0].split()
    requiring = {"Requires", "BindsTo", "RequiresMountsFor", "Requisite", "PartOf"}
    assert requiring.isdisjoint(unit), sorted(requiring & unit.keys())


def test_template_differs_from_the_single_unit_only_in_instance_paths() -> None:
    single = _unit_lines("motionwatch.service")
    template = _unit_lines("motionwatch@.service")
    assert single.keys() == template.keys()
    differing = sorted(key for key in single if single[key] != template[key])
    assert differing == [
        "Description", "ExecStart", "ReadOnlyPaths", "ReadWritePaths", "RuntimeDirectory",
        "StateDirectory",
    ]
    for key in differing[1:]:
        assert all("%i" in value for value in template[key]), key


def _watch_parser():
    import argparse

    from daemon.commands import watch as service

    parser = argparse.ArgumentParser(prog="motionwatch watch")
    service.add_arguments(parser)
    return parser


def _toml_keys_of_watch() -> set[str]:
    """Every key ``motionwatch watch`` accepts in its TOML file (its long options' names)."""
    keys = set()
    for action in _watch_parser()._actions:  # noqa: SLF001
        for option in action.option_strings:
            if option.startswith("--") and option not in ("--help", "--config"):
                keys.add(option[2:].replace("-", "_"))
        if action.option_strings and action.dest not in ("help", "config"):
            keys.add(action.dest)
    return keys


def test_example_config_uses_only_keys_that_motionwatch_watch_accepts() -> None:
    with open(UNIT_DIR / "motionwatch.toml", "rb") as fh:
        example = tomllib.load(fh)
    unknown = sorted(set(example) - _toml_keys_of_watch() - {"watch_dir"})
    assert unknown == []
    assert example["workers"] >= 1 and example["dose_per_frame"] > 0


def test_watch_takes_its_watch_folder_from_the_config_file_as_the_units_run_it() -> None:
    args = _watch_parser().parse_args(["--config", str(UNIT_DIR / "motionwatch.toml")])
    assert args.config == UNIT_DIR / "motionwatch.toml"
