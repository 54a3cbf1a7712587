"""MotionCor2/3's frame integration file (``-FmIntFile``): how raw frames are summed into
fractions, and the dose of each raw frame.

The file is text, one entry per line: ``RAW_FRAMES  PER_FRACTION  DOSE``. ``RAW_FRAMES`` raw
frames of the movie, in order, are summed ``PER_FRACTION`` at a time; each raw frame received
``DOSE`` e/Å² (per raw frame, as MotionCor2's ``-FmDose``). ``1000 25 0.02`` makes 40
fractions of 25 raw frames of an EER movie, 0.5 e/Å² each. The dose column may be left out on
every line (MotionCor2 then takes ``-FmDose``; here the dose comes from the other settings:
``--dose-per-frame``, which for an EER movie is the dose of a fraction of the first entry's
``PER_FRACTION`` raw frames, or ``--total-dose``, or the metadata). Raw frames are grouped as
MotionCor3 groups them (``DataUtil/CFmIntParam.cpp``, ``mCalcIntFms``):

* the lines are fitted to the movie: raw frames the movie has beyond those the lines list join
  the last line; raw frames the lines list beyond the movie's are taken off the last lines,
  the last first (MotionCor3 means to; when it uses up a line it takes the whole excess off
  the line before again, and leaves raw frames out: not copied);
* each line makes ``RAW_FRAMES // PER_FRACTION`` fractions of ``PER_FRACTION``, and its
  remainder joins the next line's raw frames;
* the last line's remainder goes one each to the last fractions (3 left: the last three
  fractions hold one more raw frame).

So ``1000 25 0.02`` gives a movie of 1,010 raw frames 30 fractions of 25 and 10 of 26, one of
1,030 raw frames 36 of 25 and 5 of 26, and one of 990 raw frames 24 of 25 and 15 of 26: a
file written for one movie serves longer and shorter ones. A movie too short for one
fraction, or whose last remainder is larger than its number of fractions (where MotionCor3
writes past its array), is refused when it is read (:meth:`FrameIntegration.fraction_sizes`).

What is refused, each with a one-line reason naming the file and line: a line that is not
two or three numbers; counts below 1; a negative dose; lines that differ in how many
columns they have; and entries whose doses differ. For that last case MotionCor2/3 sum nothing
(each raw frame its own frame, each with its entry's dose), which for an EER movie of 1,000
raw frames is 1,000 frames to align: give one dose, or a frame mdoc's ``FrameDosesAndNumber``.
Blank lines and what follows a ``#`` are skipped. MotionCor3 (``CReadFmIntFile::DoIt``)
reads up to three numbers from each line and ignores what follows them; it ignores a whole
file whose first line it cannot read, and takes a later line it cannot read (a blank one) as
the line before once more, which its fitting then mostly evens out. Here a line that is not
two or three numbers is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .errors import ParameterError

__all__ = ["FrameIntegration", "IntegrationEntry", "parse_frame_integration",
           "read_frame_integration"]

#: a frame integration file larger than this is not one (bytes)
_MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class IntegrationEntry:
    """One line of a frame integration file.

    Attributes
    ----------
    raw_frames : int
        Raw frames the line covers.
    per_fraction : int
        Raw frames summed into one fraction.
    dose_per_raw_frame_e_A2 : float or None
        Dose of each raw frame (e/Å²); None when the line has two columns.
    """

    raw_frames: int
    per_fraction: int
    dose_per_raw_frame_e_A2: float | None = None


@dataclass(frozen=True, slots=True)
class FrameIntegration:
    """The entries of a frame integration file, in order, and the file they came from."""

    entries: tuple[IntegrationEntry, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if not self.entries:
            raise ParameterError(f"frame integration file {self.source}: no entries")

    @property
    def per_fraction(self) -> int:
        """Raw frames per fraction of the first entry: the group an EER movie's
        ``--dose-per-frame`` is the dose of (as RELION's dose per fraction)."""
        return self.entries[0].per_fraction

    @property
    def dose_per_raw_frame_e_A2(self) -> float | None:
        """The dose of every raw frame (e/Å²), or None when the file gives none."""
        return self.entries[0].dose_per_raw_frame_e_A2

    def fraction_sizes(self, n_raw: int) -> tuple[int, ...]:
        """Raw frames in each fraction of a movie of ``n_raw`` raw frames, in order, as
        MotionCor3 groups them (the module's rules); they add up to ``n_raw``.

        Raises
        ------
        ParameterError
            When ``n_raw`` makes no fraction, or leaves more raw frames over than fractions.
        """
        listed = [entry.raw_frames for entry in self.entries]
        excess = sum(listed) - n_raw
        for i in reversed(range(len(listed))):  # the lines list more: off the last ones
            if excess <= 0:
                break
            cut = min(excess, listed[i])
            listed[i] -= cut
            excess -= cut
        if excess < 0:  # the movie has more: they join the last line
            listed[-1] -= excess
        sizes: list[int] = []
        carried = 0
        for entry, raw_frames in zip(self.entries, listed):
            count, carried = divmod(raw_frames + carried, entry.per_fraction)
            sizes.extend([entry.per_fraction] * count)
        first = self.entries[0]
        if not sizes:
            raise ParameterError(f"frame integration file {self.source} makes no fraction of "
                                 f"the movie's {n_raw} raw frames (its first line sums "
                                 f"{first.per_fraction} of {first.raw_frames})")
        if carried > len(sizes):  # MotionCor3 would add one to more fractions than it made
            made = f"{len(sizes)} fraction{'s' * (len(sizes) > 1)}"
            raise ParameterError(f"frame integration file {self.source} makes {made} of the "
                                 f"movie's {n_raw} raw frames: the {carried} left over are "
                                 f"more than its {made} can take (one each)")
        for i in range(carried):  # one each to the last fractions
            sizes[len(sizes) - 1 - i] += 1
        return tuple(sizes)

    def to_record(self) -> dict[str, object]:
        """The entries as the motion record keeps them (the file's three columns)."""
        return {"file": self.source,
                "entries": [[e.raw_frames, e.per_fraction, e.dose_per_raw_frame_e_A2]
                            for e in self.entries]}


def _entry(fields: list[str], where: str) -> IntegrationEntry:
    try:
        raw, per = int(fields[0]), int(fields[1])
        dose = float(fields[2]) if len(fields) == 3 else None
    except ValueError:
        raise ParameterError(f"{where}: expected 'RAW_FRAMES PER_FRACTION [DOSE]' (two whole "
                             f"numbers and a dose in e/Å²), got {' '.join(fields)!r}") from None
    if raw < 1 or per < 1:
        raise ParameterError(f"{where}: raw frames and raw frames per fraction must be >= 1, "
                             f"got {raw} and {per}")
    if dose is not None and not (math.isfinite(dose) and dose >= 0):
        raise ParameterError(f"{where}: the dose per raw frame must be a number >= 0 e/Å², "
                             f"got {fields[2]}")
    return IntegrationEntry(raw, per, dose)


def parse_frame_integration(text: str, source: str = "") -> FrameIntegration:
    """The entries of a frame integration file's ``text`` (module docstring); ``source``
    names it in messages. A dose of 0 on every line is no dose (as MotionCor2 takes it).

    Raises
    ------
    ParameterError
        One line naming the source, the line number and what is wrong.
    """
    entries: list[IntegrationEntry] = []
    columns = None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"frame integration file {source} line {number}"
        if len(fields) not in (2, 3):
            raise ParameterError(f"{where}: expected 'RAW_FRAMES PER_FRACTION [DOSE]', got "
                                 f"{len(fields)} values")
        if columns is not None and len(fields) != columns:
            raise ParameterError(f"{where}: {len(fields)} values where the lines before have "
                                 f"{columns}: give the dose on every line or on none")
        columns = len(fields)
        entries.append(_entry(fields, where))
    doses = {e.dose_per_raw_frame_e_A2 for e in entries}
    if doses == {0.0}:  # MotionCor2: no dose in the file
        entries = [IntegrationEntry(e.raw_frames, e.per_fraction) for e in entries]
    elif len(doses) > 1:
        listed = ", ".join(f"{d:g}" for d in sorted(d for d in doses if d is not None))
        raise ParameterError(f"frame integration file {source}: the entries' doses differ "
                             f"({listed} e/Å² per raw frame): MotionCor2/3 then sum no raw "
                             "frames; give one dose per raw frame (or a frame mdoc's "
                             "FrameDosesAndNumber)")
    return FrameIntegration(tuple(entries), source)


def read_frame_integration(path: str | Path) -> FrameIntegration:
    """:func:`parse_frame_integration` of the file at ``path``.

    Raises
    ------
    ParameterError
        The file cannot be read, is not text, is too large, or its content is refused.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ParameterError(f"frame integration file {path}: cannot be read "
                             f"({exc.strerror or exc})") from None
    if len(data) > _MAX_FILE_BYTES:
        raise ParameterError(f"frame integration file {path}: larger than 1 MiB, not a "
                             "frame integration file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ParameterError(f"frame integration file {path}: not text") from None
    return parse_frame_integration(text, str(path))
