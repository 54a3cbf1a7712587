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
