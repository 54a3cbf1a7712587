"""SerialEM's camera defect list: read it, and fit it onto a movie's frames.

SerialEM saving K2/K3 frames unnormalized writes the camera's defect list beside them
(``defects_<frames name>.txt``, named in each frame mdoc as ``DefectFile``; SerialEM
``CCameraController::SetupK2SavingAligning``, SerialEMCCD ``SetupFileSaving``), in the text
format of IMOD's ``CorDefDefectsToString``. IMOD's ``alignframes -defect`` and ``clip
defectmap -D`` read it; MotionCor2's ``-DefectFile`` (``x y w h`` lines) and RELION do not
(RELION refuses it and points to ``clip``).

Format (IMOD ``CorDefParseDefects``): one entry per line, a tag then integers; ``#`` starts a
comment line; a tag may be shortened to a prefix of its name (the first name in the order
below that starts with it); unknown tags are ignored. Coordinates are 0-based, ``x`` the column
and ``y`` the row of the image as SerialEM and DM show it (row 0 at the top), ranges inclusive:

- ``CameraSizeX``, ``CameraSizeY``: the camera's size in the list's pixels (required);
- ``RotationAndFlip``: the rotation/flip of these coordinates relative to the chip. SerialEM
  writes the list already turned as the frames are (the camera's rotation/flip, or 0 with
  "skip rotation/flip", then with the native size): it is never applied again here, as
  ``alignframes`` does not;
- ``WasScaled``: 1 when the list was scaled up to super-resolution pixels (every K2/K3 list
  SerialEM writes: then ``CameraSize`` is the super-resolution size and a bad pixel stands for
  the 2 x 2 block from ``x y``), 0 when on physical pixels;
- ``K2Type``, ``NumToAvgSuperRes``: the camera kind (read, not needed here); a Falcon's list
  (``FalconType``, which IMOD makes from the defects in a Falcon gain file) is refused: EER
  frames keep their stored row order, and a Falcon's defects come with its gain;
- ``UsableArea top left bottom right``: the first and last good row and column (0: not set);
- ``BadColumns c ...``, ``BadRows r ...``: whole columns and rows;
- ``PartialBadColumn x width y1 y2``, ``PartialBadRow y height x1 x2``: part of one;
- ``BadPixels x y x y ...``: single pixels (blocks when scaled).

A line starting with a space is refused (IMOD fails on it), one holding a tag and a space but
no value too.

Fitting onto frames of ``nx x ny`` pixels (as IMOD ``CorDefSetupToCorrect``): frames larger
than the camera (super-resolution frames against a list on physical pixels, at most twice it)
take the list scaled up by 2; frames smaller take it binned by the largest integer ``b`` with
``b * nx`` and ``b * ny`` within the camera (K3 counting frames of 5760 x 4092 against the
11520 x 8184 list: 2); frames smaller than the binned camera are a subarea centred on it (said
in a warning by :mod:`correction.pipeline`, as IMOD says it). A binning no camera saves frames
at (other than 1, 2, 3, 4, 6, 8: SerialEM's K2/K3 binnings on super-resolution pixels) is
refused: a list of another camera.
Frames whose size matches the list only transposed are refused (a list of another
orientation), as are frames more than twice the camera.

Orientation: motionwatch holds frames with their rows reversed (row 0 at the bottom, as IMOD;
:mod:`correction.conventions`), so the list is flipped in y on the camera, as
``CorDefFlipDefectsInY`` does, before it is fitted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import GainReferenceError
from .metadata_text import decode_metadata_text, read_regular_file

__all__ = ["CameraDefectList", "CAMERA_DEFECT_KEYS", "is_camera_defect_list",
           "read_camera_defect_list", "parse_camera_defect_text", "SUBAREA_FIT", "SUBAREA_NOTE"]

#: The tags of the format, in the order IMOD matches a shortened tag against them.
CAMERA_DEFECT_KEYS = ("CameraSizeX", "CameraSizeY", "RotationAndFlip", "WasScaled", "K2Type",
                      "FalconType", "NumToAvgSuperRes", "UsableArea", "PartialBadColumn",
                      "PartialBadRow", "BadPixels", "BadColumns", "BadRows")

#: frames may be at most this many times the list's camera (IMOD: a list scaled up by 2)
_MAX_UP = 2
#: binnings of frames against a list: SerialEM's K2/K3 binnings 0.5-4 (1-8 on the list's
#: super-resolution pixels), and 1-8 of a list on physical pixels
CAMERA_BINNINGS = (1, 2, 3, 4, 6, 8)

#: how :meth:`CameraDefectList.describe_fit` says the frames were taken for a subarea, and what
#: that may mean (a warning: IMOD says it too)
SUBAREA_FIT = "frames a subarea from column"
SUBAREA_NOTE = ("taken as a subarea centred on the camera; if the frames are the whole camera, "
                "the list is another camera's")

#: ``(x, y, w, h)``: first column and row (0-based), columns wide, rows high
Rect = tuple[int, int, int, int]

_TAG = re.compile(r"^(\S+)[ \t](.*)$")


@dataclass(frozen=True, slots=True)
class CameraDefectList:
    """A SerialEM camera defect list, as rectangles on the list's own camera grid.

    Attributes
    ----------
    path : Path
        The file, for messages.
    camera_size_xy : (int, int)
        ``CameraSizeX``, ``CameraSizeY``: the grid of the coordinates, in pixels.
    rects_top_down : tuple of (x, y, w, h)
        Every defect as a rectangle on that grid, row 0 at the top (as SerialEM writes it):
        whole columns and rows over the whole camera, bad pixels as blocks of ``pixel_block``,
        and the rows and columns outside ``UsableArea``.
    was_scaled : int
        ``WasScaled`` (1: super-resolution coordinates, a bad pixel is a 2 x 2 block).
    rotation_flip : int
        ``RotationAndFlip`` of the coordinates relative to the chip (recorded, never applied).
    """

    path: Path
    camera_size_xy: tuple[int, int]
    rects_top_down: tuple[Rect, ...]
    was_scaled: int = 0
    rotation_flip: int = 0

    def fit(self, shape_yx: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(up, binning, left, top)`` fitting the list onto frames of ``shape_yx``: the
        factor it is scaled up by, then binned by, and the offsets (pixels of the binned
        camera) of the frames' first column and row on it.

        Raises
        ------
        GainReferenceError
            Frames more than twice the camera, fitting it only transposed, or only at a
            binning no camera saves frames at (a list of another camera).
        """
        ny, nx = int(shape_yx[0]), int(shape_yx[1])
        cam_x, cam_y = self.camera_size_xy
        problem = self._misfit(nx, ny, cam_x, cam_y)
        if problem is not None:
            raise GainReferenceError(self.path, problem)
        up = 1
        if nx > cam_x or ny > cam_y:
            up = _MAX_UP
            cam_x, cam_y = cam_x * up, cam_y * up
        binning = max(1, min(cam_x // nx, cam_y // ny))
        if binning not in CAMERA_BINNINGS:
            raise GainReferenceError(
                self.path, f"camera defect list of another camera (or frames of a small "
                           f"subarea): the frames are {nx} x {ny}, its camera {cam_x} x "
                           f"{cam_y}, which fits only binned by {binning}")
        return up, binning, (cam_x // binning - nx) // 2, (cam_y // binning - ny) // 2

    def _misfit(self, nx: int, ny: int, cam_x: int, cam_y: int) -> str | None:
        """Why frames of ``nx x ny`` do not fit a camera of ``cam_x x cam_y``; None: they do."""
        size = f"the frames are {nx} x {ny}, its camera (CameraSizeX x CameraSizeY) " \
               f"{cam_x} x {cam_y}"
        if nx > _MAX_UP * cam_x or ny > _MAX_UP * cam_y:
            return f"camera defect list of a smaller camera: {size}"
        if not _whole_multiple(nx, ny, cam_x, cam_y) and _whole_multiple(ny, nx, cam_x, cam_y):
            return (f"camera defect list of another orientation: {size}, which fits only "
                    "transposed")
        return None

    def rects_on(self, shape_yx: tuple[int, int]) -> tuple[Rect, ...]:
        """The defects on frames of ``shape_yx`` as motionwatch holds them (rows reversed:
        row 0 at the bottom), clipped to the frames (:meth:`fit`)."""
        ny, nx = int(shape_yx[0]), int(shape_yx[1])
        up, binning, left, top = self.fit(shape_yx)
        cam_y = self.camera_size_xy[1]
        rects: list[Rect] = []
        for x, y, w, h in self.rects_top_down:
            y = cam_y - y - h  # flipped in y on the camera (CorDefFlipDefectsInY)
            x, y, w, h = x * up, y * up, w * up, h * up
            x0, x1 = x // binning - left, (x + w - 1) // binning - left
            y0, y1 = y // binning - top, (y + h - 1) // binning - top
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, nx - 1), min(y1, ny - 1)
            if x0 <= x1 and y0 <= y1:
                rects.append((x0, y0, x1 - x0 + 1, y1 - y0 + 1))
        return tuple(rects)

    def describe_fit(self, shape_yx: tuple[int, int]) -> str:
        """One line: how the list was fitted onto frames of ``shape_yx``."""
        up, binning, left, top = self.fit(shape_yx)
        cam_x, cam_y = self.camera_size_xy
        how = [f"SerialEM camera defect list of a {cam_x} x {cam_y} camera"]
        if up > 1:
            how.append(f"scaled up by {up}")
        if binning > 1:
            how.append(f"binned by {binning}")
        if left or top:
            how.append(f"{SUBAREA_FIT} {left}, row {top}")
        return ", ".join(how)


def _whole_multiple(nx: int, ny: int, cam_x: int, cam_y: int) -> bool:
    """Frames of ``nx x ny`` are the camera ``cam_x x cam_y`` scaled up by 2, as it is, or
    binned by a whole factor."""
    if (nx, ny) in ((cam_x, cam_y), (2 * cam_x, 2 * cam_y)):
        return True
    return nx > 0 and ny > 0 and cam_x % nx == 0 and cam_y % ny == 0 \
        and cam_x // nx == cam_y // ny


def _entry_error(path: Path, number: int, line: str, why: str) -> GainReferenceError:
    """The error of a malformed entry: the file, the line's number and text, and why."""
    return GainReferenceError(path, f"camera defect list line {number} {why}: {line.strip()!r}")


def is_camera_defect_list(text: str) -> bool:
    """Whether ``text`` is a SerialEM camera defect list: a line starting with one of its
    tags, written in full (an ``x y w h`` list holds numbers only)."""
    return any(line.split(None, 1)[0] in CAMERA_DEFECT_KEYS
               for line in text.splitlines() if line.strip())


def read_camera_defect_list(path: str | Path) -> CameraDefectList:
    """Read a SerialEM camera defect list (:func:`parse_camera_defect_text`).

    Raises
    ------
    GainReferenceError
        A missing or unreadable file, or a malformed entry (quoted with its line number).
    """
    path = Path(path)
    try:
        text = decode_metadata_text(read_regular_file(path)).text
    except FileNotFoundError:
        raise GainReferenceError(path, "camera defect list: no such file") from None
    except OSError as exc:
        raise GainReferenceError(path, f"camera defect list unreadable: {exc}") from None
    return parse_camera_defect_text(text, path)


def parse_camera_defect_text(text: str, path: str | Path) -> CameraDefectList:
    """Parse the text of a SerialEM camera defect list (module docstring); ``path`` names it
    in messages.

    Raises
    ------
    GainReferenceError
        A malformed entry (quoted with its line number) or no camera size.
    """
    path = Path(path)
    values: dict[str, int] = {}
    usable = (0, 0, 0, 0)
    columns: list[int] = []
    rows: list[int] = []
    partial_columns: list[tuple[int, int, int, int]] = []
    partial_rows: list[tuple[int, int, int, int]] = []
    pixels: list[tuple[int, int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        if line[0] in " \t":  # IMOD takes the empty tag for CameraSizeX and fails
            raise _entry_error(path, number, line, "does not start with its tag")
        match = _TAG.match(line)
        if match is None:  # a tag alone, without a space: skipped, as IMOD skips it
            continue
        tag, rest = match.groups()
        key = next((k for k in CAMERA_DEFECT_KEYS if k.startswith(tag)), None)
        if key is None:
            continue
        try:
            numbers = [int(v) for v in rest.replace(",", " ").split()]
        except ValueError:
            raise _entry_error(path, number, line,
                               "holds a value that is not an integer") from None
        if not numbers:
            raise _entry_error(path, number, line, "has no value")
        if any(n < 0 for n in numbers) and key not in ("WasScaled", "RotationAndFlip"):
            raise _entry_error(path, number, line, "has a negative value")
        if key in ("UsableArea", "PartialBadColumn", "PartialBadRow") and len(numbers) < 4:
            raise _entry_error(path, number, line, "needs 4 values")
        if key == "BadPixels" and len(numbers) % 2:
            raise _entry_error(path, number, line, "needs x y pairs")
        if key == "UsableArea":
            usable = (numbers[0], numbers[1], numbers[2], numbers[3])
        elif key in ("PartialBadColumn", "PartialBadRow"):
            start, width, first, last = numbers[:4]
            if width < 1 or last < first:
                raise _entry_error(path, number, line, "has an empty range")
            (partial_columns if key == "PartialBadColumn" else partial_rows).append(
                (start, width, first, last))
        elif key == "BadPixels":
            pixels.extend(zip(numbers[0::2], numbers[1::2]))
        elif key == "BadColumns":
            columns.extend(numbers)
        elif key == "BadRows":
            rows.extend(numbers)
        else:
            values[key] = numbers[0]
    if values.get("FalconType", 0) > 0:
        raise GainReferenceError(path, "a Falcon camera defect list (FalconType): not read "
                                       "(a Falcon's defects come with its gain reference, and "
                                       "its EER frames keep their stored row order)")
    cam_x, cam_y = values.get("CameraSizeX", 0), values.get("CameraSizeY", 0)
    if cam_x <= 0 or cam_y <= 0:
        raise GainReferenceError(path, "camera defect list without CameraSizeX and "
                                       "CameraSizeY (its grid is unknown)")
    was_scaled = values.get("WasScaled", 0)
    block = 4 if was_scaled > 1 else 2 if was_scaled == 1 else 1
    rects: list[Rect] = [(c, 0, 1, cam_y) for c in columns]
    rects += [(0, r, cam_x, 1) for r in rows]
    rects += [(x, y1, w, y2 - y1 + 1) for x, w, y1, y2 in partial_columns]
    rects += [(x1, y, x2 - x1 + 1, h) for y, h, x1, x2 in partial_rows]
    rects += [(x, y, block, block) for x, y in pixels]
    top, left, bottom, right = usable
    if top > 0:
        rects.append((0, 0, cam_x, top))
    if left > 0:
        rects.append((0, 0, left, cam_y))
    if 0 < bottom < cam_y - 1:
        rects.append((0, bottom + 1, cam_x, cam_y - bottom - 1))
    if 0 < right < cam_x - 1:
        rects.append((right + 1, 0, cam_x - right - 1, cam_y))
    outside = [r for r in rects if r[0] >= cam_x or r[1] >= cam_y]
    if outside:
        x, y, _, _ = outside[0]
        raise GainReferenceError(path, f"camera defect list has a defect at x {x}, y {y}, "
                                       f"outside its {cam_x} x {cam_y} camera")
    return CameraDefectList(path, (cam_x, cam_y), tuple(rects), was_scaled,
                            values.get("RotationAndFlip", 0))
