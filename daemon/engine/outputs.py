"""A movie's outputs on disk: which complete set can be adopted, temporaries left by a kill, and
the summary of a finished movie kept in its row."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from correction.report import read_motion_record
from correction.stems import (fit_output_stem, folder_file_stem, stem_recorded_for_another,
                              stems_sharing_an_output)
from daemon.events import SOURCE_KEY, MovieKey
from daemon.system.processes import process_exists

__all__ = ["OutputStems", "movie_stem", "source_identity", "find_adoptable_outputs",
           "clean_temporary_outputs", "remove_partial_outputs", "summarise"]


def movie_stem(path: Path) -> str:
    """Output stem of a movie: its name without the last suffix, shortened when too long to
    name its outputs (:func:`correction.stems.fit_output_stem`)."""
    return fit_output_stem(Path(path).stem)


def source_identity(key: MovieKey, content: str | None = None) -> dict[str, Any]:
    """The motion record's ``source_file`` object: which movie version, with which parameters,
    and the file's content fingerprint when known (``daemon.intake.content``: another file of
    the same name, size and mtime is told apart)."""
    identity = {"path": key.path, "size": key.size, "mtime_ns": key.mtime_ns,
                "params_fingerprint": key.fingerprint}
    return identity if content is None else {**identity, "content": content}


def _mrc_complete(path: Path) -> bool:
    try:
        from correction.io.complete import check_complete

        return bool(check_complete(path).complete)
    except Exception:  # noqa: BLE001 - unreadable means not adoptable
        return False


def find_adoptable_outputs(key: MovieKey, out_dir: Path, stem: str,
                           content: str | None = None) -> dict[str, str] | None:
    """Outputs on disk of exactly this movie version and parameters, all complete; else None.
    With ``content`` (the file's content fingerprint), a record of another file's content is
    not this movie's (a record written before records kept it is taken on the rest)."""
    motion = out_dir / f"{stem}.motion.json"
    record = read_motion_record(motion)
    source = record.get(SOURCE_KEY) if record is not None else None
    if not isinstance(source, dict) or \
            {k: v for k, v in source.items() if k != "content"} != source_identity(key):
        return None
    if content is not None and source.get("content") not in (None, content):
        return None
    listed = record.get("outputs") or {}
    if not isinstance(listed, dict) or not listed:
        return None
    outputs: dict[str, str] = {}
    for name, value in listed.items():
        path = Path(value)
        path = path if path.is_absolute() else out_dir / path
        if not path.is_file():
            return None
        if path.suffix == ".mrc" and not _mrc_complete(path):
            return None
        outputs[name] = str(path)
    outputs.setdefault("motion", str(motion))
    return outputs


def _remove(paths: Iterable[Path]) -> list[Path]:
    """Unlink each path; the ones removed (one that cannot be is left)."""
    removed = []
    for path in paths:
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def clean_temporary_outputs(out_dir: Path) -> list[Path]:
    """Remove writers' temporaries (``.<name>.tmp-<pid>``) left by a killed process."""
    found = []
    for folder, dirs, files in os.walk(out_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / name for name in files
                  if name.startswith(".") and ".tmp-" in name]
    return _remove(found)


def remove_partial_outputs(out_dir: Path, stem: str, *,
                           dead_writers_only: bool = False) -> list[Path]:
    """Remove the temporaries of one movie's output set (``.<output>.tmp-<pid>``: the images,
    the pictures, the record, its motion STAR), left when its writer was killed while writing
    it; ``dead_writers_only``: only those whose writer no longer runs (another ``correct``
    run writing the same folder keeps its own: :func:`_writer_runs`)."""
    import glob

    from correction.stems import OUTPUT_TAILS

    found = [path for tail in OUTPUT_TAILS
             for path in Path(out_dir).glob(f".{glob.escape(stem + tail)}.tmp-*")]
    if dead_writers_only:
        found = [path for path in found if not _writer_runs(path)]
    return _remove(found)


#: seconds after which a writer's temporary left unchanged is taken as left by a dead writer,
#: whatever runs under its pid: a set is written and renamed into place in seconds
STALE_TEMPORARY_S = 3600.0


def _writer_runs(temporary: Path) -> bool:
    """Whether the writer of a temporary may still run: the process whose pid ends its name
    runs (:func:`process_exists`) and the temporary changed within
    :data:`STALE_TEMPORARY_S`. A pid alone cannot tell: a writer killed in a container (its
    own PID namespace, where it may be pid 1) or a pid since reused names a process that
    runs here."""
    pid = temporary.name.rsplit(".tmp-", 1)[-1].split(".")[0]  # .<name>.tmp-<pid>[.<k>]
    if not (pid.isdigit() and process_exists(int(pid))):
        return False
    try:
        changed_s = temporary.stat().st_mtime
    except OSError:
        return False  # gone meanwhile
    return time.time() - changed_s < STALE_TEMPORARY_S


def summarise(record: Mapping[str, Any], timings_s: Mapping[str, float]) -> dict[str, Any]:
    """The per-movie summary kept in the ledger and logged: drift statistics and timings."""
    keep = ("frames", "shape", "pixel_size_A", "drift", "dose", "ran_on")
    out = {k: record[k] for k in keep if k in record}
    if isinstance(out.get("dose"), dict):
        out["dose"] = {k: v for k, v in out["dose"].items() if k != "per_frame_e_A2"}
    out["timings_s"] = dict(timings_s)
    return out


class OutputStems:
    """Which movie writes which output stem into which folder, so that ``x.mrc`` and ``x.tif``
    in one folder never write the same outputs.

    A movie gets its plain stem (``x``: the name without its last suffix, as MotionCor2 and RELION
    name outputs) unless a *different* movie already owns that stem in that output folder, or a
    stem whose outputs share a name with it (``x`` and ``x_DW`` share ``x_DW.mrc``:
    :func:`correction.stems.stems_sharing_an_output`); it then gets the stem with its extension
    (``x_tif``, then ``x_tif_2`` ...). Owners come from the ledger (each row's stored
    stem), so the choice survives restarts and never renames outputs already written.
    """

    def __init__(self) -> None:
        self._owner: dict[tuple[str, str], str] | None = None

    def _load(self, ledger: Any) -> dict[tuple[str, str], str]:
        owner: dict[tuple[str, str], str] = {}
        for row in ledger.rows():
            if row.key.size < 0:
                continue
            metadata = row.peek_metadata()  # every row of the history: none kept decoded
            stem = metadata.get("stem") or movie_stem(Path(row.key.path))
            owner.setdefault((str(Path(row.key.path).parent), stem), row.key.path)
            for name in metadata.get("moved_from") or ():  # its outputs stay there
                owner.setdefault((str(Path(name).parent), stem), row.key.path)
        return owner

    def _foreign_record(self, folder: str, other: str, stem: str, out_dir: Path,
                        movie: Path) -> bool:
        """Whether outputs that share a name with ``stem``'s were recorded in ``out_dir`` by
        someone the ledger does not know (``motionwatch correct`` into this folder, a state
        database started afresh): another stem's (the library refuses to replace them:
        :class:`correction.errors.OutputClashError`), or ``stem``'s own for another movie that
        is still there (``correct`` gave ``grid1/x.mrc`` the stem ``x``; the daemon watching
        ``grid2`` wrote ``grid2/x.mrc`` over them), so the movie takes the next stem."""
        if (folder, other) in self._owner:
            return False
        if other != stem:
            return (Path(out_dir) / f"{other}.motion.json").exists()
        return stem_recorded_for_another(out_dir, stem, movie) is not None

    def moved(self, old: str, new: str, stem: str) -> None:
        """A movie's rows took a new name: it still owns the stem its outputs were written
        under (so a new file under the old name does not overwrite them)."""
        if self._owner is not None and self._owner.get((str(Path(old).parent), stem)) == old:
            self._owner[(str(Path(old).parent), stem)] = new

    def stem_for(self, movie: Path, out_dir: Path, ledger: Any) -> str:
        """The output stem of ``movie`` (its outputs go to ``out_dir``, which mirrors the movie's
        folder, so owners are kept per movie folder); remembered."""
        if self._owner is None:
            self._owner = self._load(ledger)
        plain_stem = Path(movie).stem
        with_ext = f"{plain_stem}_{movie.suffix.lstrip('.').lower()}"
        candidates = (fit_output_stem(c) for c in [plain_stem, with_ext]
                      + [f"{with_ext}_{n}" for n in range(2, 1000)])
        folder = str(Path(movie).parent)
        for stem in candidates:
            if not folder_file_stem(stem) and all(
                    self._owner.get((folder, other), str(movie)) == str(movie)
                    and not self._foreign_record(folder, other, stem, out_dir, movie)
                    for other in stems_sharing_an_output(stem)):
                self._owner[(folder, stem)] = str(movie)
                return stem
        raise ValueError(f"{movie}: no free output stem in {out_dir}")
