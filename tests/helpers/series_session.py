"""A small tilt series as SerialEM leaves it in a watched folder, for in-process daemon tests.

Imported by name (``from series_session import ...``): ``tests/conftest.py`` puts this folder on
``sys.path``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from daemon.simulation.tilt_series import series_mdoc_text, simulate_tilt_series

__all__ = ["SHAPE", "N_FRAMES", "PIXEL_A", "write_series_mdoc", "copied_series"]

SHAPE = (64, 64)
N_FRAMES = 4
PIXEL_A = 1.1


def write_series_mdoc(watch: Path, tilts, name: str = "TS_01", voltage_kV: float = 300) -> Path:
    """``watch/<name>.mrc.mdoc`` listing ``tilts`` (written at once); its path."""
    mdoc = watch / f"{name}.mrc.mdoc"
    mdoc.write_text(series_mdoc_text(name, tilts, pixel_size_A=PIXEL_A, shape_yx=SHAPE,
                                     n_frames=N_FRAMES, voltage_kV=voltage_kV))
    return mdoc


def copied_series(tmp_path: Path, *, seed: int, n_tilts: int = 3):
    """A series of ``n_tilts`` tilts as SerialEM leaves it (movies and the mdoc TS_01.mrc.mdoc
    in ``tmp_path/w``, no lock; rendered in ``tmp_path/staging``): (watch, out, tilts)."""
    watch, out, staging = tmp_path / "w", tmp_path / "out", tmp_path / "staging"
    for folder in (watch, out, staging):
        folder.mkdir()
    tilts = simulate_tilt_series(staging, rng=np.random.default_rng(seed), n_tilts=n_tilts,
                                 shape_yx=SHAPE, n_frames=N_FRAMES, pixel_size_A=PIXEL_A,
                                 frame_interval_s=0, tilt_interval_s=0, sleep=lambda s: None)
    for t in tilts:
        shutil.copy2(t.movie.path, watch / t.movie.path.name)
    write_series_mdoc(watch, tilts)
    return watch, out, tilts
