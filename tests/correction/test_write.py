"""Atomic writers: results read back with mrcfile/json; a failed write leaves nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from correction.errors import ForeignOutputError
from correction.write import (atomic_write, json_writer, write_json_atomic, write_mrc_atomic,
                              write_output_set, written_by_motionwatch)


def test_mrc_image_round_trips_with_pixel_size_and_valid_header(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(64, 48)).astype(np.float32)
    path = write_mrc_atomic(tmp_path / "S.mrc", data, pixel_size_A=1.06)
    with mrcfile.open(path, permissive=False) as mrc:
        np.testing.assert_array_equal(mrc.data, data)
        assert mrc.voxel_size.x == pytest.approx(1.06)
        assert mrc.header.mode == 2
        assert mrc.header.dmean == pytest.approx(data.mean(), abs=1e-5)
        assert mrc.header.rms == pytest.approx(data.std(), rel=1e-5)
    assert mrcfile.validate(str(path), print_file=open(os.devnull, "w"))


def test_a_cropped_image_view_is_written_row_block_by_row_block_as_the_crop(tmp_path,
                                                                            monkeypatch):
    import correction.write as write_module

    # blocks of 7 rows of 70 float32: several blocks and a short last one
    monkeypatch.setattr(write_module, "_ROW_BLOCK_BYTES", 7 * 70 * 4)
    wide = np.random.default_rng(2).normal(3.0, 2.0, size=(45, 80)).astype(np.float32)
    crop = wide[:, :70]  # as the inverse FFT's padded rows are cropped to the frame
    assert not crop.flags.c_contiguous
    path = write_mrc_atomic(tmp_path / "S.mrc", crop, pixel_size_A=1.0)
    with mrcfile.open(path, permissive=False) as mrc:
        np.testing.assert_array_equal(mrc.data, crop)
        assert (mrc.header.dmin, mrc.header.dmax) == (crop.min(), crop.max())
        assert mrc.header.dmean == pytest.approx(crop.mean(dtype=np.float64), rel=1e-6)
        assert mrc.header.rms == pytest.approx(crop.std(dtype=np.float64), rel=1e-6)
    assert os.path.getsize(path) == 1024 + crop.size * 4


def test_mrc_stack_round_trips_with_its_sampling_in_z_and_the_axes_in_order(tmp_path):
    """A tilt-series stack: the z sampling (``cella.z / mz``) is the pixel size, whichever
    convention gives ``mz`` (IMOD: nz; MRC2014 image stack: 1), and columns, rows and sections
    are x, y, z (``mapc, mapr, maps`` = 1, 2, 3; IMOD reads another order transposed)."""
    data = np.arange(3 * 8 * 10, dtype=np.float64).reshape(3, 8, 10)
    path = write_mrc_atomic(tmp_path / "stack.mrcs", data, pixel_size_A=2.0,
                            labels=("source: movie_001.tif",))
    with mrcfile.open(path, permissive=False) as mrc:
        assert mrc.data.dtype == np.float32
        np.testing.assert_array_equal(mrc.data, data.astype(np.float32))
        assert mrc.header.nz == 3
        assert b"movie_001.tif" in mrc.header.label[1]
        voxel = mrc.voxel_size
        assert (float(voxel.x), float(voxel.y), float(voxel.z)) == pytest.approx((2, 2, 2))
        header = mrc.header
        assert (int(header.mapc), int(header.mapr), int(header.maps)) == (1, 2, 3)
    assert mrcfile.validate(str(path), print_file=open(os.devnull, "w"))


def test_unknown_pixel_size_is_written_as_zero(tmp_path):
    path = write_mrc_atomic(tmp_path / "S.mrc", np.ones((4, 4)), pixel_size_A=None)
    with mrcfile.open(path) as mrc:
        assert mrc.voxel_size.x == 0


def test_failure_mid_write_leaves_no_target_and_no_temp(tmp_path, monkeypatch):
    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_mrc_atomic(tmp_path / "S.mrc", np.ones((16, 16)), pixel_size_A=1.0)
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_leaves_the_old_target_untouched(tmp_path, monkeypatch):
    target = tmp_path / "S.motion.json"
    write_json_atomic(target, {"version": 1})
    before = target.read_bytes()

    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        write_json_atomic(target, {"version": 2})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S.motion.json"]


def test_temporary_file_is_a_dotfile_in_the_target_folder(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy_replace(src, dst):
        seen.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)
    write_json_atomic(tmp_path / "S.motion.json", {"a": 1})
    (src, dst), = seen
    assert os.path.dirname(src) == str(tmp_path)
    assert os.path.basename(src) == f".S.motion.json.tmp-{os.getpid()}"
    assert dst == str(tmp_path / "S.motion.json")


def test_json_round_trips_numpy_values(tmp_path):
    obj = {"frames": np.int64(10), "shifts": np.zeros((2, 2)), "pixel_size_A": np.float32(1.5)}
    path = write_json_atomic(tmp_path / "S.motion.json", obj)
    assert json.loads(path.read_text()) == {"frames": 10, "shifts": [[0.0, 0.0], [0.0, 0.0]],
                                            "pixel_size_A": 1.5}


def test_unserialisable_json_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "S.motion.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def _raw_movie(path, labels=("SerialEM: Digitized on Krios",)):
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.arange(3 * 8 * 8, dtype=np.int16).reshape(3, 8, 8))
        for label in labels:
            mrc.add_label(label)
    return path.read_bytes()


def test_an_output_never_replaces_a_raw_movie_of_its_name(tmp_path):
    """An output folder that is a frames folder (a typo, a link): the movie stays as it was,
    the error names it, and no temporary is left."""
    movie = tmp_path / "TS_01_001_-3.0.mrc"
    before = _raw_movie(movie)
    with pytest.raises(ForeignOutputError, match=r"TS_01_001_-3\.0\.mrc: an output's name, but "
                                                 r"not a file motionwatch wrote"):
        write_mrc_atomic(movie, np.ones((4, 4), np.float32), pixel_size_A=1.0)
    assert movie.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [movie.name]


def test_no_file_of_a_set_is_replaced_when_one_name_is_a_raw_movie(tmp_path):
    (tmp_path / "x.mrc").write_bytes(b"old record")  # not an MRC kind: replaced
    tiff = tmp_path / "x_DW.tif"
    tifffile.imwrite(tiff, np.zeros((4, 4), np.uint8), description="EPU fractions")
    with pytest.raises(ForeignOutputError, match="x_DW.tif"):
        write_output_set([(tmp_path / "x.json", json_writer({"a": 1})),
                          (tiff, lambda fh: fh.write(b"new"))])
    assert not (tmp_path / "x.json").exists()  # nothing of the set appeared
    assert tiff.read_bytes()[:2] in (b"II", b"MM")


@pytest.mark.parametrize("suffix", [".eer", ".dm4"])
def test_a_detector_file_kind_motionwatch_never_writes_is_never_replaced(tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(b"raw")
    with pytest.raises(ForeignOutputError):
        atomic_write(path, lambda fh: fh.write(b"new"))
    assert path.read_bytes() == b"raw"


def test_motionwatch_replaces_its_own_outputs_mrc_and_tiff(tmp_path):
    image = tmp_path / "S.mrc"
    write_mrc_atomic(image, np.zeros((4, 4), np.float32), pixel_size_A=1.0)
    write_mrc_atomic(image, np.ones((4, 4), np.float32), pixel_size_A=1.0)
    with mrcfile.open(image) as mrc:
        assert mrc.data.mean() == 1.0
    gain = tmp_path / "gain.tif"
    atomic_write(gain, lambda fh: tifffile.imwrite(fh, np.ones((4, 4), np.float32),
                                                    description="motionwatch: gain"))
    atomic_write(gain, lambda fh: tifffile.imwrite(fh, np.full((4, 4), 2, np.float32),
                                                    description="motionwatch: gain"))
    assert tifffile.imread(gain).mean() == 2.0
    assert written_by_motionwatch(image) and written_by_motionwatch(gain)
    _raw_movie(tmp_path / "other.mrc")
    assert not written_by_motionwatch(tmp_path / "other.mrc")


@pytest.mark.parametrize("other_thread", [False, True])
def test_a_stop_signal_during_the_renames_is_taken_after_the_whole_set_is_in_place(
        tmp_path, monkeypatch, other_thread):
    """A SIGTERM (a batch system's limit) between two renames stopped a set half renamed: new
    images beside the old record. Now it is taken once the set is complete, also while another
    thread (``correct``'s read-ahead) could receive it."""
    import signal
    import threading

    idle = threading.Event()
    if other_thread:
        threading.Thread(target=idle.wait, daemon=True).start()

    class Stop(Exception):
        pass

    def stop(signum, frame):
        raise Stop()

    previous = signal.signal(signal.SIGTERM, stop)
    real_replace = os.replace
    calls = []

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "replace", replace_then_signal)
    try:
        with pytest.raises(Stop):
            write_output_set([(tmp_path / f"{name}.json", json_writer({"v": 2}))
                              for name in ("a", "b", "record")])
    finally:
        signal.signal(signal.SIGTERM, previous)
        idle.set()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "record.json"]


def test_each_output_names_its_movies_folder_as_two_grids_have_the_same_movie_names(tmp_path):
    """The header said only ``motionwatch: TS_01_000_0.0.mrc``: grid 1's and grid 2's
    micrographs of a session could not be told apart by their headers."""
    from correction.params import AlignParams, CorrectionParams, DoseParams
    from correction.pipeline import correct_movie, movie_labels
    from correction.synthetic import render_movie

    syn = render_movie(np.random.default_rng(5), shape_yx=(96, 96), n_frames=4,
                       electrons_per_px_per_frame=1.0, gain=None, dtype=np.int16)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    labels = {}
    for grid in ("grid1", "grid2"):
        movie = tmp_path / grid / "TS_01_000_0.0.mrc"
        movie.parent.mkdir()
        with mrcfile.new(movie) as mrc:
            mrc.set_data(syn.frames)
            mrc.voxel_size = 1.1
        outputs = correct_movie(movie, tmp_path / "out" / grid, params).outputs
        for kind in ("sum", "dw", "even", "odd"):
            with mrcfile.open(outputs[kind], header_only=True) as mrc:
                header = [bytes(mrc.header.label[i]).decode().strip()
                          for i in range(int(mrc.header.nlabl))]
            assert header[1:] == list(movie_labels(movie))
            assert header[1] == "motionwatch: TS_01_000_0.0.mrc"
            assert header[2].startswith("from: ") and header[2].endswith(f"/{grid}")
        labels[grid] = header
    assert labels["grid1"] != labels["grid2"]
    deep = Path("/data") / ("session_" * 12) / "grid2" / "frames" / "TS_01_000_0.0.mrc"
    name, folder = movie_labels(deep)
    assert len(folder) == 80 and folder.endswith("/grid2/frames") and "..." in folder


def test_an_output_folder_removed_while_its_movie_is_corrected_is_not_made_again(
        tmp_path, monkeypatch):
    """It was made again before the outputs were written: a daemon whose output folder was
    moved away took the new, empty one for its own, remounted, and redid the movies done."""
    import shutil

    import correction.pipeline as pipeline
    from correction.params import AlignParams, CorrectionParams, DoseParams
    from correction.synthetic import render_movie

    syn = render_movie(np.random.default_rng(6), shape_yx=(96, 96), n_frames=4,
                       electrons_per_px_per_frame=1.0, gain=None, dtype=np.int16)
    movie, out = tmp_path / "m.mrc", tmp_path / "out"
    with mrcfile.new(movie) as mrc:
        mrc.set_data(syn.frames)
        mrc.voxel_size = 1.1
    names = pipeline.output_names

    def moved_away_meanwhile(stem: str):
        shutil.move(out, tmp_path / "out.moved")
        return names(stem)

    monkeypatch.setattr(pipeline, "output_names", moved_away_meanwhile)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    with pytest.raises(FileNotFoundError, match="output folder went away"):
        pipeline.correct_movie(movie, out, params)
    assert not out.exists()
