"""A movie's outputs appear as a complete set or not at all (faults issue, item 5).

A full disk used to leave ``S.mrc`` and ``S_DW.mrc`` behind without the other outputs: each file
was renamed into place as soon as it was written. Now all five are written under hidden
temporaries, and renamed only when every one is written, the motion record last.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import threading
import subprocess
import uuid

import mrcfile
import numpy as np
import pytest

import correction.write as write_module
from correction.params import AlignParams, CorrectionParams, DoseParams
from correction.pipeline import correct_movie
from correction.synthetic import render_movie

PIXEL_A = 1.3
PARAMS = CorrectionParams(align=AlignParams(patches_x=1, patches_y=1),
                          dose=DoseParams(dose_per_frame_e_A2=1.0))
OUTPUT_NAMES = {"mov.mrc", "mov_DW.mrc", "mov_EVN.mrc", "mov_ODD.mrc", "mov.motion.json",
                "mov.thumb.png", "mov.spectrum.png", "mov.drift.png"}


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    """A 256 x 256 x 4-frame MRC movie (each output image is 257 KiB)."""
    folder = tmp_path_factory.mktemp("movie")
    rng = np.random.default_rng(5)
    shifts = np.stack([np.linspace(-1, 1, 4), np.linspace(1, -1, 4)], 1)
    syn = render_movie(rng, shape_yx=(256, 256), n_frames=4, shifts_yx_px=shifts,
                       electrons_per_px_per_frame=2.0, pixel_size_A=PIXEL_A, gain=None,
                       n_hot_pixels=0)
    path = folder / "mov.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(syn.frames)
        mrc.voxel_size = PIXEL_A
    return path


class _FullDiskAt:
    """An ``open`` for the writer module whose n-th file opened for writing fails with ENOSPC
    on its first write, as a write past the end of a full file system does."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.opened: list[str] = []

    def __call__(self, file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        fh = builtins.open(file, mode, *args, **kwargs)
        if "w" not in mode:
            return fh
        self.opened.append(os.fspath(file))
        if len(self.opened) != self.n:
            return fh

        class Full:
            def __enter__(self):  # noqa: ANN204
                return self

            def __exit__(self, *exc: object) -> None:
                fh.close()

            def write(self, data: bytes) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(file))

            def __getattr__(self, name: str):  # noqa: ANN204
                return getattr(fh, name)

        return Full()


def test_a_full_disk_at_the_third_output_leaves_no_output_of_the_movie_and_raises_enospc(
        movie, tmp_path, monkeypatch):
    out = tmp_path / "out"
    full = _FullDiskAt(3)
    monkeypatch.setattr(write_module, "open", full, raising=False)
    # one writing thread, so "the third file" is well defined (several threads: see
    # test_the_files_of_a_set_are_written_at_the_same_time_and_a_failure_drops_those_not_begun)
    monkeypatch.setattr(write_module, "_WRITE_THREADS", 1)
    with pytest.raises(OSError) as info:
        correct_movie(movie, out, PARAMS)
    assert info.value.errno == errno.ENOSPC  # the daemon classifies it as environmental
    assert len(full.opened) == 3  # nothing is written after the disk is full
    assert sorted(p.name for p in out.iterdir()) == []  # no image, no record, no temporary


def test_the_files_of_a_set_are_written_at_the_same_time_and_a_failure_drops_those_not_begun(
        tmp_path):
    from correction.write import write_output_set

    together = threading.Barrier(2, timeout=5)  # broken unless "a" and "b" are written at once
    release = threading.Event()  # the writes in progress end only after the failure
    begun: list[str] = []

    def writer(name: str, *, fail: bool = False, meet: bool = False):
        def write(fh) -> None:  # noqa: ANN001
            begun.append(name)
            if fail:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
            if meet:
                together.wait()
            release.wait(10)
            fh.write(name.encode())
        return write

    files = [(tmp_path / "a", writer("a", meet=True)), (tmp_path / "b", writer("b", meet=True)),
             (tmp_path / "c", writer("c", fail=True))]
    files += [(tmp_path / f"later{i}", writer(f"later{i}")) for i in range(20)]
    threading.Timer(0.5, release.set).start()
    with pytest.raises(OSError) as info:
        write_output_set(files)
    assert info.value.errno == errno.ENOSPC
    assert {"a", "b", "c"} <= set(begun) and len(begun) < len(files)  # later ones dropped
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_every_output_is_written_before_any_is_renamed_into_place_and_the_record_is_renamed_last(
        movie, tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_open, real_replace = builtins.open, os.replace

    def spy_open(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if "w" in mode:
            events.append(("write", os.path.basename(file)))
        return real_open(file, mode, *args, **kwargs)

    def spy_replace(src, dst):  # noqa: ANN001
        events.append(("rename", os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(write_module, "open", spy_open, raising=False)
    monkeypatch.setattr(write_module.os, "replace", spy_replace)
    result = correct_movie(movie, tmp_path / "out", PARAMS)
    kinds = [kind for kind, _ in events]
    n = len(OUTPUT_NAMES)  # four images, three quick-look pictures, the record
    assert kinds == ["write"] * n + ["rename"] * n
    assert all(name.startswith(".") and ".tmp-" in name for kind, name in events
               if kind == "write")  # hidden temporaries, which the daemon's cleanup removes
    assert events[-1] == ("rename", "mov.motion.json")
    assert {p.name for p in (tmp_path / "out").iterdir()} == OUTPUT_NAMES
    assert json.loads(result.outputs["motion"].read_text())["outputs"]["sum"] == "mov.mrc"


def test_a_failed_write_in_a_set_removes_every_temporary_and_keeps_the_previous_files(
        tmp_path, monkeypatch):
    from correction.write import write_output_set

    (tmp_path / "a.bin").write_bytes(b"old a")
    full = _FullDiskAt(2)
    monkeypatch.setattr(write_module, "open", full, raising=False)
    with pytest.raises(OSError) as info:
        write_output_set([(tmp_path / "a.bin", lambda fh: fh.write(b"new a")),
                          (tmp_path / "b.bin", lambda fh: fh.write(b"new b")),
                          (tmp_path / "c.json", lambda fh: fh.write(b"{}"))])
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    assert (tmp_path / "a.bin").read_bytes() == b"old a"


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 600 KiB tmpfs (room for two output images of 257 KiB, not four); skips when this
    process may not mount file systems (not root, or no CAP_SYS_ADMIN in a container)."""
    folder = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mount not permitted here: {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_really_full_tmpfs_leaves_no_output_of_the_movie_and_raises_enospc(movie, tiny_tmpfs):
    with pytest.raises(OSError) as info:
        correct_movie(movie, tiny_tmpfs, PARAMS)
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == []


def test_an_output_set_writes_each_file_as_it_is_added_and_shows_none_until_committed(tmp_path):
    from correction.write import OutputSet

    writing = threading.Event()

    def image(fh) -> None:  # noqa: ANN001
        writing.set()
        fh.write(b"image")

    with OutputSet() as output_set:
        output_set.add(tmp_path / "S.mrc", image)
        assert writing.wait(10)  # begun before the caller has added the rest (pictures, record)
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []
        output_set.add(tmp_path / "S.motion.json", lambda fh: fh.write(b"{}"))
        assert output_set.commit() == [tmp_path / "S.mrc", tmp_path / "S.motion.json"]
    assert (tmp_path / "S.mrc").read_bytes() == b"image"


def test_an_output_set_left_without_commit_leaves_no_file_and_no_temporary(tmp_path):
    from correction.write import OutputSet

    with pytest.raises(ZeroDivisionError), OutputSet() as output_set:
        output_set.add(tmp_path / "S.mrc", lambda fh: fh.write(b"image"))
        1 / 0  # e.g. drawing a picture failed in a way nobody caught
    assert list(tmp_path.iterdir()) == []


def test_two_threads_writing_movies_of_one_name_into_one_folder_leave_one_whole_set(tmp_path):
    """Threads share a pid, so two sets of one name wrote one temporary: one thread failed
    (FileNotFoundError at its rename) and the set left mixed one movie's sum with the other's
    record. Each set now has its own temporaries and renames whole: the last one wins."""
    from correction.pipeline import prepare_movie

    prepared = []
    for grid, seed in (("Grid1", 1), ("Grid2", 2)):
        (tmp_path / grid).mkdir()
        syn = render_movie(np.random.default_rng(seed), shape_yx=(384, 384), n_frames=6,
                           gain=None, n_hot_pixels=0)
        with mrcfile.new(tmp_path / grid / "FoilHole_1_Data_1.mrc") as mrc:
            mrc.set_data(syn.frames)
            mrc.voxel_size = PIXEL_A
        prepared.append(prepare_movie(tmp_path / grid / "FoilHole_1_Data_1.mrc",
                                      tmp_path / "out", PARAMS, workers=1))
    sums = {str(p.movie_path): np.array(p.images.sum) for p in prepared}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def write(p) -> None:
        start.wait()
        try:
            p.write()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in prepared]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    record = json.loads((tmp_path / "out" / "FoilHole_1_Data_1.motion.json").read_text())
    on_disk = mrcfile.read(tmp_path / "out" / "FoilHole_1_Data_1.mrc")
    assert np.array_equal(on_disk, sums[record["movie"]])  # the sum of the movie it names
    assert [p.name for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name] == []
