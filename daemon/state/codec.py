"""What the state database stores beside a movie's key, as JSON, and back.

A movie row's ``metadata`` column holds the :class:`~daemon.events.MovieMetadata` its resolver
gave (the movie's own dose, the record fields, the log context) and the frame count validation
found. :func:`metadata_to_json` and :func:`metadata_from_json` are the only (de)serialisers of it,
so the dose never has to be rebuilt by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from correction.params import DoseParams

from daemon.events import MovieGain

__all__ = ["StoredMetadata", "metadata_to_json", "metadata_from_json", "dose_to_json",
           "dose_from_json"]


def dose_to_json(dose: DoseParams | None) -> dict[str, Any] | None:
    """A :class:`~correction.params.DoseParams` as plain JSON values (None stays None)."""
    if dose is None:
        return None
    d = dataclasses.asdict(dose)
    if d.get("frame_doses_e_A2") is not None:
        d["frame_doses_e_A2"] = list(d["frame_doses_e_A2"])
    return d


def dose_from_json(d: Mapping[str, Any] | None) -> DoseParams | None:
    """Inverse of :func:`dose_to_json`; unknown keys (written by a newer version) are ignored."""
    return None if d is None else DoseParams.from_json(d)


@dataclasses.dataclass(frozen=True, slots=True)
class StoredMetadata:
    """A movie's resolved metadata as kept in its row.

    Attributes
    ----------
    dose : DoseParams or None
        The movie's own dose (None: the configured one).
    extra_record : dict
        Merged into its motion record.
    log_context : dict
        Bound to its log events (``series`` ...).
    n_frames : int or None
        Frames validation counted.
    stem : str or None
        Output stem chosen at admission (None: :func:`daemon.engine.outputs.movie_stem`); differs from
        the plain stem only when another movie already writes that stem into the same folder.
    gain : MovieGain or None
        The movie's own gain reference (its frame mdoc's; None: the configured one).
    """

    dose: DoseParams | None = None
    extra_record: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    log_context: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    n_frames: int | None = None
    stem: str | None = None
    gain: MovieGain | None = None


def metadata_to_json(meta: StoredMetadata) -> dict[str, Any]:
    """The ``metadata`` column of a movie row."""
    return {"dose": dose_to_json(meta.dose), "extra_record": dict(meta.extra_record),
            "log_context": dict(meta.log_context), "n_frames": meta.n_frames,
            "stem": meta.stem,
            **({"gain": meta.gain.to_json()} if meta.gain is not None else {})}


def metadata_from_json(d: Mapping[str, Any] | None) -> StoredMetadata:
    """Inverse of :func:`metadata_to_json` (an empty or missing column gives the defaults)."""
    d = d or {}
    return StoredMetadata(dose_from_json(d.get("dose")), dict(d.get("extra_record") or {}),
                          dict(d.get("log_context") or {}), d.get("n_frames"), d.get("stem"),
                          MovieGain.from_json(d.get("gain")))
