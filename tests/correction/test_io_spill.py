"""Decoded compressed movies over the budget go to an unnamed temporary file, not to memory:
the frames read back exactly, nothing is left on disk, resident memory does not grow with
the movie, and a full disk is an OSError with its errno."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import eer_writer  # tests/helpers (on sys.path via tests/conftest.py)
import mrcfile
import numpy as np
import pytest
import tifffile

import correction.io.spill as spill
import correction.io.tiff as tiff_module
from correction.io import read_movie
from correction.params import CorrectionParams, DoseParams, ReadParams
from correction.pipeline import correct_movie


def _lzw_tiff(path: Path, data: np.ndarray, rows_per_strip: int | None = None) -> Path:
    """Pages written one by one, LZW, as SerialEM writes K3 movies (IMOD: many strips)."""
    with tifffile.TiffWriter(path) as tif:
        for frame in data:
            tif.write(frame, compression="lzw", contiguous=False, rowsperstrip=rows_per_strip,
                      resolution=(1e8 / 1.1, 1e8 / 1.1), resolutionunit="CENTIMETER")
    return path


def _counts(shape, seed=5, rate=0.8):
    return np.random.default_rng(seed).poisson(rate, size=shape).astype(np.uint8)


def test_a_sink_under_the_budget_is_an_array_and_over_it_a_read_only_map_of_no_named_file(
        tmp_path):
    data = _counts((5, 16, 24))
    small = spill.FrameSink(data.shape, np.uint8, spill_dir=tmp_path, budget_bytes=data.nbytes)
    large = spill.FrameSink(data.shape, np.uint8, spill_dir=tmp_path,
                            budget_bytes=data.nbytes - 1)
    assert not small.spilled and large.spilled
    for sink in (small, large):
        for i0, i1 in ((0, 2), (2, 5)):
            block = sink.target(i0, i1)
            block[...] = data[i0:i1]
            sink.commit(i0, block)
    kept, mapped = small.frames(), large.frames()
    assert not isinstance(kept, np.memmap) and isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(kept, data)
    np.testing.assert_array_equal(mapped, data)
    assert not mapped.flags.writeable
    assert os.listdir(tmp_path) == []  # the spill file has no name: nothing to clean up


def test_a_zeroed_sink_gives_zeroed_targets_whether_spilled_or_not(tmp_path):
    for budget in (1 << 20, 0):
        sink = spill.FrameSink((3, 8, 8), np.uint16, spill_dir=tmp_path, budget_bytes=budget,
                               zeroed=True)
        assert not sink.target(1, 3).any()
        sink.close()


def test_a_spilled_block_is_written_while_the_next_is_decoded_with_one_write_in_flight(
        tmp_path, monkeypatch):
    """The writer thread takes a committed block and the decoder goes on with the next; the
    next commit waits until the write in flight is done (at most two blocks held)."""
    data = _counts((4, 16, 24))
    sink = spill.FrameSink(data.shape, np.uint8, spill_dir=tmp_path, budget_bytes=0)
    writing, release = threading.Event(), threading.Event()
    written = []
    real_pwrite = os.pwrite

    def held_write(fd, buffer, offset):
        writing.set()
        assert release.wait(10)
        written.append(offset)
        return real_pwrite(fd, buffer, offset)

    monkeypatch.setattr(spill.os, "pwrite", held_write)
    first = sink.target(0, 2)
    first[...] = data[0:2]
    sink.commit(0, first)
    assert writing.wait(10)  # the first block is being written ...
    second = sink.target(2, 4)
    second[...] = data[2:4]  # ... while the next one is decoded
    assert written == []
    committer = threading.Thread(target=sink.commit, args=(2, second))
    committer.start()
    committer.join(0.2)
    assert committer.is_alive()  # the second commit waits for the write in flight
    release.set()
    committer.join(10)
    assert not committer.is_alive()
    np.testing.assert_array_equal(sink.frames(), data)
    assert sorted(written) == [0, 2 * 16 * 24]


def test_a_corrupt_page_of_a_spilled_tiff_names_its_page_and_leaves_no_file(tmp_path,
                                                                             monkeypatch):
    """Blocks of two pages, the third block's first page corrupt: the blocks before it are
    written (or being written) when the decoder fails; the error names the page and the
    spill file is gone."""
    from correction.errors import TruncatedMovieError

    path = _lzw_tiff(tmp_path / "bad.tif", _counts((6, 40, 64)), rows_per_strip=2)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[4].dataoffsets[3], tif.pages[4].databytecounts[3]
    raw = bytearray(path.read_bytes())
    raw[offset:offset + count] = b"\xff" * count  # not an LZW stream
    path.write_bytes(bytes(raw))
    monkeypatch.setattr(spill, "SPILL_OVER_BYTES", 1024)
    monkeypatch.setattr(tiff_module, "_SPILL_BLOCK_BYTES", 2 * 40 * 64)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TruncatedMovieError, match=r"bad\.tif: .*\(page 4"):
        read_movie(path, spill_dir=out)
    assert os.listdir(out) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("spill-writer")]


@pytest.mark.parametrize("n_pages, block_bytes", [(7, 2 * 40 * 64), (7, 3 * 40 * 64), (1, 1)])
def test_a_spilled_tiff_reads_back_exactly_in_blocks_of_pages(tmp_path, monkeypatch, n_pages,
                                                             block_bytes):
    data = _counts((n_pages, 40, 64))
    path = _lzw_tiff(tmp_path / "k3.tif", data, rows_per_strip=3)
    monkeypatch.setattr(spill, "SPILL_OVER_BYTES", 1024)
    monkeypatch.setattr(tiff_module, "_SPILL_BLOCK_BYTES", block_bytes)
    out = tmp_path / "out"
    out.mkdir()
    movie = read_movie(path, spill_dir=out)
    assert isinstance(movie.frames, np.memmap)
    assert movie.header["decoded_to"] == "temporary file"
    np.testing.assert_array_equal(movie.frames, data[:, ::-1])  # MRC row order, block by block
    assert movie.pixel_size_A == pytest.approx(1.1, rel=1e-6)
    assert os.listdir(out) == []
    in_memory = read_movie(path)
    assert in_memory.header["decoded_to"] == "memory"
    assert not isinstance(in_memory.frames, np.memmap)


def test_a_spilled_eer_movie_has_the_same_fractions_as_one_decoded_in_memory(tmp_path,
                                                                            monkeypatch):
    raw = np.random.default_rng(4).random((30, 48, 80)) < 0.05
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=(48, 80), metadata=[
        ("numberOfFrames", None, "30"), ("sensorPixelSize.width", "m", "8.3e-11"),
        ("totalDose", "e/px", "1.5")])
    params = ReadParams(eer_group_frames=7)
    in_memory = read_movie(path, params=params)
    monkeypatch.setattr(spill, "SPILL_OVER_BYTES", 1024)
    spilled = read_movie(path, params=params, spill_dir=tmp_path)
    assert isinstance(spilled.frames, np.memmap) and spilled.header["decoded_to"] == \
        "temporary file"
    assert spilled.raw_frames_per_frame == in_memory.raw_frames_per_frame == (7, 7, 7, 9)
    np.testing.assert_array_equal(spilled.frames, in_memory.frames)


def test_a_full_disk_while_spilling_is_an_oserror_with_its_errno(tmp_path, monkeypatch):
    path = _lzw_tiff(tmp_path / "k3.tif", _counts((4, 32, 32)))
    monkeypatch.setattr(spill, "SPILL_OVER_BYTES", 1024)

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spill.os, "pwrite", full)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError) as caught:
        read_movie(path, spill_dir=out)
    assert caught.value.errno == errno.ENOSPC
    assert os.listdir(out) == []


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_decoding_a_large_tiff_with_a_spill_folder_does_not_hold_the_movie_in_memory(tmp_path):
    """A 240 MB (decoded) LZW TIFF, read in a fresh process: with a spill folder, a 32 MB
    budget and 16 MB blocks of pages, the peak resident memory grows by far less than the
    movie; decoded in memory it grows by all of it (the check that the measurement can
    fail)."""
    data = np.zeros((30, 2048, 4096), np.uint8)
    data[:, ::97, ::89] = 3  # compresses to almost nothing: the file is small, the movie not
    path = _lzw_tiff(tmp_path / "big.tif", data, rows_per_strip=4)
    del data
    script = textwrap.dedent(f"""
        import sys
        import correction.io.spill as spill
        import correction.io.tiff as tiff_module
        from correction.io import read_movie
        def peak_kB():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM"):
                    return int(line.split()[1])
        spill.SPILL_OVER_BYTES = 32 << 20
        tiff_module._SPILL_BLOCK_BYTES = 16 << 20
        before = peak_kB()
        movie = read_movie({str(path)!r}, spill_dir={str(tmp_path)!r} if sys.argv[1] == "spill"
                           else None)
        total = int(movie.frames[::7].sum(dtype="int64"))
        print((peak_kB() - before) // 1024, total)
    """)
    grown = {}
    for mode in ("spill", "memory"):
        run = subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                             text=True, check=True)
        grown[mode], total = (int(v) for v in run.stdout.split())
        # frames 0, 7 ... 28 read back: 5 frames of 22 x 47 pixels of 3 counts
        assert total == 5 * len(range(0, 2048, 97)) * len(range(0, 4096, 89)) * 3
    assert grown["memory"] > 200, grown
    assert grown["spill"] < 100, grown


def test_correct_movie_spills_a_large_tiff_to_the_output_folder_and_gives_the_same_images(
        tmp_path, monkeypatch):
    data = _counts((6, 96, 128), rate=1.5)
    path = _lzw_tiff(tmp_path / "k3.tif", data, rows_per_strip=5)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    kept = correct_movie(path, tmp_path / "memory", params)
    monkeypatch.setattr(spill, "SPILL_OVER_BYTES", 1024)
    spilled = correct_movie(path, tmp_path / "spilled", params)
    for kind in ("sum", "dw", "even", "odd"):
        with mrcfile.open(kept.outputs[kind]) as a, mrcfile.open(spilled.outputs[kind]) as b:
            np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(kept.shifts_yx_px, spilled.shifts_yx_px)
    assert sorted(p.name for p in (tmp_path / "spilled").iterdir()) == \
        sorted(p.name for p in (tmp_path / "memory").iterdir())
