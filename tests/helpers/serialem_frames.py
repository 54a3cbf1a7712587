"""Unnormalized K2/K3 frames as SerialEM's plugin writes them, with the gain reference it copies.

Made from SerialEMCCD's ``RotateFlip`` / IMOD's ``rotateFlipImage`` (arrays whose row 0 is the
top, SerialEM's "left-handed" data) as index rules, independent of motionwatch's table of
turns:

* the camera's raw image ``raw[y][x]`` and the gain reference ``gain_raw`` (a multiplier:
  ``corrected = raw * gain``) share the raw orientation; the reference is copied byte for byte
  into the frames folder as ``CountRef_<movie stem>.dm4``, never turned;
* each frame is written turned by the code ``N`` (``SERIALEM_ROTATE_FLIP``): a TIFF's rows in
  array order, titled ``SerialEMCCD: Dose frac. image, scaled by 1.00  r/f N`` (the description
  of its first page); an MRC turned by ``N`` and then upside down (the plugin's ``invert``),
  the title as its first label;
* the frame mdoc ``<movie>.mdoc`` names the reference: ``GainReference = CountRef_....dm4``,
  and the camera defect list when there is one: ``DefectFile = defects_....txt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import tifffile

from dm4_writer import write_dm4

__all__ = ["SERIALEM_ROTATE_FLIP", "serialem_turn", "write_serialem_movie", "camera_defect_list",
           "frames_session"]

#: out[y'][x'] = in[...] for each code N (nx, ny: the input's size); odd codes swap the axes
SERIALEM_ROTATE_FLIP = {
    0: lambda a, y, x, nx, ny: a[y, x],
    1: lambda a, y, x, nx, ny: a[x, nx - 1 - y],
    2: lambda a, y, x, nx, ny: a[ny - 1 - y, nx - 1 - x],
    3: lambda a, y, x, nx, ny: a[ny - 1 - x, y],
    4: lambda a, y, x, nx, ny: a[y, nx - 1 - x],
    5: lambda a, y, x, nx, ny: a[x, y],
    6: lambda a, y, x, nx, ny: a[ny - 1 - y, x],
    7: lambda a, y, x, nx, ny: a[ny - 1 - x, nx - 1 - y],
}


def serialem_turn(image: np.ndarray, code: int) -> np.ndarray:
    """``image`` turned by SerialEM's rotation/flip ``code`` (index rules above)."""
    ny, nx = image.shape
    out_ny, out_nx = (nx, ny) if code % 2 else (ny, nx)
    y, x = np.meshgrid(np.arange(out_ny), np.arange(out_nx), indexing="ij")
    return SERIALEM_ROTATE_FLIP[code](image, y, x, nx, ny)


def write_serialem_movie(folder: Path, name: str, *, gain_raw: np.ndarray,
                         counts_per_frame: float, n_frames: int, code: int,
                         rng: np.random.Generator, kind: str = "tif",
                         gain_name: str | None = None, defect_list: str | None = None,
                         dead_top_down_yx: np.ndarray | None = None,
                         specimen_raw: np.ndarray | None = None) -> Path:
    """Write ``folder/name`` (a TIFF or MRC of unnormalized counts of a flat specimen,
    ``counts_per_frame`` electrons per pixel), its frame mdoc, and (unless it is there)
    SerialEM's copy of the reference; returns the movie path.

    ``defect_list``: the text of the camera defect list SerialEM saves beside the frames, in
    their orientation, written as ``defects_<movie stem>.txt`` and named ``DefectFile`` (a K3
    without defects in SerialEM's properties has none: not named). ``dead_top_down_yx``: a
    mask, on the frames as written (row 0 at the top), of pixels that read 0 in every frame.
    ``specimen_raw``: the specimen's transmission on the raw image (default flat), for movies
    that must align to their truth (no motion)."""
    folder.mkdir(parents=True, exist_ok=True)
    movie = folder / name
    gain_name = gain_name or f"CountRef_{movie.stem}.dm4"
    if not (folder / gain_name).exists():
        write_dm4(folder / gain_name, gain_raw.astype(np.float32))
    specimen = 1.0 if specimen_raw is None else specimen_raw
    raw = rng.poisson(counts_per_frame * specimen / gain_raw, size=(n_frames, *gain_raw.shape))
    frames = np.stack([serialem_turn(f, code) for f in raw.astype(np.uint8)])
    if dead_top_down_yx is not None:
        frames[:, dead_top_down_yx] = 0
    defect_line = ""
    if defect_list is not None:
        defect_name = f"defects_{movie.stem}.txt"
        (folder / defect_name).write_text(defect_list.replace("\n", "\r\n"))
        defect_line = f"DefectFile = {defect_name}\r\n"
    title = f"SerialEMCCD: Dose frac. image, scaled by 1.00  r/f {code}"
    if kind == "tif":
        tifffile.imwrite(movie, frames, description=title, metadata=None, compression="lzw",
                         photometric="minisblack")
    else:
        with mrcfile.new(movie, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(frames[:, ::-1, :]))
            mrc.header.label[0] = title.encode()
            mrc.header.nlabl = 1
    (folder / f"{name}.mdoc").write_text(
        "PixelSpacing = 1.0\r\nVoltage = 300\r\nImageFile = " + name + "\r\n\r\n"
        "[FrameSet = 0]\r\n"
        f"GainReference = {gain_name}\r\n{defect_line}"
        "RotationAndFlip = 3\r\nTiltAngle = 0.0\r\nExposureDose = 10\r\n"
        f"NumSubFrames = {n_frames}\r\nDateTime = 08-Oct-21  07:47:29\r\n")
    return movie


def camera_defect_list(camera_xy: tuple[int, int], entries: str, *, rotation_flip: int = 0,
                       was_scaled: int = 1) -> str:
    """The text of a camera defect list as SerialEM writes it (IMOD ``CorDefDefectsToString``:
    its header, then ``entries``, one per line); a K2/K3 list has ``WasScaled 1``."""
    return (f"CameraSizeX {camera_xy[0]}\nCameraSizeY {camera_xy[1]}\n"
            f"RotationAndFlip {rotation_flip}\nWasScaled {was_scaled}\n"
            f"K2Type {int(was_scaled == 1)}\nFalconType 0\nNumToAvgSuperRes 0\n"
            f"UsableArea 0 0 0 0\n{entries}")


def frames_session(tmp_path: Path, **config: Any) -> Any:
    """A ``watch`` configuration over ``tmp_path/w`` (outputs and state in ``tmp_path/out``)
    for such movies: pixel size and dose given, no hot-pixel search, quick scans, exits when
    idle; ``config`` overrides the fields."""
    from correction.params import CorrectionParams, DoseParams, GainParams, ReadParams
    from daemon.settings.config import Config

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir(exist_ok=True)
    out.mkdir(exist_ok=True)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              read=ReadParams(pixel_size_A=1.0),
                              gain=GainParams(detect_hot_pixels=False))
    fields = {"settle_time_s": 0.1, "scan_interval_s": 0.05, "heartbeat_s": 0.2,
              "exit_when_idle_s": 0.6, "polling": "on", **config}
    return Config(watch, out, out, params, **fields)
