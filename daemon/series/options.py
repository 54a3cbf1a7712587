"""The tilt-series options of ``motionwatch watch`` and the resolver they configure."""

from __future__ import annotations

import argparse

from daemon.series.resolution import DEFAULT_FILENAME_PATTERN, SeriesConfig
from daemon.series.resolver import TiltSeriesResolver
from daemon.settings.config import Config, ConfigError
from daemon.settings.flags import in_flag_terms

__all__ = ["add_series_arguments", "resolver_from_config"]

_DEFAULTS = SeriesConfig()  # the one place the tilt-series defaults are set: SeriesConfig
_FLAG_OF_FIELD = {"filename_pattern": "--filename-pattern", "dose_per_tilt_e_A2": "--dose-per-tilt",
                  "metadata_wait_s": "--metadata-wait", "mdoc_quiet_s": "--mdoc-quiet",
                  "idle_timeout_s": "--series-idle-timeout"}


def add_series_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the tilt-series integration (each has a TOML key, e.g. ``dose_per_tilt``)."""
    g = parser.add_argument_group("tilt series")
    g.add_argument("--tilt-series", choices=("auto", "on", "off"), default="auto",
                   help="tilt-series dose bookkeeping: on once a series mdoc is seen (or "
                        "frame mdocs of several stage angles, one with a PriorRecordDose) or "
                        "--dose-per-tilt is given (auto), always (on), never (off: each movie "
                        "a single one, with its own frame mdoc's dose and its own voltage)")
    g.add_argument("--filename-pattern", default=DEFAULT_FILENAME_PATTERN, metavar="REGEX",
                   help="movie-name pattern with named groups series and angle (and index) for "
                        "movies without metadata")
    g.add_argument("--dose-per-tilt", type=float, default=None, metavar="E_A2",
                   help="dose of one tilt (e/Å²) when the metadata gives none calibrated at "
                        "the specimen (no ExposureDose or FrameDosesAndNumber): used before a "
                        "dose estimated from the camera's DoseRate")
    g.add_argument("--metadata-wait", type=float, default=_DEFAULTS.metadata_wait_s, metavar="S",
                   help="wait this long for a movie's mdoc section before the file-name "
                        f"fallback (default {_DEFAULTS.metadata_wait_s:g} s)")
    g.add_argument("--mdoc-quiet", type=float, default=_DEFAULTS.mdoc_quiet_s, metavar="S",
                   help="a series without .openTS lock is complete once its mdoc is unchanged "
                        f"this long (default {_DEFAULTS.mdoc_quiet_s:g} s)")
    g.add_argument("--series-idle-timeout", type=float, default=_DEFAULTS.idle_timeout_s,
                   metavar="S", help="complete a series with nothing new for this long, "
                                     "and quarantine its tilts still without a dose "
                                     f"(default {_DEFAULTS.idle_timeout_s:g} s)")
    g.add_argument("--tilt-axis", type=float, default=None, metavar="DEG",
                   help="nominal tilt-axis angle (°) for the stacks' mdocs and the RELION "
                        "tilt-series STARs (default: each series mdoc's 'Tilt axis angle'; "
                        "RELION: else 0)")
    g.add_argument("--exposure-filtered", action=argparse.BooleanOptionalAction, default=False,
                   help="also write a stack exposure-filtered by accumulated dose (S_EF.mrc)")


def resolver_from_config(config: Config) -> TiltSeriesResolver:
    """The resolver of ``Config.options`` (defaults for options absent there).

    Raises
    ------
    ConfigError
        A bad pattern (not a regular expression, no ``series``/``angle`` groups) or value.
    """
    o = config.options
    try:
        sc = SeriesConfig(
            filename_pattern=o.get("filename_pattern") or DEFAULT_FILENAME_PATTERN,
            dose_per_tilt_e_A2=o.get("dose_per_tilt"),
            metadata_wait_s=float(o.get("metadata_wait", _DEFAULTS.metadata_wait_s)),
            mdoc_quiet_s=float(o.get("mdoc_quiet", _DEFAULTS.mdoc_quiet_s)),
            idle_timeout_s=float(o.get("series_idle_timeout", _DEFAULTS.idle_timeout_s)))
        axis = o.get("tilt_axis")
        return TiltSeriesResolver(sc, mode=o.get("tilt_series", "auto") or "auto",
                                  exposure_filtered=bool(o.get("exposure_filtered", False)),
                                  tilt_axis_deg=None if axis is None else float(axis))
    except ValueError as exc:
        raise ConfigError([in_flag_terms(str(exc), _FLAG_OF_FIELD)]) from None
