"""The daemon's configuration: a frozen :class:`Config` from a TOML file, then command-line flags.

Every command-line option ``--some-option`` of ``motionwatch watch`` (the correction options
shared with ``motionwatch correct`` included) has the TOML key ``some_option`` (``some-option``
is accepted too), at the top level of the file; flags given on the command line override the
file. Options that exclude each other (``--dose-per-frame`` / ``--total-dose``, ``--eer-group`` /
``--eer-dose-per-fraction``: the parser's mutually exclusive groups) follow the command line: a
flag also clears the file's value of the other options of its group, and two of them in the
file are an error, as on the command line. All problems (unknown keys, wrong types,
out-of-range values, a missing gain reference, an unreadable watch folder, an output folder that
cannot be written, a value of the wrong TOML type or count) are collected and reported together
by :class:`ConfigError`; ``motionwatch watch`` then exits with status 78 (EX_CONFIG), which
systemd is told not to restart on, having created no folder. Path options may start with ``~``;
relative paths are taken from the working folder.

Example ``session.toml``::

    out = "/data/session/motioncorr"
    gain = "/data/session/gain.mrc"
    dose_per_frame = 1.2
    pixel_size = 0.83
    workers = 2
    settle_time = 5.0
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from correction.write import plain, write_probe_error

from daemon.intake.discover import METADATA_PATTERNS, MOVIE_PATTERNS
from daemon.settings.optics import optics_problems
from daemon.settings.output_folder import output_folder_problem

__all__ = ["Config", "ConfigError", "Unreachable", "add_watch_arguments", "finalize_parser",
           "load_config", "make_folders"]


#: most worker processes a configuration may ask for (each holds a movie's frames in memory)
MAX_WORKERS = 256


class Unreachable(str):
    """A configuration problem that the file system's state may mend: a folder or file it names
    that does not exist, cannot be listed, created or written (a share not mounted yet, or gone
    for a while), as opposed to a wrong value."""


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` lists every one found (one line each).
    ``unreachable_only``: every problem is :class:`Unreachable` (the command then exits
    :data:`daemon.exitcodes.UNAVAILABLE`, which systemd restarts, not ``CONFIG``)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        self.unreachable_only = bool(self.problems) and all(
            isinstance(p, Unreachable) for p in self.problems)
        what = ("out of reach (exits 69: systemd starts it again)" if self.unreachable_only
                else "invalid configuration")
        super().__init__(f"{what}:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``motionwatch watch`` runs with.

    Attributes
    ----------
    watch_dir, out_dir, state_dir : Path
        Watched folder; output folder; folder of the state database (default: ``out_dir``).
        Made absolute (from the working folder) when the configuration is built, as the
        scratch folder: the state database records absolute paths, whoever built it (the
        ``demo`` given ``./folder``), so a later ``watch`` or ``status`` finds its movies.
    params : CorrectionParams
        Base correction parameters (per-movie metadata may override the dose).
    workers : int
        Worker processes.
    settle_time_s : float
        Size and mtime must hold for this long (s) across >= 2 scans.
    scan_interval_s : float
        Period of the full rescan (s).
    incomplete_grace_s : float
        A settled movie that stays incomplete this long (s) is quarantined.
    require_frame_mdoc : bool
        Wait for SerialEM's per-movie frame ``.mdoc`` before reading a movie.
    frame_mdoc_gain : bool
        Without a configured gain, correct a movie with the gain reference its frame mdoc
        names (:mod:`daemon.intake.frame_gain`).
    polling : {"auto", "on", "off"}
    movie_patterns, metadata_patterns : tuple of str
    movie_timeout_s : float
        A worker running longer on one movie is killed (s).
    max_attempts : int
        Failures (crash, timeout, error) before a movie is quarantined.
    retry_delay_s : float
        Wait before retrying a failed movie (s); doubled per failure, capped at 300 s.
    heartbeat_s : float
        Period of heartbeat events and of the state written for ``motionwatch status`` (s).
    log_level : str
    exit_when_idle_s : float or None
        Stop by itself after this long with nothing pending or running (tests, batch use).
    read_ahead : bool
        While every worker is busy, have the kernel read the movie next in line into the page
        cache (local workers only; :mod:`daemon.work.readahead`).
    scratch_dir : Path or None
        Where a compressed movie too large to decode in memory is held while it is corrected
        (``correct_movie``'s ``scratch_dir``); None: its output folder.
    options : dict
        Every merged option by ``dest`` (defaults, then TOML, then flags), including options
        added to the ``watch`` parser by integrations (publisher, systemd): they build their own
        settings from here.
    """

    watch_dir: Path
    out_dir: Path
    state_dir: Path
    params: Any
    workers: int = 1
    settle_time_s: float = 5.0
    scan_interval_s: float = 2.0
    incomplete_grace_s: float = 120.0
    require_frame_mdoc: bool = False
    frame_mdoc_gain: bool = True
    polling: str = "auto"
    movie_patterns: tuple[str, ...] = MOVIE_PATTERNS
    metadata_patterns: tuple[str, ...] = METADATA_PATTERNS
    movie_timeout_s: float = 1800.0
    max_attempts: int = 3
    retry_delay_s: float = 10.0
    heartbeat_s: float = 10.0
    log_level: str = "info"
    exit_when_idle_s: float | None = None
    read_ahead: bool = True
    scratch_dir: Path | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("watch_dir", "out_dir", "state_dir", "scratch_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser().absolute())

    def describe(self) -> dict[str, Any]:
        """The effective configuration as JSON-serialisable values (logged at start-up)."""
        import dataclasses

        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "params":
                value = dataclasses.asdict(value)
                value["fingerprint"] = self.params.fingerprint()
            if f.name == "options":
                continue  # the same values, already shown by field
            out[f.name] = value
        if "voltage" in self.options and self.options["voltage"] is None:
            out["voltage"] = "each movie's from its metadata, else 300 kV"  # not params' 300
        return plain(out)


_NOT_IN_TOML = {"config", "help"}


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    """The daemon's own options (the correction options come from :mod:`daemon.options`)."""
    g = parser.add_argument_group("watching")
    g.add_argument("watch_dir", type=Path, nargs="?", default=None, metavar="WATCH_DIR",
                   help="folder the detector writes to (or watch_dir = ... in the config)")
    g.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder (may be inside WATCH_DIR; it is never watched)")
    g.add_argument("--config", type=Path, metavar="FILE.toml",
                   help="TOML file; every option has a key (--settle-time -> settle_time)")
    g.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="folder of the state database (default: the output folder)")
    g.add_argument("--scratch", type=Path, default=None, metavar="DIR",
                   help="folder for a compressed movie (LZW TIFF, EER) of more than 1 GiB "
                        "decoded, held there in an unnamed temporary file while it is "
                        "corrected (default: the movie's output folder; give a local disk "
                        "when the output folder is a network share; Dask workers need it too)")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes (default 1)")
    g.add_argument("--settle-time", type=float, default=5.0, metavar="S",
                   help="size and mtime must hold this long across >= 2 scans (default 5 s)")
    g.add_argument("--scan-interval", type=float, default=2.0, metavar="S",
                   help="period of the full rescan (default 2 s)")
    g.add_argument("--incomplete-grace", type=float, default=120.0, metavar="S",
                   help="a movie incomplete and unchanged this long: a whole file of fewer frames "
                        "than expected (a TIFF or EER, an MRC whose header says so) is "
                        "corrected with them; a file shorter than its own header (an MRC cut "
                        "in a frame) or that does not read is quarantined (default 120 s)")
    g.add_argument("--require-frame-mdoc", action="store_true", default=False,
                   help="wait for SerialEM's per-movie <movie>.mdoc before reading a movie")
    g.add_argument("--polling", choices=("auto", "on", "off"), default="auto",
                   help="rescans only (on), inotify events too (off), or by file system (auto)")
    g.add_argument("--movie-patterns", nargs="+", default=list(MOVIE_PATTERNS), metavar="GLOB",
                   help="movie file patterns (default: %(default)s)")
    g.add_argument("--metadata-patterns", nargs="+", default=list(METADATA_PATTERNS),
                   metavar="GLOB", help="metadata file patterns (default: %(default)s)")
    g.add_argument("--movie-timeout", type=float, default=1800.0, metavar="S",
                   help="kill a worker that spends longer on one movie (default 1800 s)")
    g.add_argument("--max-attempts", type=int, default=3, metavar="N",
                   help="failures before a movie is quarantined (default 3)")
    g.add_argument("--retry-delay", type=float, default=10.0, metavar="S",
                   help="first wait before a retry, doubled each time (default 10 s)")
    g.add_argument("--heartbeat", type=float, default=10.0, metavar="S",
                   help="heartbeat and status period (default 10 s)")
    g.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    g.add_argument("--exit-when-idle", type=float, default=None, metavar="S",
                   help="stop after S seconds with nothing to do (tests and batch runs)")
    g.add_argument("--no-read-ahead", dest="read_ahead", action="store_false", default=True,
                   help="do not read the movie next in line into the page cache while the "
                        "workers are busy (read-ahead is on by default; local workers only)")


def finalize_parser(parser: argparse.ArgumentParser) -> None:
    """Make flags distinguishable from defaults, so a TOML value loses only to a given flag.

    Call after every option is added. Each optional action's default moves into
    ``args._config_defaults`` and the action's default becomes ``SUPPRESS`` (so the namespace
    holds only flags really given); ``%(default)s`` in help texts is expanded first. Required
    options and groups become optional: their value may come from the TOML file, and a missing
    one is reported by :func:`load_config` with the other problems.
    """
    defaults: dict[str, Any] = {}
    for action in parser._actions:  # noqa: SLF001
        if not action.option_strings or action.dest in ("help", argparse.SUPPRESS):
            continue
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):  # noqa: SLF001
            continue
        if action.help and "%(default)" in action.help:
            action.help = action.help.replace("%(default)s", str(action.default))
        if action.default is not argparse.SUPPRESS:
            defaults[action.dest] = action.default
        action.default = argparse.SUPPRESS
        action.required = False
    for group in parser._mutually_exclusive_groups:  # noqa: SLF001
        group.required = False
    parser.set_defaults(_config_defaults=defaults, _config_parser=parser)


_KINDS = {int: ("an integer", "integers"), float: ("a number", "numbers"),
          Path: ("a path (a string)", "paths (strings)")}


def _toml_type(value: Any) -> str:
    """The TOML name of a parsed value's type, for messages."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}
    return names.get(type(value), f"a TOML {type(value).__name__}")  # date, time, datetime


def _expected(action: argparse.Action) -> str:
    """What the TOML key of ``action`` must hold, in words (``a list of 2 integers``)."""
    one, many = _KINDS.get(action.type, ("a string", "strings"))
    if isinstance(action.nargs, int):
        return f"a list of {action.nargs} {many}"
    if action.nargs == "+":
        return f"a list of one or more {many}"
    if action.nargs == "*":
        return f"a list of {many}"
    return one


def _convert_item(action: argparse.Action, item: Any) -> Any:
    """One TOML scalar as the flag's ``type`` makes it; ValueError when TOML gave another type.

    Numbers must be TOML numbers (an integer option takes a whole float too), paths TOML
    strings; a plain-text option takes the text of a number or a TOML time too
    (``executor_walltime = 08:00:00``), and an option with its own type (``--gain-flip``) the
    text of any scalar (``gain_flip = 1`` is MotionCor2's -FlipGain 1).
    """
    if isinstance(item, (bool, dict, list)):
        raise ValueError(item)
    if action.type is int:
        if isinstance(item, float) and item.is_integer():
            return int(item)
        if not isinstance(item, int):
            raise ValueError(item)
        return item
    if action.type is float:
        if not isinstance(item, (int, float)):
            raise ValueError(item)
        return float(item)
    if action.type is Path:
        if not isinstance(item, str) or not item.strip():  # "": the working folder, by chance
            raise ValueError(item)
        return Path(item)
    if action.type is None:  # plain text: a number or a TOML time is its text (optics_group = 3)
        if isinstance(item, (datetime.date, datetime.time)):
            return item.isoformat()
        return item if isinstance(item, str) else str(item)
    return action.type(item if isinstance(item, str) else str(item))


def _naming_the_file(problems: list[Any], from_file: dict[str, str], given: set[str],
                     config_file: Any) -> list[Any]:
    """The problems of values the config file set, with the file and its key said after them
    (``--dose-per-frame must be > 0 ... (config file /etc/motionwatch/session.toml:
    dose_per_frame)``): under systemd the command line has only ``--config``, and the flag
    alone named no file; problems of flags given, and others, as they are."""
    out: list[Any] = []
    for problem in problems:
        if type(problem) is str and config_file is not None:
            dest = problem.partition(" ")[0].lstrip("-").replace("-", "_")
            if dest in from_file and dest not in given:
                problem = f"{problem} (config file {config_file}: {from_file[dest]})"
        out.append(problem)
    return out


def _convert(action: argparse.Action, key: str, value: Any, problems: list[str], *,
             as_flag: bool = False) -> Any:
    """Turn a TOML value into what argparse would have produced for the flag.

    A value of the wrong TOML type or count is one problem naming the key and what it needs;
    ``argparse.SUPPRESS`` is returned then.
    """
    where = f"config key {key!r}"
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, got {value!r}")
            return argparse.SUPPRESS
        if as_flag and isinstance(action, argparse.BooleanOptionalAction):
            return not value  # no_exposure_filtered = true
        if as_flag:  # keyed by the flag's name (no_hot_pixels = true): true means "given"
            return action.const if value else argparse.SUPPRESS
        return value
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    items = value if isinstance(value, list) else [value]
    wrong_count = (not many and isinstance(value, list)
                   or isinstance(action.nargs, int) and len(items) != action.nargs
                   or action.nargs == "+" and not items)
    try:
        if wrong_count:
            raise ValueError(value)
        converted = [_convert_item(action, item) for item in items]
    except ValueError:
        if action.type is Path and isinstance(value, str) and not value.strip():
            problems.append(f"{where}: an empty path ('' would be the working folder of the "
                            "moment): give the path, or leave the key out")
            return argparse.SUPPRESS
        got = repr(value) if isinstance(value, (str, int, float, list, dict)) else value
        problems.append(f"{where}: expected {_expected(action)}, got {got} ({_toml_type(value)})")
        return argparse.SUPPRESS
    except argparse.ArgumentTypeError as exc:  # the option's own type refused the text
        problems.append(f"{where}: {exc}")
        return argparse.SUPPRESS
    for item in converted:
        if action.choices is not None and item not in action.choices:
            problems.append(f"{where}: {item!r} is not one of {', '.join(map(str, action.choices))}")
            return argparse.SUPPRESS
    return converted if many else converted[0]


def _exclusive_partners(parser: argparse.ArgumentParser) -> dict[str, tuple[str, ...]]:
    """For each option of a mutually exclusive group, the ``dest`` of the others in its group.

    :func:`finalize_parser` makes the groups optional but keeps them, so argparse still refuses
    two of them on the command line; :func:`load_config` applies the same groups to the file.
    """
    partners: dict[str, tuple[str, ...]] = {}
    for group in parser._mutually_exclusive_groups:  # noqa: SLF001
        dests = [a.dest for a in group._group_actions]  # noqa: SLF001
        for dest in dests:
            partners[dest] = partners.get(dest, ()) + tuple(d for d in dests if d != dest)
    return partners


def _check_dir_readable(path: Path, what: str, problems: list[str]) -> None:
    if not path.exists():
        problems.append(Unreachable(f"{what} {path}: does not exist"))
    elif not path.is_dir():
        problems.append(f"{what} {path}: not a folder")
    else:
        try:
            with os.scandir(path) as it:
                next(it, None)
        except OSError as exc:
            problems.append(Unreachable(f"{what} {path}: cannot be listed "
                                        f"({exc.strerror or exc})"))


def _check_dir_creatable(path: Path, what: str, problems: list[str]) -> None:
    """Whether ``path`` is a writable folder or could be created as one; creates nothing."""
    if os.path.lexists(path):
        if not os.path.isdir(path):
            problems.append(f"{what} {path}: not a folder")
        elif not os.access(path, os.W_OK | os.X_OK):  # also a share's mount point, unmounted
            problems.append(Unreachable(f"{what} {path}: not writable ({_denial(path)})"))
        return
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not os.path.isdir(parent):
        problems.append(f"{what} {path}: cannot be created ({parent} is not a folder)")
    elif not os.access(parent, os.W_OK | os.X_OK):
        problems.append(Unreachable(f"{what} {path}: cannot be created ({_denial(parent)} in "
                                    f"{parent})"))


def _denial(path: Path) -> str:
    """Why a folder cannot be written: a read-only file system (a read-only mount, or under
    systemd's ``ProtectSystem=strict`` a folder missing from ``ReadWritePaths=``) or denied
    permission."""
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return ("read-only file system; under systemd, is it in the unit's ReadWritePaths=?"
            if read_only else "permission denied")


def _make_dir_writable(path: Path, what: str, problems: list[str]) -> None:
    """Create ``path`` (and its parents) and write a probe file into it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problems.append(Unreachable(f"{what} {path}: cannot be created ({exc.strerror or exc})"))
        return
    if not path.is_dir():
        problems.append(f"{what} {path}: not a folder")
        return
    exc = write_probe_error(path)
    if exc is not None:
        problems.append(Unreachable(f"{what} {path}: not writable ({exc.strerror or exc})"))


def _written_folders(out_dir: Path | None, state_dir: Path | None, scratch_dir: Path | None
                     ) -> list[tuple[Path, str]]:
    """The folders the daemon writes to, each with its name in messages."""
    folders = [] if out_dir is None else [(out_dir, "output folder")]
    if state_dir is not None and state_dir != out_dir:
        folders.append((state_dir, "state folder"))
    if scratch_dir is not None:
        folders.append((scratch_dir, "scratch folder"))
    return folders


def folders_to_make(config: Config) -> list[Path]:
    """The outermost missing folder on the way to each folder :func:`make_folders` makes (for
    :func:`remove_empty_folders` when start-up fails after it)."""
    missing: list[Path] = []
    for path, _ in _written_folders(config.out_dir, config.state_dir, config.scratch_dir):
        outermost = None
        for folder in (path, *path.parents):
            if folder.exists():
                break
            outermost = folder
        if outermost is not None and outermost not in missing:
            missing.append(outermost)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each of ``folders`` with the empty folders inside it, deepest first; a folder
    holding any file stays (whatever wrote it is kept)."""
    for top in folders:
        if not top.is_dir() or top.is_symlink():
            continue
        for root, _dirs, _files in os.walk(top, topdown=False):
            try:
                os.rmdir(root)
            except OSError:
                pass


def make_folders(config: Config) -> None:
    """Create the output, state and scratch folders of a valid ``config``; check they are writable.

    Raises
    ------
    ConfigError
        A folder that cannot be created or written.
    """
    problems: list[str] = []
    for path, what in _written_folders(config.out_dir, config.state_dir, config.scratch_dir):
        _make_dir_writable(path, what, problems)
    if problems:
        raise ConfigError(problems)


def _absolute_paths(merged: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Every path option (folders, gain and references, keys) with ``~`` expanded, made absolute.

    A relative path is taken from the working folder at start-up, for the TOML file's values
    as for the flags'.
    """
    for action in parser._actions:  # noqa: SLF001
        value = getattr(merged, action.dest, None)
        if action.type is Path and value is not None:
            setattr(merged, action.dest, Path(value).expanduser().absolute())


def _each_parameter_problem(values: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """What is wrong with each correction option given on its own (the others at their
    defaults): every bad value is said at once, not the first the parameters refuse (``--bin
    0 --voltage 0 --throw -1`` named the voltage alone, then the bin at the next start ...).
    Empty when each is valid alone (the fault is in a combination: said as it is)."""
    from daemon.settings.correction_options import params_from_args

    found: list[str] = []
    for dest, value in values.items():
        if dest not in defaults or value == defaults[dest]:
            continue
        alone = argparse.Namespace(**{**defaults, dest: value})
        try:
            params_from_args(alone, dose_required=False)
        except (ValueError, OSError) as exc:
            if str(exc) not in found:
                found.append(str(exc))
    return found


def load_config(args: argparse.Namespace, *, make_output_folders: bool = True) -> Config:
    """Merge defaults, the TOML file named by ``--config``, then the flags; validate everything.

    Path options have ``~`` expanded and are made absolute. Nothing is created unless the whole
    configuration is valid: the output, state and scratch folders are then created (by
    :func:`make_folders`; ``make_output_folders=False`` leaves that to the caller, to check more
    first).

    Parameters
    ----------
    args : Namespace
        Parsed by a parser prepared with :func:`add_watch_arguments`, the correction options
        and :func:`finalize_parser` (which records the defaults and the actions: the actions
        define the TOML keys and their types).

    Raises
    ------
    ConfigError
        With every problem found.
    """
    from daemon.settings.correction_options import params_from_args

    problems: list[str] = []
    given = {k: v for k, v in vars(args).items()
             if not k.startswith("_") and not (k == "watch_dir" and v is None)}
    merged = argparse.Namespace(watch_dir=None, **args._config_defaults)  # noqa: SLF001
    parser = args._config_parser  # noqa: SLF001
    keys: dict[str, tuple[argparse.Action, bool]] = {}
    for action in parser._actions:  # noqa: SLF001
        if action.dest in _NOT_IN_TOML or action.dest == argparse.SUPPRESS:
            continue
        keys[action.dest] = (action, False)
        for option in action.option_strings:
            name = option.lstrip("-").replace("-", "_")
            keys.setdefault(name, (action, True))

    from_file: dict[str, str] = {}  # dest -> the key that set it in the file
    partners = _exclusive_partners(parser)
    refused: set[str] = set()  # dests whose value in the file was refused (already reported)
    file_not_finite: dict[str, float] = {}  # dest -> inf or nan the file gives
    config_file = getattr(args, "config", None)
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                table = tomllib.load(fh)
        except OSError as exc:  # without the file, what else is missing means nothing
            raise ConfigError([f"config file {config_file}: {exc.strerror or exc}"]) from None
        except tomllib.TOMLDecodeError as exc:
            bom = Path(config_file).read_bytes()[:3] == b"\xef\xbb\xbf"
            hint = "; it starts with a byte-order mark: save it as UTF-8 without one" if bom else ""
            raise ConfigError([f"config file {config_file}: not valid TOML ({exc}){hint}"]) \
                from None
        except UnicodeDecodeError as exc:  # a traceback and status 1: systemd restarted it
            raise ConfigError([f"config file {config_file}: not UTF-8 text (byte "
                               f"{exc.start}: {exc.reason}): TOML files are UTF-8; save it so "
                               "(Notepad: UTF-8)"]) from None
        for raw_key, value in table.items():
            dest = raw_key.replace("-", "_")
            action, as_flag = keys.get(dest, (None, False))
            if action is None:
                close = difflib.get_close_matches(dest, keys, n=1)
                problems.append(f"config file {config_file}: unknown key {raw_key!r}"
                                + (f" (did you mean {close[0]!r}?)" if close else "")
                                + "; keys are the long option names, e.g. settle_time for "
                                  "--settle-time")
                continue
            clash = [from_file[d] for d in partners.get(action.dest, ()) if d in from_file]
            if clash:
                problems.append(f"config keys {clash[0]!r} and {raw_key!r} exclude each other: "
                                f"give only one")
                continue
            before = len(problems)
            converted = _convert(action, raw_key, value, problems, as_flag=as_flag)
            if len(problems) > before:
                refused.add(action.dest)
            elif converted is not argparse.SUPPRESS:
                setattr(merged, action.dest, converted)
                from_file[action.dest] = raw_key
                if isinstance(converted, float) and not math.isfinite(converted):
                    file_not_finite[action.dest] = converted
    for dest, value in given.items():
        setattr(merged, dest, value)
        for other in partners.get(dest, ()):  # a flag replaces the file's exclusive partner too
            if other not in given:
                setattr(merged, other, args._config_defaults.get(other))  # noqa: SLF001
    _absolute_paths(merged, parser)

    not_finite = {dest for dest, value in vars(merged).items()  # inf or nan: never a setting
                  if isinstance(value, float) and not math.isfinite(value)}  # (inf waits for ever)

    def need(condition: bool, message: str, dest: str | None = None) -> None:
        if not condition and dest not in not_finite:  # a value not finite is said once
            problems.append(message)

    need(merged.out is not None or "out" in refused,
         "no output folder: give --out DIR (or out = ... in the config)")
    for dest in sorted(not_finite):
        problems.append(f"{dest} must be a finite number, got {getattr(merged, dest)}")
    for dest in sorted(set(file_not_finite) - not_finite):  # a flag replaced it: still wrong
        problems.append(f"{dest} must be a finite number, got {file_not_finite[dest]} "
                        f"(config file {config_file}: {from_file[dest]})")
    for dest in ("movie_patterns", "metadata_patterns"):
        for pattern in getattr(merged, dest):
            # matched against file names only: a folder part would match nothing, silently
            name = re.split(r"[/\\]", pattern)[-1]
            need(name == pattern, f"{dest} {pattern!r}: a pattern matches file names, in every "
                                  f"folder below the watch folder: give {name!r}", dest)
    need(merged.workers >= 1, f"workers must be >= 1, got {merged.workers}")
    need(merged.workers <= MAX_WORKERS,
         f"workers must be <= {MAX_WORKERS} (a worker process each, ~0.1-2 GB), got "
         f"{merged.workers}")
    for dest, least, unit in (("settle_time", 0, " s"), ("scan_interval", None, " s"),
                              ("incomplete_grace", 0, " s"), ("movie_timeout", None, " s"),
                              ("max_attempts", 1, ""), ("retry_delay", 0, " s"),
                              ("heartbeat", None, " s"), ("exit_when_idle", 0, " s"),
                              ("worker_max_movies", 0, " (0: never replace a worker)")):
        value = getattr(merged, dest, None)
        if value is None:  # exit_when_idle: never; an integration's option not added
            continue
        if least is None:  # above 0
            need(value > 0, f"{dest} must be > 0{unit}, got {value}", dest)
        else:
            need(value >= least, f"{dest} must be >= {least}{unit}, got {value}", dest)

    params = None
    # a value said not finite above is at its default in what checks it again, not said twice
    finite = {dest: args._config_defaults.get(dest) if dest in not_finite else value  # noqa: SLF001
              for dest, value in vars(merged).items()}
    if finite.get("fm_int_file") is not None and not Path(finite["fm_int_file"]).exists():
        finite["fm_int_file"] = None  # said below, as a file out of reach (a share not mounted?)
    try:
        params = params_from_args(argparse.Namespace(**finite), dose_required=False)
    except (ValueError, OSError) as exc:  # ParameterError / CorrectionError are ValueErrors
        problems.extend(_each_parameter_problem(finite, args._config_defaults)  # noqa: SLF001
                        or [str(exc)])
    problems.extend(optics_problems(finite))  # recorded with every movie, hand-off or not

    for name, what in (("gain", "gain reference"), ("dark", "dark reference"),
                       ("defects", "defect map"), ("fm_int_file", "frame integration file")):
        ref = getattr(merged, name, None)
        if ref is None:
            continue
        if not Path(ref).exists():  # on a share not mounted yet?
            problems.append(Unreachable(f"{what} {ref}: does not exist"))
        elif not Path(ref).is_file():
            problems.append(f"{what} {ref}: not a file")
    gain_params = getattr(params, "gain", None)
    references = [] if gain_params is None else [
        path for path in (gain_params.gain_path, gain_params.dark_path, gain_params.defects_path)
        if path is not None]
    if references and all(Path(path).is_file() for path in references):  # read as correct does
        try:
            from correction.gain import load_gain_reference

            load_gain_reference(gain_params)
        except (ValueError, OSError) as exc:  # GainReferenceError is a ValueError
            problems.append(str(exc))

    watch_dir = out_dir = state_dir = None
    if merged.watch_dir is None:
        need("watch_dir" in refused,
             "no watch folder: give WATCH_DIR (or watch_dir = ... in the config)")
    else:
        watch_dir = merged.watch_dir
        _check_dir_readable(watch_dir, "watch folder", problems)
    if merged.out is not None:
        out_dir = merged.out
        state_dir = merged.state_dir or out_dir
        problem = output_folder_problem(out_dir, watch_dir, merged.movie_patterns)
        if problem is not None:
            problems.append(problem)
    scratch_dir = merged.scratch
    for path, what in _written_folders(out_dir, state_dir, scratch_dir):
        _check_dir_creatable(path, what, problems)

    if problems:
        raise ConfigError(_naming_the_file(problems, from_file, set(given), config_file))
    config = Config(
        watch_dir=watch_dir, out_dir=out_dir, state_dir=state_dir, params=params,
        workers=merged.workers, settle_time_s=float(merged.settle_time),
        scan_interval_s=float(merged.scan_interval),
        incomplete_grace_s=float(merged.incomplete_grace),
        require_frame_mdoc=bool(merged.require_frame_mdoc),
        frame_mdoc_gain=bool(merged.frame_mdoc_gain), polling=merged.polling,
        movie_patterns=tuple(merged.movie_patterns),
        metadata_patterns=tuple(merged.metadata_patterns),
        movie_timeout_s=float(merged.movie_timeout), max_attempts=int(merged.max_attempts),
        retry_delay_s=float(merged.retry_delay), heartbeat_s=float(merged.heartbeat),
        log_level=merged.log_level,
        exit_when_idle_s=None if merged.exit_when_idle is None else float(merged.exit_when_idle),
        read_ahead=bool(merged.read_ahead), scratch_dir=scratch_dir,
        options=dict(vars(merged)),
    )
    if make_output_folders:
        make_folders(config)
    return config
