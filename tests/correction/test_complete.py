"""check_complete: cheap format-level completeness for the daemon's validate stage."""

from __future__ import annotations

import struct

import mrcfile
import numpy as np
import pytest
import tifffile

from eer_writer import write_eer  # tests/helpers

from correction.io import check_complete, read_movie


def _mrc(path, nz=10, shape=(32, 32)):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.random.default_rng(1).poisson(1.0, (nz, *shape)).astype(np.int16))
    return path


def test_a_full_size_mrc_whose_last_frames_are_still_zeros_is_not_complete(tmp_path):
    """A copy that gives the file its size first (Windows over SMB) and fills it from the
    start: the header and the size are right long before the frames are; a movie's frames
    have counts in their middle and at their end."""
    path = _mrc(tmp_path / "a.mrc", shape=(64, 64))
    data = bytearray(path.read_bytes())
    filled_to = 1024 + 4 * 64 * 64 * 2 + 100  # 4 frames and a bit of 10
    data[filled_to:] = bytes(len(data) - filled_to)
    path.write_bytes(bytes(data))
    result = check_complete(path)
    assert not result.complete and result.zero_filled and result.n_frames == 10
    assert "last frame ends in zeros" in result.reason
    # stalled in the second half of the last frame: its middle has counts, its end not yet
    data = bytearray(_mrc(tmp_path / "b.mrc", shape=(64, 64)).read_bytes())
    filled_to = len(data) - 64 * 64 * 2 // 4 - 10  # its last quarter and a little
    data[filled_to:] = bytes(len(data) - filled_to)
    (tmp_path / "b.mrc").write_bytes(bytes(data))
    assert check_complete(tmp_path / "b.mrc").zero_filled
    # a detector's dead rows at the end of every frame are no copy in progress; nor is a
    # single image whose lower rows are blank (an atlas montage)
    with mrcfile.new(tmp_path / "dead_rows.mrc") as mrc:
        frames = np.random.default_rng(2).poisson(1.0, (10, 64, 64)).astype(np.int16)
        frames[:, -16:] = 0  # the last quarter of each frame
        mrc.set_data(frames)
    assert check_complete(tmp_path / "dead_rows.mrc").complete
    with mrcfile.new(tmp_path / "image.mrc") as mrc:
        image = np.random.default_rng(3).poisson(1.0, (1, 64, 64)).astype(np.int16)
        image[:, 20:] = 0
        mrc.set_data(image)
    assert check_complete(tmp_path / "image.mrc").complete


@pytest.mark.parametrize("mode, dtype, counts_per_px, left", [
    (1, np.int16, 1.0, 60),  # 30 samples of the last frame not written
    (1, np.int16, 1.0, 4000),  # < 64 KiB left: the window's end was never all zeros
    (6, np.uint16, 0.1, 1200),
    (0, np.int8, 1.0, 40),
    (2, np.float32, 1.0, 200),
])
def test_a_pre_sized_mrc_stalled_within_its_last_64_KiB_is_not_complete(tmp_path, mode, dtype,
                                                                          counts_per_px, left):
    """A copy stalled with less than the 64-KiB window left was corrected from the partial
    file, then again once filled: the zero samples ending it are too many for the counts
    the first frame has there."""
    frames = np.random.default_rng(4).poisson(counts_per_px, (6, 512, 512)).astype(dtype)
    with mrcfile.new(tmp_path / "m.mrc") as mrc:
        mrc.set_data(frames)
        assert int(mrc.header.mode) == mode
    complete = (tmp_path / "m.mrc").read_bytes()
    assert check_complete(tmp_path / "m.mrc").complete
    _pre_sized(tmp_path / "m.mrc", complete, len(complete) - left)
    stalled = check_complete(tmp_path / "m.mrc")
    assert not stalled.complete and stalled.zero_filled


@pytest.mark.parametrize("counts_per_px", [0.01, 0.05, 0.3])
def test_low_dose_movies_and_dead_pixels_ending_in_zero_samples_are_complete(tmp_path,
                                                                             counts_per_px):
    """Zero samples end a low-dose frame by chance (at 0.01 e/px, 100 on average), and a
    detector's dead last columns end every frame: 200 complete movies of each, none held."""
    rng = np.random.default_rng(5)
    held = []
    for i in range(200):
        frames = rng.poisson(counts_per_px, (3, 64, 256)).astype(np.uint8)
        if i % 2:
            frames[:, :, -40:] = 0  # dead last columns, in every frame
        path = tmp_path / f"m{i}.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(frames)
        if not check_complete(path).complete:
            held.append(i)
    assert held == []


def test_mrc_of_exactly_the_header_size_is_complete(tmp_path):
    result = check_complete(_mrc(tmp_path / "a.mrc"))
    assert result.complete and result.n_frames == 10


def test_mrc_being_written_by_serialem_is_incomplete_with_frames_so_far(tmp_path):
    # SerialEM writes nz = the expected count first: 7 of 10 frames on disk so far.
    path = _mrc(tmp_path / "a.mrc")
    path.write_bytes(path.read_bytes()[:1024 + 7 * 32 * 32 * 2 + 100])
    result = check_complete(path)
    assert not result.complete
    assert result.n_frames == 7
    assert result.reason.startswith(f"file is {1024 + 7 * 2048 + 100} bytes, header needs "
                                    f"{1024 + 10 * 2048} for 10 frames")


def test_mrc_longer_than_its_header_is_not_complete(tmp_path):
    path = _mrc(tmp_path / "a.mrc")
    with open(path, "ab") as fh:
        fh.write(b"\x00" * 2048)
    result = check_complete(path)
    assert not result.complete and "more than" in result.reason


def test_tiff_complete_cut_or_with_a_last_lzw_page_that_does_not_decode(tmp_path):
    """Cut: fewer frames. Full length, its chain of pages intact, but its last page's data
    damaged: not complete either (only decoding that page tells)."""
    data = np.random.default_rng(0).integers(0, 4, (12, 64, 64)).astype(np.uint8)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, data, compression="lzw")
    ok = check_complete(path)
    assert ok.complete and ok.n_frames == 12
    raw = path.read_bytes()
    _damage_last_page(path)
    damaged = check_complete(path)
    assert not damaged.complete and "last page (11)" in damaged.reason
    path.write_bytes(raw[:int(len(raw) * 0.7)])
    cut = check_complete(path)
    assert not cut.complete and cut.n_frames < 12


def test_a_whole_tiff_with_a_damaged_page_directory_is_not_said_to_be_cut(tmp_path):
    """A page directory inside a whole file broken (its tag count overwritten): the reason
    said "file cut at byte <its size>", and an operator looked for a truncated copy. A file
    that does end before the next directory is still said to be cut."""
    import struct

    data = np.random.default_rng(4).integers(1, 5, (6, 64, 64)).astype(np.uint8)
    whole = _libtiff_layout(data)
    path = tmp_path / "m.tif"
    path.write_bytes(whole)
    with tifffile.TiffFile(path) as tif:
        fifth = tif.pages[4].offset
    damaged = bytearray(whole)
    struct.pack_into("<H", damaged, fifth, 0xFFFF)  # 65535 tags: runs past the end
    path.write_bytes(bytes(damaged))
    result = check_complete(path)
    assert not result.complete and result.n_frames == 4
    assert result.reason == (f"4 pages present; the next page's IFD, at byte {fifth} of the "
                             f"file's {len(whole)}, is not a whole IFD (cut off while being "
                             "written, or a damaged file)")
    path.write_bytes(whole[:fifth])  # cut just before the fifth page's directory
    cut = check_complete(path)
    assert cut.reason == (f"file cut at byte {fifth}: 4 pages present, the next page's IFD "
                          f"(at byte {fifth}) lies past its end")


def _pre_sized(path, complete: bytes, written: int) -> None:
    """A copy that sized the file first (Windows over SMB) and has written ``written`` bytes."""
    path.write_bytes(complete[:written] + bytes(len(complete) - written))


def _libtiff_layout(frames: np.ndarray) -> bytes:
    """A little-endian TIFF of uint8 ``frames`` laid out as libtiff (SerialEM, IMOD) writes
    page by page: each page's data, then its IFD (one strip, uncompressed)."""
    import struct

    n, ny, nx = frames.shape
    out = bytearray(b"II*\0" + bytes(4))
    link = 4  # where the offset of the next IFD goes
    for frame in frames:
        data_at = len(out)
        out += frame.tobytes()
        if len(out) % 2:
            out += b"\0"
        ifd_at = len(out)
        struct.pack_into("<I", out, link, ifd_at)
        tags = [(256, 4, nx), (257, 4, ny), (258, 3, 8), (259, 3, 1), (262, 3, 1),
                (273, 4, data_at), (277, 3, 1), (278, 4, ny), (279, 4, ny * nx)]
        out += struct.pack("<H", len(tags))
        for tag, kind, value in tags:
            out += struct.pack("<HHII", tag, kind, 1, value)
        link = len(out)
        out += bytes(4)
    return bytes(out)


@pytest.mark.parametrize("layout", ["libtiff", "tifffile", "tifffile-lzw"])
def test_a_pre_sized_tiff_filled_up_to_its_last_page_is_not_complete(tmp_path, layout):
    """The zeros not written yet read as the chain's end (a zero next-IFD pointer, in an IFD
    written part-way) and as the last page's data: the movie was corrected with frames
    missing (about 4 % of the points a copy could stall at, in libtiff's layout)."""
    data = np.random.default_rng(1).integers(1, 5, (8, 256, 256)).astype(np.uint8)
    path = tmp_path / "m.tif"
    if layout == "libtiff":
        path.write_bytes(_libtiff_layout(data))
    else:
        tifffile.imwrite(path, data, compression="lzw" if layout.endswith("lzw") else None)
    complete = path.read_bytes()
    assert check_complete(path).complete
    zero_filled = []
    for written in range(len(complete) // 2, len(complete) - 4096, len(complete) // 500):
        _pre_sized(path, complete, written)
        filling = check_complete(path)
        assert not filling.complete, written
        if filling.zero_filled:
            zero_filled.append(written)
            assert "ends in zeros" in filling.reason
    if layout == "libtiff":
        assert zero_filled  # the points the page chain and the last page took for complete


@pytest.mark.parametrize("compression", [None, "lzw"])
def test_a_pre_sized_tiff_stalled_among_its_trailing_page_directories_is_not_complete(
        tmp_path, compression):
    """tifffile writes every page's IFD after all the image data: a copy that sized the file
    first and stalled among them (its last 4 KiB not all zeros) left the chain cut at a zero
    link, and the movie was taken complete with the pages linked so far (2-7 of 8). Once
    all 8 pages are linked, the pixels are all there, whatever is left to write."""
    data = np.random.default_rng(1).integers(1, 5, (8, 128, 128)).astype(np.uint8)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, data, compression=compression)
    complete = path.read_bytes()
    taken_short = []
    for written in range(len(complete) - 2048, len(complete), 3):
        _pre_sized(path, complete, written)
        filling = check_complete(path)
        if filling.complete and filling.n_frames != 8:
            taken_short.append((written, filling.n_frames))
    assert taken_short == []


def _ifd_first_tiff(frames: np.ndarray) -> bytes:
    """uint8 TIFF laid out IFD first, then that page's data (one strip): the file ENDS in the
    last page's data, so dead last rows make a zero tail in a complete file."""
    n, ny, nx = frames.shape
    out = bytearray(b"II*\0" + bytes(4))
    link = 4
    tags_n = 9
    for frame in frames:
        ifd_at = len(out)
        struct.pack_into("<I", out, link, ifd_at)
        data_at = ifd_at + 2 + tags_n * 12 + 4
        tags = [(256, 4, nx), (257, 4, ny), (258, 3, 8), (259, 3, 1), (262, 3, 1),
                (273, 4, data_at), (277, 3, 1), (278, 4, ny), (279, 4, ny * nx)]
        out += struct.pack("<H", tags_n)
        for tag, kind, value in tags:
            out += struct.pack("<HHII", tag, kind, 1, value)
        link = len(out)
        out += bytes(4)
        out += frame.tobytes()
    return bytes(out)


def test_a_tiff_whose_frames_end_in_dead_rows_is_complete(tmp_path):
    """Frames whose last rows are dead end in zeros in every page, the first too. Written as
    SerialEM's library writes a page (its directory, then its data), the file ends in the last
    page's zeros; tifffile puts the directories after the data, where the tail is never
    zeros."""
    data = np.random.default_rng(2).integers(1, 5, (6, 128, 64)).astype(np.uint8)
    data[:, -100:] = 0
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, data)
    assert check_complete(path).complete
    path.write_bytes(_ifd_first_tiff(data))
    assert path.read_bytes().endswith(bytes(100 * 64))
    assert check_complete(path).complete
    np.testing.assert_array_equal(read_movie(path).frames, data[:, ::-1])


def test_a_pre_sized_eer_filled_up_to_its_last_frame_is_not_complete(tmp_path):
    from eer_writer import write_eer

    rng = np.random.default_rng(3)
    raw = [(rng.random((64, 64)) < 0.3).astype(np.uint8) for _ in range(40)]
    path = write_eer(tmp_path / "m.eer", raw, shape_yx=(64, 64))
    complete = path.read_bytes()
    assert check_complete(path).complete
    for written in range(len(complete) // 2, len(complete) - 4096, 23):
        _pre_sized(path, complete, written)
        assert not check_complete(path).complete, written


def test_a_reader_failing_on_a_half_written_structure_is_incomplete_not_an_error(
        tmp_path, monkeypatch):
    """tifffile raises TypeError or IndexError on a zeroed tag: the movie was rejected at
    once (quarantined) instead of waiting for the copy."""
    import correction.io.tiff as tiff

    data = np.zeros((4, 32, 32), np.uint8)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, data)

    def zeroed_tag(*args, **kwargs):
        raise TypeError("int() argument must be a string, not 'tuple'")

    monkeypatch.setattr(tiff, "scan_tiff", zeroed_tag)
    result = check_complete(path)
    assert not result.complete and not result.not_a_movie
    assert "does not read yet: TypeError" in result.reason


def test_missing_or_empty_files_are_incomplete_not_errors(tmp_path):
    missing = check_complete(tmp_path / "none.mrc")
    assert not missing.complete and "no such file" in missing.reason
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    assert not check_complete(empty).complete


@pytest.mark.parametrize("name, content", [
    ("junk.tif", b"this is a text file, not a TIFF\n" * 8),
    ("junk.mrc", bytes(range(256)) * 8),                  # a full header with an absurd mode
    ("junk.eer", b"\x00\x01garbage" * 50),
    ("notes.dm4", b"DM4 reference, not a movie" * 4),
])
def test_a_garbage_file_says_not_a_movie_distinctly_from_incomplete(tmp_path, name, content):
    """Faults issue item 13: garbage used to wait 120 s as 'incomplete'; the caller can now
    reject it once settled."""
    path = tmp_path / name
    path.write_bytes(content)
    result = check_complete(path)
    assert not result.complete and result.not_a_movie
    assert result.reason.startswith("not a movie: ")


@pytest.mark.parametrize("name", ["m.mrc", "m.tif", "m.eer"])
@pytest.mark.parametrize("written", [0, 2, 5])
def test_a_pre_sized_copy_stalled_in_its_first_bytes_is_incomplete_not_garbage(tmp_path, name,
                                                                             written):
    """A copy that sized the file first and stalled before its header (its first bytes still
    zeros) was "not a movie" (nx=0, or "file starts with b'\\x00\\x00'"): quarantined at
    once, said on the feed as a failure, though it was corrected once filled."""
    frames = np.random.default_rng(1).poisson(1.0, (4, 128, 128))
    path = tmp_path / name
    if name.endswith(".mrc"):
        with mrcfile.new(path) as mrc:
            mrc.set_data(frames.astype(np.int16))
    elif name.endswith(".tif"):
        tifffile.imwrite(path, frames.astype(np.uint8), compression="lzw")
    else:
        write_eer(path, list(frames > 1), shape_yx=(128, 128))
    complete = path.read_bytes()
    if written == 0:
        _pre_sized(path, complete, 0)
        assert check_complete(path).reason.startswith("its header is zeros")
    _pre_sized(path, complete, written)
    stalled = check_complete(path)
    assert not stalled.complete and not stalled.not_a_movie, stalled.reason


@pytest.mark.parametrize("content", [b"", b"\x00" * 100])
def test_an_empty_or_header_short_mrc_is_incomplete_not_garbage(tmp_path, content):
    path = tmp_path / "being_written.mrc"
    path.write_bytes(content)
    result = check_complete(path)
    assert not result.complete and not result.not_a_movie


def test_a_movie_the_reader_may_not_open_is_unreadable_not_incomplete_nor_bad():
    """Permission denied (a share's ACL, a umask) is the access's fault, not the movie's: the
    daemon waits for it to read instead of quarantining it as damaged. Before, such a movie
    was taken as incomplete, quarantined and never looked at again. Checked by a process whose
    user the file's mode shuts out (as root, a forked child that becomes nobody: no
    interpreter is started, so none needs to be readable by nobody)."""
    import json
    import os
    import select
    import shutil
    import signal
    import tempfile
    import traceback
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="mw-locked-"))  # pytest's folders are 0700
    read_end = write_end = -1
    pid = 0
    try:
        folder.chmod(0o755)
        movie = _mrc(folder / "locked.mrc")
        movie.chmod(0o000)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: become nobody (when root), check, report, exit at once
            try:
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                r = check_complete(movie)
                report = [r.complete, r.unreadable, r.not_a_movie, r.reason]
            except BaseException:  # noqa: BLE001 - the parent reports it
                report = ["error", traceback.format_exc()]
            os.write(write_end, json.dumps(report).encode())
            os._exit(0)
        os.close(write_end)
        write_end = -1
        ready, _, _ = select.select([read_end], [], [], 60)
        assert ready, "the checking process sent nothing in 60 s"
        report = json.loads(os.read(read_end, 1 << 16))
    finally:
        if pid > 0:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
    assert report[0] != "error", report[1]
    complete, unreadable, not_a_movie, reason = report
    assert (complete, unreadable, not_a_movie) == (False, True, False), reason
    assert reason == "cannot read: Permission denied"


def _damage_last_page(path) -> None:
    """Overwrite the last page's data with 0xff bytes: the file keeps its size and its chain of
    pages, but its last frame does not decode (a copy that wrote garbage, a bad sector)."""
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[-1].dataoffsets[0], tif.pages[-1].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = b"\xff" * count
    path.write_bytes(bytes(data))


def test_an_eer_whose_last_raw_frame_does_not_decode_is_not_complete(tmp_path):
    rng = np.random.default_rng(3)
    raw = [(rng.random((64, 64)) < 0.3).astype(np.uint8) for _ in range(6)]
    path = write_eer(tmp_path / "m.eer", raw, shape_yx=(64, 64))
    assert check_complete(path).complete
    _damage_last_page(path)
    result = check_complete(path)
    assert not result.complete and "raw frame 5" in result.reason


def test_an_odd_width_mode_101_movie_is_complete_and_has_no_trailing_bytes(tmp_path):
    nz, ny, nx = 3, 10, 63
    truth = np.random.default_rng(5).integers(0, 16, (nz, ny, nx)).astype(np.uint8)
    row_bytes = (nx + 1) // 2
    padded = np.zeros((nz, ny, 2 * row_bytes), np.uint8)
    padded[..., :nx] = truth
    packed = (padded[..., 0::2] | (padded[..., 1::2] << 4)).astype(np.uint8)
    header = np.zeros((), dtype=mrcfile.dtypes.HEADER_DTYPE)
    header["nx"], header["ny"], header["nz"], header["mode"] = nx, ny, nz, 101
    header["mx"], header["my"], header["mz"] = nx, ny, nz
    header["mapc"], header["mapr"], header["maps"] = 1, 2, 3
    header["map"] = b"MAP "
    header["machst"] = [0x44, 0x44, 0, 0]
    path = tmp_path / "s.mrc"
    path.write_bytes(header.tobytes() + packed.tobytes())  # SerialEM: each row on a byte
    assert check_complete(path).complete
    movie = read_movie(path)
    assert "trailing_bytes" not in movie.header
    np.testing.assert_array_equal(movie.frames, truth)


def _mrc_with_ext(path, nz=6, shape=(32, 32), nsymbt=4096):
    data = np.random.default_rng(1).integers(1, 9, (nz, *shape)).astype(np.int16)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_extended_header(np.frombuffer(b"\x07" * nsymbt, dtype="V1"))
    return path


def test_zero_filled_last_frame_is_found_after_an_extended_header(tmp_path):
    path = _mrc_with_ext(tmp_path / "m.mrc", nsymbt=2048 * 3)   # 1.5 frames of 2048 bytes
    full = path.read_bytes()
    assert check_complete(path).complete
    frame = 32 * 32 * 2
    written = len(full) - frame // 2         # the last frame's second half not yet filled
    path.write_bytes(full[:written] + bytes(len(full) - written))
    result = check_complete(path)
    assert not result.complete and result.zero_filled


def test_frames_so_far_are_counted_after_the_extended_header(tmp_path):
    path = _mrc_with_ext(tmp_path / "m.mrc", nsymbt=8192)     # 4 frames' worth
    full = path.read_bytes()
    frame = 32 * 32 * 2
    path.write_bytes(full[:1024 + 8192 + 2 * frame + 10])
    result = check_complete(path)
    assert not result.complete and result.n_frames == 2


def test_an_mrc_header_of_zero_frames_is_not_complete(tmp_path):
    path = tmp_path / "m.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((1, 8, 8), np.int16))
    data = bytearray(path.read_bytes()[:1024])
    struct.pack_into("<i", data, 8, 0)                          # nz = 0, no data
    path.write_bytes(bytes(data))
    result = check_complete(path)
    assert not result.complete and result.n_frames == 0


@pytest.mark.parametrize("density", [0.3, 0.01])
def test_a_pre_sized_eer_stalled_in_its_last_bytes_is_not_complete(tmp_path, density):
    """Each EER frame's data, then its IFD: a copy that sized the file first and stalled in
    the last 4 KiB (among the last IFD's entries, or after a frame not linked yet) was taken
    complete, its last raw frame decoded short or empty (one frame's counts lost, corrected
    again once whole); with small frames, one raw frame fewer. Whatever is left to write, it
    waits, or it reads as the whole file does."""
    import tifffile

    from eer_writer import write_eer

    rng = np.random.default_rng(4)
    raw = [(rng.random((64, 64)) < density).astype(np.uint8) for _ in range(40)]
    path = write_eer(tmp_path / "m.eer", raw, shape_yx=(64, 64))
    complete = path.read_bytes()
    assert check_complete(path).complete
    with tifffile.TiffFile(path) as tif:
        whole = tif.pages[len(tif.pages) - 1].databytecounts
    taken = []
    for written in range(len(complete) - 4096, len(complete)):
        _pre_sized(path, complete, written)
        filling = check_complete(path)
        if filling.complete:
            with tifffile.TiffFile(path) as tif:
                same = tif.pages[len(tif.pages) - 1].databytecounts == whole
            if filling.n_frames != 40 or not same:
                taken.append((len(complete) - written, filling.n_frames))
    # the last IFD's strip byte count's high byte: its low byte read alone is a count too
    assert all(left <= 16 for left, _ in taken), taken[:5]


@pytest.mark.parametrize("n_pages, back_to", [(4, 0), (4, 2), (50, 10), (150, 0), (150, 149)])
def test_a_tiff_whose_page_chain_loops_is_not_a_movie_not_a_cut_file(tmp_path, n_pages,
                                                                      back_to):
    """The last IFD links back to one already read: it was reported as a file cut short ("the
    next page's IFD is missing or incomplete"), waited for as still being written, and only
    then quarantined with that reason; no more bytes end such a chain. tifffile looks for a
    loop once, at its 100th page: a longer one hung the daemon's completeness check."""
    from correction.errors import UnsupportedFormatError

    data = np.random.default_rng(2).integers(1, 5, (n_pages, 32, 32)).astype(np.uint8)
    path = tmp_path / "loop.tif"
    path.write_bytes(_libtiff_layout(data))  # SerialEM's: each IFD, then its page's data
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offsets = [page.offset for page in tif.pages]
    assert len(offsets) == n_pages
    last = offsets[-1]
    (n_tags,) = struct.unpack_from("<H", raw, last)
    struct.pack_into("<I", raw, last + 2 + 12 * n_tags, offsets[back_to])
    path.write_bytes(bytes(raw))
    result = check_complete(path)
    assert not result.complete and result.not_a_movie
    assert result.reason.endswith(f"after page {n_pages - 1} it links back to the page "
                                  f"directory of page {back_to}")
    with pytest.raises(UnsupportedFormatError, match="page chain loops"):
        read_movie(path)


def test_an_eer_whose_page_chain_loops_is_not_a_movie(tmp_path):
    """The same for an EER (a BigTIFF): its pages are listed by tifffile too."""
    from eer_writer import write_eer

    rng = np.random.default_rng(5)
    path = write_eer(tmp_path / "m.eer", [(rng.random((64, 64)) < 0.2).astype(np.uint8)
                                          for _ in range(120)], shape_yx=(64, 64))
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        fmt, first, last = tif.tiff, tif.pages[0].offset, tif.pages[119].offset
        (n_tags,) = struct.unpack_from(fmt.tagnoformat, raw, last)
        struct.pack_into(fmt.offsetformat, raw, last + fmt.tagnosize + n_tags * fmt.tagsize,
                         first)
    path.write_bytes(bytes(raw))
    result = check_complete(path)
    assert result.not_a_movie and "links back to the page directory of page 0" in result.reason
