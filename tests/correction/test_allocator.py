"""The memory settings a movie is corrected under are process-wide, so they are undone after."""

from __future__ import annotations

import pytest

from correction.allocator import movie_memory_settings

multiarray = pytest.importorskip("numpy._core.multiarray")


def test_numpy_huge_page_advice_is_off_while_a_movie_is_corrected_and_restored_after():
    before = multiarray._get_madvise_hugepage()
    with movie_memory_settings():
        assert multiarray._get_madvise_hugepage() is False
    assert multiarray._get_madvise_hugepage() == before


def test_settings_are_restored_when_the_correction_fails():
    before = multiarray._get_madvise_hugepage()
    with pytest.raises(RuntimeError):
        with movie_memory_settings():
            raise RuntimeError("bad movie")
    assert multiarray._get_madvise_hugepage() == before


def test_a_process_reports_its_own_peak_memory_not_that_of_the_process_that_started_it():
    """A benchmark that holds a large movie and starts a child to correct another must read the
    child's own peak: ``ru_maxrss`` carries the parent's resident memory across fork and exec,
    ``peak_resident_MB`` (VmHWM) starts afresh."""
    import subprocess
    import sys

    import numpy as np

    from correction.allocator import peak_resident_MB

    held = np.ones(400 << 20, np.uint8)  # 400 MiB resident in this process
    assert peak_resident_MB() >= 400
    child = subprocess.run(
        [sys.executable, "-c", "from correction.allocator import peak_resident_MB; "
                               "print(peak_resident_MB())"],
        capture_output=True, text=True, check=True)
    assert float(child.stdout) < 200, child.stdout
    del held


def _resident_MB() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def test_written_zeros_are_resident_at_once_where_numpy_zeros_are_not():
    """A sum accumulated in place must not start on the kernel's shared zero page (a read
    then a write per page, with a TLB flush on every CPU): ``zeros_written`` holds its pages
    when it returns, ``np.zeros`` holds none of them until they are touched."""
    import numpy as np

    from correction.allocator import zeros_written

    size_MB = 128
    before = _resident_MB()
    lazy = np.zeros(size_MB << 20, np.uint8)
    assert _resident_MB() - before < size_MB / 4
    before = _resident_MB()
    written = zeros_written((size_MB << 18,), np.float32)
    assert _resident_MB() - before > size_MB * 0.9
    assert written.dtype == np.float32 and not written.any()
    del lazy, written


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _faults_of_a_block_after_one_was_freed(size: int) -> int:
    """Page faults of writing a fresh ``size``-byte array right after one of the same size was
    written and freed."""
    import numpy as np

    first = np.empty(size, np.uint8)
    first.fill(1)
    del first
    before = _minor_faults()
    second = np.empty(size, np.uint8)
    second.fill(1)
    faults = _minor_faults() - before
    del second
    return faults


def test_while_a_movie_is_corrected_a_freed_large_block_is_reused_without_page_faults():
    """Blocks far above glibc's 32 MiB mmap threshold (a 4K spectrum, a K3 frame in float32)
    are freed and asked for again many times per movie: each must reuse the freed memory,
    not be mapped afresh with one fault and one cleared page per 4 KiB."""
    size = 96 << 20
    pages = size // 4096
    with movie_memory_settings():
        faults = _faults_of_a_block_after_one_was_freed(size)
    assert faults < pages / 10, f"{faults} faults for {pages} pages"


def _blocks_mapped_on_their_own() -> int:
    """glibc's count of blocks mapped on their own (``mallinfo2().hblks``)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("no glibc >= 2.33 (mallinfo2)")
    mallinfo2.restype = MallInfo2
    return int(mallinfo2().hblks)


def test_after_the_movie_its_freed_memory_is_returned_and_large_blocks_are_mapped_again():
    """The settings are process-wide: a daemon's parent or a library caller gets glibc's own
    behaviour back, and a worker does not hold the movie's peak while it waits."""
    import numpy as np

    size = 256 << 20
    before = _resident_MB()
    with movie_memory_settings():
        mapped = _blocks_mapped_on_their_own()
        block = np.empty(size, np.uint8)
        block.fill(1)
        assert _blocks_mapped_on_their_own() == mapped  # from the heap
        assert _resident_MB() - before > 200
        del block
    assert _resident_MB() - before < 64  # handed back by malloc_trim
    block = np.empty(size, np.uint8)
    assert _blocks_mapped_on_their_own() == mapped + 1  # mapped on its own again
    del block


def test_blocks_nest_and_only_the_outermost_returns_the_memory():
    """``motionwatch correct`` on a list and a busy worker hold one block around their movies,
    each movie its own inside it: the memory one movie frees is still there for the next."""
    import numpy as np

    size = 256 << 20
    before = _resident_MB()
    with movie_memory_settings():
        with movie_memory_settings():  # one movie
            block = np.empty(size, np.uint8)
            block.fill(1)
            del block
        assert _resident_MB() - before > 200  # kept for the next movie
        with movie_memory_settings():  # the next movie reuses it
            faults = _faults_of_a_block_after_one_was_freed(size)
        assert faults < size // 4096 / 10
    assert _resident_MB() - before < 64


def test_blocks_open_in_two_threads_keep_the_settings_until_the_last_one_closes():
    """Dask runs several movies at once in threads of one worker: the one that began first
    may finish first, and must not undo the settings under the other."""
    import threading

    before = multiarray._get_madvise_hugepage()
    first_open, second_open, first_closed = (threading.Event() for _ in range(3))
    seen = []

    def first():
        with movie_memory_settings():
            first_open.set()
            second_open.wait(5)
        first_closed.set()

    def second():
        first_open.wait(5)
        with movie_memory_settings():
            second_open.set()
            first_closed.wait(5)
            seen.append(multiarray._get_madvise_hugepage())

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [False]  # still the movie setting after the first block closed
    assert multiarray._get_madvise_hugepage() == before
