"""The in-memory movie every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Movie"]


@dataclass(frozen=True, slots=True)
class Movie:
    """Frames of one movie as stored, with the facts its header gives.

    Attributes
    ----------
    frames : ndarray, shape (n_frames, ny, nx)
        Frames in their stored integer or float dtype (counts for counting detectors); EER
        movies hold fractions (sums of raw frames). Never converted to float here.
    path : Path
        The file read.
    pixel_size_A : float or None
        Pixel size in Å from the header, None when the header has none.
    voltage_kV, dose_per_frame_e_A2 : float or None
        From the header where the format stores them (FEI extended header, EER metadata).
    raw_frames_per_frame : tuple of int or None
        For EER: raw frames summed into each returned frame (the grouping).
    header : dict
        Other header facts worth recording (format, mode, compression ...), JSON-serialisable.
    """

    frames: np.ndarray
    path: Path
    pixel_size_A: float | None = None
    voltage_kV: float | None = None
    dose_per_frame_e_A2: float | None = None
    raw_frames_per_frame: tuple[int, ...] | None = None
    header: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def shape_yx(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])
