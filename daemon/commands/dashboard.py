"""Serve a live web dashboard of a running daemon: its feed, series, tilts and pictures.

The dashboard subscribes to the daemon's ZeroMQ feed (``--feed``, default
``tcp://127.0.0.1:5557``) and serves one page that updates itself (server-sent events): the
daemon's state (live, stopping, silent, restarted), counters and rates, the latest movie with
its thumbnail, power spectrum and drift plot, drift and resolution history with the warning
thresholds, the tilt series with their tilts, failures and warnings. It only reads: pictures and
tables come from the output folder (``--out``), never from anywhere else. It listens on loopback
(``--listen``, default 127.0.0.1:8765) unless ``--allow-remote`` is given.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from daemon import exitcodes
from daemon.feed.endpoint import DEFAULT_ENDPOINT, feed_endpoint

__all__ = ["add_arguments", "run"]

EXAMPLES = """examples:
  motionwatch dashboard --out /data/session/motioncorr
  motionwatch dashboard --feed ipc:///run/motionwatch/feed --out /data/mc --listen 127.0.0.1:8080
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--feed", default=DEFAULT_ENDPOINT, metavar="ENDPOINT", type=feed_endpoint,
                        help=f"the daemon's ZeroMQ feed (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT_DIR",
                        help="the daemon's output folder (pictures are served from here only)")
    parser.add_argument("--listen", default="127.0.0.1:8765", metavar="HOST:PORT",
                        help="address of the web page (default 127.0.0.1:8765; port 0: any)")
    parser.add_argument("--allow-remote", action="store_true", default=False,
                        help="allow --listen on a non-loopback address")


def run(args: argparse.Namespace) -> int:
    """``motionwatch dashboard``: serves until SIGTERM/SIGINT; 0 then, 2 for bad options."""
    from daemon.dashboard.server import Dashboard, DashboardConfig, DashboardError

    try:
        dashboard = Dashboard(DashboardConfig(feed=args.feed, out_dir=args.out,
                                              listen=args.listen,
                                              allow_remote=args.allow_remote)).start()
    except DashboardError as exc:
        print(f"motionwatch dashboard: {exc}", file=sys.stderr)
        # an address that cannot be bound now (in use) is no wrong command line
        return (exitcodes.UNAVAILABLE if isinstance(exc.__cause__, OSError)
                else exitcodes.USAGE)
    previous = {sig: signal.signal(sig, lambda *_: dashboard.close())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    print(f"motionwatch dashboard: {dashboard.url} (feed {args.feed})", flush=True)
    try:
        dashboard.wait()
    finally:
        dashboard.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exitcodes.OK
