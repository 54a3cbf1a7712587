"""Single images share the movies' suffixes: they are not movies.

EPU writes an atlas, grid-square and foil-hole images as one-image ``.mrc`` files beside the
fraction movies, SerialEM saves single shots, and the gain reference often lies in the session
folder. Corrected as one-frame movies they filled the RELION STAR file with false micrographs
(with an all-zero odd half sum). The service ignores them (once logged, no row, nothing
quarantined); ``correct`` refuses one with a line naming it.
"""

from __future__ import annotations

import mrcfile
import numpy as np
import tifffile
from recording_log import RecordingLog

from correction.params import CorrectionParams, DoseParams, GainParams
from daemon import exitcodes
from daemon.commands.cli import main
from daemon.engine.service import Service
from daemon.settings.config import Config
from daemon.simulation.movies import write_movie_progressively
from daemon.state.ledger import Ledger


def _image(path, shape=(64, 96)):
    data = np.random.default_rng(0).poisson(5.0, shape).astype(np.float32)
    if path.suffix == ".mrc":
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = 1.1
    else:
        tifffile.imwrite(path, data.astype(np.uint16)[None], photometric="minisblack")


def test_single_images_in_the_session_folder_are_ignored_and_the_movies_corrected(tmp_path):
    watch, out = tmp_path / "session", tmp_path / "out"
    (watch / "Images-Disc1" / "GridSquare_1" / "Data").mkdir(parents=True)
    out.mkdir()
    _image(watch / "Atlas.mrc")
    _image(watch / "Images-Disc1" / "GridSquare_1" / "GridSquare_20240101.mrc")
    _image(watch / "Images-Disc1" / "GridSquare_1" / "Data" / "FoilHole_1_Data_2.tif")
    _image(watch / "gain.mrc")
    with mrcfile.new(watch / "gain.mrc", overwrite=True) as mrc:
        mrc.set_data(np.ones((64, 96), np.float32))
    frames = np.random.default_rng(1).poisson(2.0, (4, 64, 96)).astype(np.int16)
    movie = watch / "Images-Disc1" / "GridSquare_1" / "Data" / "FoilHole_1_Data_2_Fractions.mrc"
    write_movie_progressively(movie, frames, pixel_size_A=1.1, frame_interval_s=0)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              gain=GainParams(gain_path=watch / "gain.mrc"))
    config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                    heartbeat_s=0.2, exit_when_idle_s=0.5, polling="on")
    log = RecordingLog()
    assert Service(config, logger=log).run() == exitcodes.OK
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        assert [(r.key.path, r.status) for r in ledger.rows()] == [(str(movie), "done")]
    ignored = {f["movie"].rsplit("/", 1)[-1]: f["reason"] for _, e, f in log.events
               if e == "movie_ignored"}
    assert set(ignored) == {"Atlas.mrc", "GridSquare_20240101.mrc", "FoilHole_1_Data_2.tif",
                            "gain.mrc"}
    assert all(reason == "a single image (1 frame), not a movie" for reason in ignored.values())
    assert not list(out.rglob("Atlas*")) and not list(out.rglob("gain*"))


def test_correct_refuses_a_single_image_with_one_line_naming_it(tmp_path, capsys):
    _image(tmp_path / "Atlas.mrc")
    status = main(["correct", str(tmp_path / "Atlas.mrc"), "--out", str(tmp_path / "out"),
                   "--dose-per-frame", "1"])
    assert status == exitcodes.SOME_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"motionwatch: {tmp_path / 'Atlas.mrc'}: a single image (1 frame), "
                   "not a movie"]
