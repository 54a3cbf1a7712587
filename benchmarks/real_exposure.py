"""A real counting-mode exposure for ``bench_oracle.py --exposure``, fetched from PyPI.

The only real direct-detector recording reachable from the package registries is a test file of
mrcfile's source distribution (not its wheel): ``tests/test_data/fei-extended.mrc``, one
exposure written by EPU 1.2 (2017) on a Gatan K2 behind an energy filter in counting mode, 3838
x 3710 pixels of 0.854 Å, 47.6 e/Å² over 10 s at 300 kV, a single-particle field (contributed
to mrcfile by Kevin Savage, Diamond Light Source, "with permission for public distribution";
mrcfile is BSD-3-Clause, (c) 2016 STFC). It is the sum of the exposure, gain-normalised and
scaled (about 101 per electron): this script divides by the scale that makes its mean the dose
its FEI extended header gives (``Dose`` in e/m², ``Pixel size X`` in m) and rounds, so each
pixel holds its electron count (Poisson: the variance of the pixel differences over the mean
is 1.02).

Where such a split exposure over-states what a movie holds: a counting detector counts some
electrons in two neighbouring pixels; in a real movie both counts fall in one frame, but split
count by count they fall in different frames, which then share a correlated pattern that
moves with the specimen. Its power shows in the field's spectrum as an excess over the Poisson
level away from the specimen's low frequencies (``bench_oracle.py`` prints it per ring: 17 %
at 0.20-0.25 cycles/pixel in this file, against 0-2 % in the neighbouring rings); an oracle on
the whole grid takes it for signal.

    .venv/bin/python benchmarks/real_exposure.py /tmp/k2        # writes /tmp/k2/k2_counts.mrc
    .venv/bin/python benchmarks/bench_oracle.py --exposure /tmp/k2/k2_counts.mrc \\
        --kinds exposure --sizes 1024 2048 3584
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

import mrcfile
import numpy as np

SDIST = "mrcfile==1.5.4"
MEMBER = "mrcfile-1.5.4/tests/test_data/fei-extended.mrc"
SHA256 = "e9f168012031b3a6ea47fbed8eca8b9c8a040b4d1f4fbb2e3326bdb6d9307efe"


def fetch(folder: Path) -> Path:
    """The EPU exposure, downloaded (mrcfile's source distribution, 50 MB) and checked."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "fei-extended.mrc"
    if not target.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", "--dest", str(folder), SDIST], check=True)
        archive = next(folder.glob("mrcfile-1.5.4.tar.gz"))
        with tarfile.open(archive) as tar, tar.extractfile(MEMBER) as member:
            target.write_bytes(member.read())
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{target}: SHA-256 {digest}, expected {SHA256}")
    return target


def electron_counts(path: Path) -> tuple[np.ndarray, float, float]:
    """(counts per pixel, pixel size in Å, dose in e/Å²) of an EPU counting-mode sum."""
    with mrcfile.open(path, permissive=True) as mrc:
        image = np.asarray(mrc.data, dtype=np.float64).reshape(mrc.data.shape[-2:])
        header = mrc.indexed_extended_header
        dose_e_A2 = float(header["Dose"][0]) * 1e-20  # e/m² -> e/Å²
        pixel_A = float(header["Pixel size X"][0]) * 1e10  # m -> Å
    scale = image.mean() / (dose_e_A2 * pixel_A**2)
    return np.rint(image / scale).astype(np.int32), pixel_A, dose_e_A2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where the download and the counts go")
    args = parser.parse_args(argv)
    counts, pixel_A, dose = electron_counts(fetch(args.folder))
    diffs = np.diff(counts.astype(np.float64), axis=1)
    out = args.folder / "k2_counts.mrc"
    with mrcfile.new(out, overwrite=True) as mrc:
        mrc.set_data(counts.astype(np.int16))
        mrc.voxel_size = pixel_A
    print(f"{out}: {counts.shape[0]} x {counts.shape[1]} counts, {pixel_A:.4f} Å per pixel, "
          f"{dose:.2f} e/Å² ({counts.mean():.2f} per pixel); variance of pixel differences "
          f"over the mean {0.5 * diffs.var() / counts.mean():.3f} (Poisson: 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
