"""Hot-pixel detection across doses: electrons kept, pixels flagged, planted pixels caught, time.

For each dose (e/px/frame) a summed movie of ``--frames`` frames is drawn as Poisson counts
(the sum of n Poisson frames is Poisson with n times the rate), clean and with ``--planted``
hot pixels 20 counts/frame above background, optionally over a 0.8-1.25 gain pattern (then
detected on counts x gain with the gain given, as the pipeline does). Prints the fraction of
electrons outside flagged pixels (what replacing them would keep at most, planted excess
excluded), pixels flagged, planted caught, and the time of ``detect_hot_pixels``; then the
time on 4096² and 5760 x 4092 at 0.03 and 10 e/px/frame. Not part of the test run.

    python benchmarks/bench_hot_pixels.py [--size 1024] [--frames 10] [--planted 40]
        [--old PATH]   # also time and count a checkout's detect_hot_pixels (e.g. git HEAD)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from correction.defects import detect_hot_pixels  # noqa: E402

DOSES = (0.01, 0.03, 0.1, 0.3, 1.0)


#: clean pixels flagged a movie, on average at most (detect_hot_pixels' false_positives)
_FALSE_POSITIVES = 0.01

def _load_old(path: Path):
    spec = importlib.util.spec_from_file_location("old_defects", path / "correction" / "defects.py",
                                                  submodule_search_locations=[])
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_defects"] = module
    source = (path / "correction" / "defects.py").read_text().replace(
        "from .errors import", "from correction.errors import")
    exec(compile(source, str(spec.origin), "exec"), module.__dict__)
    return module.detect_hot_pixels


def _best(fn, repeats=3):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def sweep(size: int, n_frames: int, n_planted: int, detectors: dict) -> None:
    rng = np.random.default_rng(0)
    shape = (size, size)
    gain = rng.uniform(0.8, 1.25, shape).astype(np.float32)
    print(f"{size}² x {n_frames} frames, {n_planted} planted at +20 counts/frame; bounds: "
          f"clean pixels flagged {_FALSE_POSITIVES:g} expected a movie (the Poisson test's "
          f"Bonferroni level), planted caught {n_planted} of {n_planted}")
    print(f"{'detector':>8} {'dose':>5} {'gain':>5} | {'clean: kept':>11} {'flagged':>8} | "
          f"{'planted: kept':>13} {'flagged':>8} {'caught':>7} | {'time s':>6}")
    for dose in DOSES:
        for with_gain in (False, True):
            rate = n_frames * dose / (gain if with_gain else 1.0)
            clean = rng.poisson(rate, shape).astype(np.float32)
            flat = rng.choice(clean.size, n_planted, replace=False)
            hy, hx = np.unravel_index(flat, shape)
            hot = clean.copy()
            hot[hy, hx] += rng.poisson(20.0 * n_frames, n_planted)
            for name, detect in detectors.items():
                row = []
                for raw in (clean, hot):
                    data = raw * gain if with_gain else raw
                    kw = {"gain": gain} if with_gain and name == "new" else {}
                    t, mask = _best(lambda: detect(data, sigma=8.0, **kw), repeats=1)
                    # electrons kept: the clean part of the counts outside flagged pixels
                    kept = float(clean[~mask].sum(dtype=np.float64)) / float(
                        clean.sum(dtype=np.float64))
                    row.append((kept, int(mask.sum()), int(mask[hy, hx].sum()), t))
                (k0, f0, _, t0), (k1, f1, c1, _) = row
                print(f"{name:>8} {dose:5.2f} {'yes' if with_gain else 'no':>5} | {k0:11.4f} "
                      f"{f0:8d} | {k1:13.4f} {f1:8d} {c1:3d}/{n_planted:<3d} | {t0:6.3f}")


def timing(detectors: dict) -> None:
    rng = np.random.default_rng(1)
    for shape in ((4096, 4096), (4092, 5760)):
        for dose in (0.03, 10.0):
            summed = rng.poisson(10 * dose, shape).astype(np.float32)
            line = []
            for name, detect in detectors.items():
                t, mask = _best(lambda: detect(summed, sigma=8.0), repeats=3)
                line.append(f"{name} {t:.3f} s ({int(mask.sum())} flagged)")
            print(f"{shape[0]} x {shape[1]}, {10 * dose:g} counts/px: " + ", ".join(line))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--planted", type=int, default=40)
    ap.add_argument("--old", type=Path, help="a checkout whose detect_hot_pixels to compare")
    args = ap.parse_args(argv)
    detectors = {"new": detect_hot_pixels}
    if args.old is not None:
        detectors["old"] = _load_old(args.old)
    sweep(args.size, args.frames, args.planted, detectors)
    timing(detectors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
