"""The README's "From Python" example runs as written, on TIFF movies and a gain, and a bad movie
gives its one line while the others are corrected."""

from __future__ import annotations

import re
from pathlib import Path

import mrcfile
import numpy as np
import tifffile

from correction.synthetic import render_movie

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    section = README.read_text().split("### From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readmes_python_example_corrects_the_movies_and_names_a_bad_one(
        tmp_path, monkeypatch, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        syn = render_movie(np.random.default_rng(i), shape_yx=(192, 192), n_frames=5,
                           electrons_per_px_per_frame=2.0, gain=None, n_hot_pixels=0)
        tifffile.imwrite(frames / f"m{i}.tif", syn.frames.astype(np.uint8), compression="lzw")
    (frames / "m2_cut.tif").write_bytes((frames / "m0.tif").read_bytes()[:5000])
    with mrcfile.new(tmp_path / "gain.mrc") as mrc:
        mrc.set_data(np.ones((192, 192), np.float32))
    monkeypatch.chdir(tmp_path)
    exec(compile(_example(), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["m0.tif", "m1.tif"]
    assert all(re.search(r"drift \d+\.\d Å, last frame \([-+]\d", line) for line in lines[:2])
    assert len(lines) == 3 and "m2_cut.tif" in lines[2]
    assert sorted(p.name for p in (tmp_path / "corrected").glob("*_DW.mrc")) == [
        "m0_DW.mrc", "m1_DW.mrc"]
