"""Watch a folder and motion-correct every movie the detector writes into it, unattended.

Movies already in the folder (the backlog) are corrected first, in acquisition order (file
mtime), then each new movie once its size and mtime have held for the settle time and its format
says it is complete. State lives in an SQLite database in the output folder (``--state-dir`` to
move it): a restart never repeats a finished movie, and redoes one that was interrupted.
SIGTERM or Ctrl-C finishes the movie in hand and exits 0; SIGHUP finishes it too and exits 75, so
that systemd restarts the daemon with its configuration read again; a second signal exits at once
with 130 (the movie in hand is redone at the next start). Each movie's time limit scales with its size
(--movie-timeout-floor, --movie-timeout-per-gb, capped by --movie-timeout). After a change of
correction settings, finished movies are corrected again (--on-parameter-change redo, said at
start-up) or kept (keep); `motionwatch retry OUT` requeues quarantined movies.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from daemon import exitcodes
from daemon.engine.locks import FolderLocks
from daemon.engine.ownership import recorded_spelling_in
from daemon.engine.policy import EnginePolicy, add_engine_arguments
from daemon.engine.service import Service
from daemon.events import MetadataResolver, ServiceListener
from daemon.dashboard.server import (Dashboard, DashboardConfig, DashboardError, is_loopback,
                                     parse_listen)
from daemon.feed.listener import PublishListener, add_feed_arguments, build_publish_listener
from daemon.handoff.listener import add_handoff_arguments, build_handoff_listener
from daemon.series.options import add_series_arguments, resolver_from_config
from daemon.settings.config import (Config, ConfigError, add_watch_arguments, finalize_parser,
                                    folders_to_make, load_config, make_folders,
                                    remove_empty_folders)
from daemon.settings.correction_options import add_correction_arguments
from daemon.system.collector import paced_garbage_collector
from daemon.system.logs import configure_logging, get_logger, running_under_journald
from daemon.system.notify_listener import (NotifyListener, add_watchdog_arguments,
                                           watchdog_thresholds)
from daemon.work.executor import add_executor_arguments, executor_settings

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
    add_engine_arguments(parser)
    add_correction_arguments(parser, series_mdocs=True)
    add_series_arguments(parser)
    add_feed_arguments(parser)
    add_watchdog_arguments(parser)
    add_executor_arguments(parser)
    add_handoff_arguments(parser)
    g = parser.add_argument_group("dashboard")
    g.add_argument("--dashboard", metavar="HOST:PORT", default=None,
                   help="also serve the live web dashboard here (e.g. 127.0.0.1:8765; loopback "
                        "only, see motionwatch dashboard --help)")
    finalize_parser(parser)


def build_listeners(config: Config) -> list[ServiceListener]:
    """The feed (its publisher started: bound before READY=1) and systemd notify, in that order.

    Raises ConfigError for bad publishing/watchdog options or an endpoint that cannot be bound.
    """
    notify = NotifyListener.from_config(config)
    handoff = build_handoff_listener(config, logger=get_logger())
    feed = build_publish_listener(config, logger=get_logger())
    return ([feed] if feed is not None else []) + ([handoff] if handoff is not None else []) + [
        notify]


def start_dashboard(config: Config, listeners: list[ServiceListener]) -> Dashboard | None:
    """The web dashboard of ``--dashboard HOST:PORT``, reading this daemon's own feed; None
    without the option.

    Raises
    ------
    ConfigError
        No feed to read (``--no-publish``), or bad dashboard options / address in use.
    """
    listen = config.options.get("dashboard")
    if not listen:
        return None
    feed = next((x for x in listeners if isinstance(x, PublishListener)), None)
    if feed is None:
        raise ConfigError(["dashboard: needs the live feed (drop --no-publish)"])
    try:
        return Dashboard(DashboardConfig(feed=feed.publisher.endpoint, out_dir=config.out_dir,
                                         listen=str(listen))).start()
    except (DashboardError, OSError) as exc:  # watch's option is --dashboard
        raise ConfigError([f"dashboard (--dashboard): {exc}".replace("--listen ", "")]) from exc


def check_before_folders(config: Config) -> None:
    """The options checked only once running otherwise (the engine's timeouts and parameter
    policy, the dashboard's address), checked with the others: before any folder is made,
    each problem a line naming its key.

    Raises
    ------
    ConfigError
    """
    problems = []
    try:
        EnginePolicy.from_options(config.options)
    except (TypeError, ValueError) as exc:
        problems.append(str(exc))
    listen = config.options.get("dashboard")
    if listen and config.options.get("publish_curve_secret_key"):
        problems.append("dashboard (--dashboard): the dashboard reads the feed without CURVE "
                        "keys, so with publish_curve_secret_key it would show nothing; use "
                        "motionwatch monitor with --curve-server-key, or a feed without CURVE")
    if listen:
        try:
            host, _ = parse_listen(str(listen))
            if not is_loopback(host):
                problems.append(f"dashboard (--dashboard) {listen}: {host} is not a loopback "
                                "address; serve it with motionwatch dashboard --allow-remote")
        except DashboardError as exc:
            problems.append(f"dashboard (--dashboard): {exc}".replace("--listen ", ""))
    if problems:
        raise ConfigError(problems)


def build_resolver(config: Config) -> MetadataResolver:
    """The metadata resolver ``motionwatch watch`` runs with: tilt series and dose bookkeeping.

    Raises
    ------
    ConfigError
        Bad tilt-series options (file-name pattern, dose per tilt, times).
    """
    return resolver_from_config(config)


def run(args: argparse.Namespace) -> int:
    """``motionwatch watch``: returns 0 after a clean stop, 78 on a configuration error, 69 when
    the only problems are folders or files out of reach (a share not mounted yet: systemd
    restarts it; see :class:`daemon.settings.config.Unreachable`), 75 on SIGHUP (also while
    it starts: :func:`daemon.commands.cli.main`)."""
    try:
        config = load_config(args, make_output_folders=False)
        given = config.watch_dir
        recorded = recorded_spelling_in(config.state_dir, watch_dir=given, out_dir=config.out_dir)
        if recorded is not None:  # the state's rows name its movies under that spelling
            config = dataclasses.replace(config, watch_dir=recorded)
        resolver = build_resolver(config)
        executor_settings(config)  # a bad executor section is a configuration error (78)
        watchdog_thresholds(config)
        check_before_folders(config)
    except ConfigError as exc:
        _print_config_error(exc)
        return exitcodes.UNAVAILABLE if exc.unreachable_only else exitcodes.CONFIG
    configure_logging(level=config.log_level)
    if recorded is not None:
        get_logger().info("watch_folder_as_recorded", given=str(given), watching=str(recorded),
                          note="the same folder, spelled as the state database names its "
                               "movies (a link to it, or its real path)")
    listeners: list[ServiceListener] = []
    dashboard = None
    made = folders_to_make(config)
    try:
        # a second daemon first: binding its feed would take an ipc:// path from the first
        FolderLocks(config.out_dir, config.state_dir).check_free()
        listeners = build_listeners(config)
        make_folders(config)  # only once everything checked here is valid (the feed bound)
        dashboard = start_dashboard(config, listeners)  # serves the output folder: made
    except ConfigError as exc:
        _print_config_error(exc)
        remove_empty_folders(made)  # a configuration with any error creates no folder
        if dashboard is not None:
            dashboard.close()
        for listener in listeners:
            getattr(listener, "close", lambda: None)()
        return exitcodes.UNAVAILABLE if exc.unreachable_only else exitcodes.CONFIG
    try:
        service = Service(config, listeners=listeners, resolver=resolver,
                          serving=_serving(listeners, dashboard))
        with paced_garbage_collector():
            status = service.run()
        # said on stderr as any other refusal; under journald the log line says it already
        if service.config_error is not None and not running_under_journald():
            _print_config_error(service.config_error)
        return status
    finally:
        if dashboard is not None:
            dashboard.close()
        for listener in listeners:  # also when run() returns early (state folder locked)
            close = getattr(listener, "close", None)
            if close is not None:
                close()


def _serving(listeners: list[ServiceListener], dashboard: Dashboard | None) -> dict[str, str]:
    """Where this run serves its readers, for ``motionwatch status``: the feed's bound endpoint
    (the real port of ``tcp://...:*``) and the dashboard's URL."""
    serving = {}
    feed = next((x for x in listeners if isinstance(x, PublishListener)), None)
    if feed is not None and feed.publisher.endpoint:
        serving["feed"] = str(feed.publisher.endpoint)
    if dashboard is not None:
        serving["dashboard"] = dashboard.url
    return serving


def _print_config_error(exc: ConfigError) -> None:
    """Every line of a configuration error on stderr, as errors (``<3>``) under journald."""
    prefix = "<3>" if running_under_journald() else ""
    for line in f"motionwatch watch: {exc}".splitlines():
        print(f"{prefix}{line}", file=sys.stderr)
