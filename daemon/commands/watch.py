"""Watch a folder and motion-correct every movie the detector writes into it, unattended.

Movies already in the folder (the backlog) are corrected first, in acquisition order (file
mtime), then each new movie once its size and mtime have held for the settle time and its format
says it is complete. State lives in an SQLite database in the output folder (``--state-dir`` to
move it): a restart never repeats a finished movie, and redoes one that was interrupted.
SIGTERM or Ctrl-C finishes the movie in hand and exits 0; a second signal exits at once (the
movie in hand is redone at the next start).
"""

from __future__ import annotations

import argparse
import sys

from daemon import exitcodes
from daemon.engine.service import Service
from daemon.events import MetadataResolver, ServiceListener
from daemon.feed.listener import add_feed_arguments, build_publish_listener
from daemon.series.options import add_series_arguments, resolver_from_config
from daemon.settings.config import (Config, ConfigError, add_watch_arguments, finalize_parser,
                                    load_config)
from daemon.settings.correction_options import add_correction_arguments
from daemon.system.logs import configure_logging, get_logger, running_under_journald
from daemon.system.notify_listener import NotifyListener, add_watchdog_arguments

__all__ = ["add_arguments", "run", "build_listeners", "build_resolver"]

EXAMPLES = """examples:
  motionwatch watch /data/session --out /data/session/motioncorr --gain gain.mrc --dose-per-frame 1.2
  motionwatch watch /data/session --config session.toml --workers 2
  motionwatch watch /mnt/camera --out /scratch/mc --config session.toml --polling on
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``motionwatch watch``: the daemon's own, the correction options, then the
    parts' (tilt series, feed, watchdog); :func:`finalize_parser` gives each its TOML key."""
    add_watch_arguments(parser)
    add_correction_arguments(parser)
    add_series_arguments(parser)
    add_feed_arguments(parser)
    add_watchdog_arguments(parser)
    finalize_parser(parser)


def build_listeners(config: Config) -> list[ServiceListener]:
    """The feed (its publisher started: bound before READY=1) and systemd notify, in that order.

    Raises ConfigError for bad publishing/watchdog options or an endpoint that cannot be bound.
    """
    notify = NotifyListener.from_config(config)
    feed = build_publish_listener(config, logger=get_logger())
    return ([feed] if feed is not None else []) + [notify]


def build_resolver(config: Config) -> MetadataResolver:
    """The metadata resolver ``motionwatch watch`` runs with: tilt series and dose bookkeeping.

    Raises
    ------
    ConfigError
        Bad tilt-series options (file-name pattern, dose per tilt, times).
    """
    return resolver_from_config(config)


def run(args: argparse.Namespace) -> int:
    """``motionwatch watch``: returns 0 after a clean stop, 78 on a configuration error."""
    try:
        config = load_config(args)
        resolver = build_resolver(config)
    except ConfigError as exc:
        _print_config_error(exc)
        return exitcodes.CONFIG
    configure_logging(level=config.log_level)
    try:
        listeners = build_listeners(config)
    except ConfigError as exc:
        _print_config_error(exc)
        return exitcodes.CONFIG
    try:
        return Service(config, listeners=listeners, resolver=resolver).run()
    finally:
        for listener in listeners:  # also when run() returns early (state folder locked)
            close = getattr(listener, "close", None)
            if close is not None:
                close()


def _print_config_error(exc: ConfigError) -> None:
    """Every line of a configuration error on stderr, as errors (``<3>``) under journald."""
    prefix = "<3>" if running_under_journald() else ""
    for line in f"motionwatch watch: {exc}".splitlines():
        print(f"{prefix}{line}", file=sys.stderr)
