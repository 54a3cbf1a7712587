"""The ``motionwatch`` command: one subcommand per module, heavy imports deferred.

Each subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``; its
docstring's first paragraph is the command's help. ``main(argv=None)`` returns the exit status
(see :mod:`daemon.exitcodes`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from daemon import __version__
from daemon import exitcodes

# subcommand name -> module (imported lazily, only the chosen one runs)
COMMANDS: dict[str, str] = {
    "correct": "daemon.commands.correct",
    "demo": "daemon.commands.demo",
    "watch": "daemon.commands.watch",
    "status": "daemon.commands.status",
    "retry": "daemon.commands.retry",
    "monitor": "daemon.feed.monitor",
    "dashboard": "daemon.commands.dashboard",
}

EPILOG = """examples:
  motionwatch demo ./motionwatch-demo
  motionwatch correct movie.tif --gain gain.mrc --pixel-size 0.83 --dose-per-frame 1.2 --out corrected/
  motionwatch watch /data/session --out /data/session/motioncorr --config session.toml
  motionwatch status /data/session/motioncorr
  motionwatch monitor tcp://127.0.0.1:5557
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="motionwatch",
        description="Motion-correct cryo-EM / cryo-ET detector movies as they are written.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"motionwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # subcommand not present in this build
        doc = (module.__doc__ or "").strip()
        summary = doc.split("\n\n")[0].replace("\n", " ")
        command_parser = sub.add_parser(
            name,
            help=summary,
            description=doc,
            epilog=getattr(module, "EXAMPLES", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command_parser)
        command_parser.set_defaults(_module=module, _parser=command_parser)
    return parser


#: BLAS thread variables set to 1 (unless already set) before numpy is imported
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def single_threaded_blas() -> None:
    """Ask numpy's and scipy's BLAS for one thread each, unless the user chose otherwise.

    motionwatch runs its own threads (``scipy.fft`` workers, the patch and band pools); BLAS
    threads on top of them (OpenBLAS starts one per core for a product of a few hundred
    rows) oversubscribe the cores and spin: the patch alignment of a 4096^2 x 10 movie took
    0.66 s with them and 0.49 s without on 2 cores. The variables are read when numpy loads,
    so this runs before any subcommand module is imported; worker processes inherit them.
    """
    os.environ.update(single_threaded_blas_environment())


def single_threaded_blas_environment() -> dict[str, str]:
    """This process's environment with the BLAS thread variables set to 1 unless already set
    (for child processes that should run as ``motionwatch`` does, e.g. benchmarks')."""
    return {**os.environ, **{name: os.environ.get(name, "1") for name in BLAS_THREAD_VARIABLES}}


class _HangupWhileStarting(BaseException):
    """SIGHUP came before ``watch``'s service took the signal (a BaseException, as
    KeyboardInterrupt: no ``except Exception`` of the start-up swallows it)."""


def _hangup_while_starting(signum: int, frame: object) -> None:
    raise _HangupWhileStarting


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``motionwatch``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # ``watch`` restarts on SIGHUP (75) from its first moment: killed by the signal before its
    # service handled it (the imports take most of a second), it was not restarted (systemd
    # counts a death by SIGHUP clean)
    previous = (signal.signal(signal.SIGHUP, _hangup_while_starting)
                if argv[:1] == ["watch"] else None)
    try:
        return _main(argv)
    except _HangupWhileStarting:
        print("motionwatch watch: SIGHUP before or after the service took signals (starting, "
              "or stopped): exit to be restarted", file=sys.stderr)
        return exitcodes.RESTART
    finally:
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)


def _main(argv: list[str]) -> int:
    single_threaded_blas()
    try:  # a Ctrl-C while the subcommands are imported (most of a second) is one too
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # named with the subcommand's usage, not the top level's
            getattr(args, "_parser", parser).error(
                f"unrecognized arguments: {' '.join(unknown)}")
        return int(args._module.run(args))
    except KeyboardInterrupt:
        print("motionwatch: interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED
    except Exception:  # noqa: BLE001 - a bug: said with its traceback, as EX_SOFTWARE (70)
        traceback.print_exc()  # (Python's own exit status 1 means "some movies failed" here)
        print("motionwatch: internal error (the traceback above): exit 70", file=sys.stderr)
        return exitcodes.SOFTWARE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
