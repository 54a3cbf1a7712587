"""The largest frame any detector writes: a header that declares more is damaged.

A byte flipped in a TIFF's ImageWidth or an EER page's ImageLength (a 12 KB file declaring
65535 x 65535 pixels) would otherwise make the completeness check decode gigabytes in the
daemon's own process. The largest stored frames are a K3's super-resolution frames (11520 x
8184, 94 million pixels); EER pages are 4096 x 4096 whatever the rendering.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UnreadableMovieError

__all__ = ["MAX_FRAME_PIXELS", "check_frame_size"]

#: 16384 x 16384: above every detector's stored frame, below what a damaged header can ask
MAX_FRAME_PIXELS = 1 << 28


def check_frame_size(path: str | Path, shape_yx: tuple[int, int]) -> None:
    """Raise unless ``shape_yx`` (ny, nx: a page's or a section's) is a frame a detector
    writes: positive, and at most :data:`MAX_FRAME_PIXELS` pixels.

    Raises
    ------
    UnreadableMovieError
        Naming the file and the declared size.
    """
    ny, nx = (int(v) for v in shape_yx)
    if ny < 1 or nx < 1 or ny * nx > MAX_FRAME_PIXELS:
        raise UnreadableMovieError(path, f"header declares frames of {nx} x {ny} pixels, which "
                                         f"no detector writes (at most {MAX_FRAME_PIXELS} "
                                         "pixels): a damaged header")
