"""Movies with a known local deformation for tests (``from local_movies import local_movie``;
``tests/conftest.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import numpy as np

from correction.synthetic_local import LocalDeformation, render_local_movie, smooth_global_drift

__all__ = ["local_movie"]


def local_movie(seed: int, shape_yx: tuple[int, int], n_frames: int, *, e_per_px: float,
                corner_px: float, drift_px: float, contrast: float):
    """A movie of ``n_frames`` at ``e_per_px`` e/px/frame with a smooth global drift of
    ``drift_px`` and a local field of ``corner_px`` at the corners (0: none); returns
    ``(movie, field, rng)``, the generator left where the render left it."""
    rng = np.random.default_rng(seed)
    field = (LocalDeformation(shape_yx, n_frames, corner_amplitude_px=corner_px, seed=seed)
             if corner_px else None)
    movie = render_local_movie(shape_yx, n_frames, dose_per_pixel=e_per_px, deformation=field,
                               global_shifts_yx_px=smooth_global_drift(n_frames, total_px=drift_px,
                                                                       rng=rng),
                               rng=rng, contrast=contrast)
    return movie, field, rng
