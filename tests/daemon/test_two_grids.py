"""Two grids of one session with the same series names keep their own dose ledgers.

A session folder holds ``grid1/TS_01*`` and ``grid2/TS_01*``, each with its own
``TS_01.mrc.mdoc`` (as SerialEM writes them when the same navigator names are reused on a second
grid). Truth: each tilt's dose and pre-exposure are those of its own grid's mdoc (the two grids
are simulated with different doses), and each grid's stacks go to ``OUT/<grid>/TS_01/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from correction.params import CorrectionParams, DoseParams
from daemon.engine.service import Service
from daemon.series.options import resolver_from_config
from daemon.settings.config import Config
from daemon.simulation.tilt_series import simulate_tilt_series


def _run(watch: Path, out: Path) -> None:
    out.mkdir()
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams()),  # no dose flag
                    settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.2,
                    exit_when_idle_s=0.6, polling="on", log_level="warning",
                    options={"tilt_series": "auto", "mdoc_quiet": 0.3})
    assert Service(config, resolver=resolver_from_config(config)).run() == 0


def test_same_series_name_in_two_grid_folders_gives_each_tilt_its_own_grids_doses(tmp_path):
    watch, out = tmp_path / "session", tmp_path / "out"
    grids = {}
    for k, (grid, electrons) in enumerate((("grid1", 1.0), ("grid2", 2.5))):
        grids[grid] = simulate_tilt_series(
            watch / grid, rng=np.random.default_rng(40 + k), n_tilts=3, shape_yx=(128, 128),
            n_frames=4, electrons_per_px_per_frame=electrons, frame_interval_s=0.0,
            tilt_interval_s=0.0, lock=False)
    names1 = sorted(t.movie.path.name for t in grids["grid1"])
    assert names1 == sorted(t.movie.path.name for t in grids["grid2"])  # the same names
    _run(watch, out)
    for grid, tilts in grids.items():
        for t in tilts:
            record = json.loads((out / grid / f"{t.movie.path.stem}.motion.json").read_text())
            tilt = record["tilt"]
            assert tilt["series"] == f"{grid}/TS_01"
            assert tilt["dose_e_A2"] == pytest.approx(t.dose_e_A2, abs=1e-9)
            assert tilt["pre_exposure_e_A2"] == pytest.approx(t.pre_exposure_e_A2, abs=1e-9)
            # FrameDosesAndNumber is written with 6 digits
            assert record["dose"]["total_e_A2"] == pytest.approx(t.dose_e_A2, rel=1e-4)
        folder = out / grid / "TS_01"  # the layout stays OUT/<folder>/<series>/
        angles = [float(a) for a in (folder / "TS_01.tlt").read_text().split()]
        assert angles == sorted(t.tilt_deg for t in tilts)
    # the grids really differ, so a shared ledger could not pass the checks above
    assert grids["grid2"][1].pre_exposure_e_A2 > 2 * grids["grid1"][1].pre_exposure_e_A2 > 0


def test_series_in_the_watch_folder_itself_keeps_its_bare_name():
    from daemon.series.resolution import qualified_name, split_qualified

    assert qualified_name("", "TS_01") == "TS_01"
    assert qualified_name("grid2/sq3", "TS_01") == "grid2/sq3/TS_01"
    assert split_qualified("grid2/sq3/TS_01") == ("grid2/sq3", "TS_01")
    assert split_qualified("TS_01") == ("", "TS_01")
