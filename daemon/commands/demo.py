"""Demonstrate motionwatch on a simulated tilt-series acquisition, watched by the daemon.

By default a simulated SerialEM session writes a small dose-symmetric tilt series (7 tilts of
512 x 512 x 8 frames, 0, +3, -3, +6 ... degrees) into FOLDER/frames: each movie frame by frame,
the series .mdoc growing by one section per tilt, a .openTS lock while acquiring. The watch
daemon corrects every movie into FOLDER/motioncorr with its series' pre-exposure, then
assembles the angle-sorted stacks into FOLDER/motioncorr/TS_01/. Ends with a summary: per
tilt the pre-exposure against the truth and the shift error against the rendered drift.

--single corrects one synthetic 1024 x 1024 x 10-frame movie without the daemon; --session
simulates a single-particle session of independent movies.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon import exitcodes
from daemon.simulation.demo import DemoResult, demo_session, demo_single_movie, demo_tilt_series

__all__ = ["add_arguments", "run", "DemoResult", "demo_single_movie", "demo_session",
           "demo_tilt_series"]

EXAMPLES = """examples:
  motionwatch demo
  motionwatch demo /tmp/mw-tomo --tilts 11 --size 256
  motionwatch demo /tmp/mw-demo --single --size 512 --seed 3
  motionwatch demo /tmp/mw-session --session --movies 8 --size 512
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``motionwatch demo``."""
    parser.add_argument("folder", nargs="?", type=Path, default=Path("motionwatch-demo"),
                        help="folder for the synthetic data and results "
                             "(default ./motionwatch-demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=None, metavar="PX",
                        help="frame size in pixels (default 512; 1024 with --single)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per movie (default 8; 10 with --single)")
    parser.add_argument("--tilts", type=int, default=7, metavar="N",
                        help="tilts of the simulated tilt series (default 7)")
    parser.add_argument("--single", action="store_true",
                        help="correct one synthetic movie directly, without the daemon")
    parser.add_argument("--session", action="store_true",
                        help="simulate an acquisition session: movies written frame by frame "
                             "into FOLDER/frames while the watch daemon corrects them into "
                             "FOLDER/motioncorr")
    parser.add_argument("--movies", type=int, default=8, metavar="N",
                        help="movies in the simulated session (default 8)")


def run(args: argparse.Namespace) -> int:
    """``motionwatch demo``: 0 on success, 1 when the correction failed."""
    from correction.errors import CorrectionError

    size = args.size if args.size is not None else (1024 if args.single else 512)
    frames = args.frames if args.frames is not None else (10 if args.single else 8)
    args.size, args.frames = size, frames
    if args.size < 64 or args.frames < 2 or args.tilts < 1:
        print("motionwatch demo: --size must be >= 64, --frames >= 2 and --tilts >= 1",
              file=sys.stderr)
        return exitcodes.USAGE
    try:
        if not args.single and not args.session:
            ok = demo_tilt_series(args.folder, n_tilts=args.tilts, seed=args.seed,
                                  size_px=args.size, n_frames=args.frames)
            return exitcodes.OK if ok else exitcodes.SOME_FAILED
        if args.session:
            done = demo_session(args.folder, seed=args.seed, size_px=args.size,
                                n_frames=args.frames, n_movies=args.movies)
            return exitcodes.OK if done == args.movies else exitcodes.SOME_FAILED
        demo_single_movie(args.folder, seed=args.seed, size_px=args.size, n_frames=args.frames)
    except (CorrectionError, OSError) as exc:
        print(f"motionwatch demo: {exc}", file=sys.stderr)
        return exitcodes.SOME_FAILED
    return exitcodes.OK
