"""The README's "Coming from MotionCor2/3" table names options that exist."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from daemon.commands import correct, watch


def _options(add_arguments) -> set[str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return {flag for action in parser._actions for flag in action.option_strings}


def test_every_option_the_readme_gives_for_a_motioncor2_flag_is_one_of_correct_or_watch():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("### Coming from MotionCor2/3", 1)[1].split("\nNo equivalent:", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `-")]
    assert len(rows) >= 14
    spans = [span for row in rows for span in re.findall(r"`([^`]+)`", row)]
    named = {flag for span in spans for flag in re.findall(r"--[a-z0-9-]+", span)}
    assert {"--fm-int-file", "--gain-rotate", "--pre-exposure", "--patch-group"} <= named
    known = _options(correct.add_arguments) | _options(watch.add_arguments)
    assert named <= known, sorted(named - known)
