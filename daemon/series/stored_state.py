"""What the state database keeps of a tilt series for readers other than the resolver.

``motionwatch status`` and the feed's restored state read a series' stored state (written by
:mod:`daemon.series.resolver`) without resolving its metadata. Of its fields, ``listed_movies``
names the movies its mdoc lists now (below the watch folder), or is absent or None when no
series mdoc lists them: a retaken tilt's discarded movie, corrected as a tilt before the mdoc
dropped it, keeps a record naming the series but is no tilt of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["LISTED_MOVIES", "listed_now"]

LISTED_MOVIES = "listed_movies"


def listed_now(state: Mapping[str, Any], movie_path: str) -> bool:
    """Whether the series whose stored state is ``state`` still lists the movie at
    ``movie_path`` (an absolute path, or one as the state database holds it); True when the
    state lists no movies (no series mdoc: nothing to go by)."""
    listed = state.get(LISTED_MOVIES)
    if not isinstance(listed, list):
        return True
    return any(movie_path == name or movie_path.endswith("/" + name) for name in listed)
