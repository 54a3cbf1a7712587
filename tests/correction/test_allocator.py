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
