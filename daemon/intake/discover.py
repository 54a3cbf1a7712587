"""Finds movies and metadata files: a periodic recursive rescan is the truth, events only wake it.

:func:`scan` lists the tree once (races with the writer are expected: a file that vanishes or
cannot be stat'ed between listing and stat is skipped, never the whole scan). :class:`Discovery`
runs :func:`scan` every ``scan_interval_s`` and earlier when a watchdog event arrives; the event
handler does nothing but wake the scanner. When the observer cannot start (inotify watch limit,
ENOSPC), dies, or the kernel's event queue overflows, discovery logs it and carries on with the
periodic rescans alone. On network file systems (cifs, smb, nfs, fuse, from ``/proc/mounts``)
inotify sees nothing written by other machines, so ``polling="auto"`` uses rescans alone there.

Events
    Only events that can change what a rescan finds wake it (:meth:`Discovery.wakes_for`): a
    file or folder made, renamed or removed, a movie or metadata file closed after writing (or
    any file, in a folder where a movie waits), outside the excluded folders. A detector
    writing a movie gives one
    "modified" event per write, and waking on those rescanned the tree about ten times a second
    for as long as the writing lasted: with 20,000 movies of old sessions in the watched folder
    (0.3 s a scan), the daemon's main loop used 80 % of a core (``benchmarks/
    bench_state_scale.py --events --live-MB 100``). The periodic rescan still finds whatever no
    event announced (a writer that never closes its file, a file system whose events miss).

Listings taken again
    While events arrive, a scan takes a folder's listing from the scan before when its files
    have held still (the same sizes and mtimes) for ``LISTING_STILL_S`` (60 s, more than the
    settle time: a file shown stale has stood still long enough to count as complete without
    the cache), no event (of any kind, a write included) named the folder or a file in it since,
    and the folder's own mtime and ctime are unchanged (:class:`ListingCache`): an old session's
    folders are then neither listed nor stat'ed again, while a folder being acquired into is
    listed at every scan, and so is the folder of any movie the daemon still waits on (to
    settle, to be whole, for its metadata: :meth:`Discovery.scan`'s ``fresh``; the service
    also makes the stillness longer than its settle time and its resolver's mdoc quiet time).
    Folders behind symbolic links (inotify does not follow them) are
    listed at every scan, every folder is listed afresh every ``FULL_SCAN_S`` (30 s) and after
    lost events, and none is taken again once watchdog says it could not watch a folder (the
    inotify watch limit) or while its reading thread is stopped (the watched folder removed:
    it is started again once the folder is there). 40,500 files (20,500 of them movies
    and mdocs) in 506 folders: 0.17-0.26 s a scan listed, 0.015-0.037 s taken again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from daemon.events import Observation, ScanResult

__all__ = [
    "MOVIE_PATTERNS",
    "name_matcher",
    "METADATA_PATTERNS",
    "ScanResult",
    "Discovery",
    "scan",
    "is_temporary_name",
    "filesystem_type",
    "mount_of",
    "needs_polling",
]

MOVIE_PATTERNS: tuple[str, ...] = ("*.mrc", "*.mrcs", "*.tif", "*.tiff", "*.eer")
METADATA_PATTERNS: tuple[str, ...] = ("*.mdoc",)
NETWORK_FS_TYPES = frozenset({"cifs", "smb3", "smbfs", "nfs", "nfs4", "9p", "afs", "ceph", "lustre",
                              "gpfs", "beegfs"})

Polling = Literal["auto", "on", "off"]

#: seconds between scans that list every folder afresh while events spare the others
FULL_SCAN_S = 30.0
#: seconds a folder's files must have held still before its listing is taken again
LISTING_STILL_S = 60.0
#: seconds after an event reader stopped before it is started again (the folder there again)
REARM_S = 5.0
#: event readers started again in one run, at most (one that stops at once is not restarted
#: for ever)
MAX_REARMS = 5

_TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".swp",
                  ".swx", ".lock", ".opents", "~")


def is_temporary_name(name: str) -> bool:
    """True for dotfiles and names writers use while a file is incomplete.

    Dotfiles (``.x.mrc``), editor/transfer temporaries (``x.mrc.tmp``, ``x.mrc.part``,
    ``x.mrc~``, ``#x.mrc#``, ``~$x``) and SerialEM's ``.openTS`` lock files; ``#1.mrc`` is a
    movie (a position numbered so), not an editor's ``#...#``.
    """
    lower = name.lower()
    return name.startswith((".", "~")) or (name.startswith("#") and name.endswith("#")) \
        or lower.endswith(_TEMP_SUFFIXES)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _control_character(text: str) -> str | None:
    """The first control character (U+0000-U+001F, U+007F-U+009F) in ``text``, as ``U+000A``;
    None when there is none. A newline or an escape sequence in a movie's name or folder
    cannot be written into a STAR file's loop, nor shown on a terminal as it is."""
    found = _CONTROL.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


@functools.lru_cache(maxsize=8)
def name_matcher(patterns: tuple[str, ...]) -> Callable[[str], re.Match | None]:
    """One compiled test of a lower-case name against shell ``patterns``, case-insensitive
    (a scan tests every file of the tree: one regex, not ``fnmatch`` pattern by pattern)."""
    if not patterns:
        return lambda name: None
    return re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns)).match


@dataclass(frozen=True, slots=True)
class FolderListing:
    """What one folder held at a scan, for :class:`ListingCache`.

    ``key`` is the folder's ``(st_dev, st_ino, st_mtime_ns, st_ctime_ns)``: a name made,
    removed or renamed in it changes its mtime. ``files`` holds each observation with its rank
    among paths to the same movie (None for a metadata file). ``still_since_s`` is when the
    fresh listings began to find these same files (sizes, mtimes): a listing is taken again
    only once they have for ``ListingCache.still_s``.
    """

    key: tuple[int, int, int, int]
    files: tuple[tuple[Observation, tuple[bool, str] | None], ...]
    skipped: tuple[tuple[Path, str], ...]
    subfolders: tuple[tuple[Path, bool], ...]  # (folder, reached through a symbolic link)
    paths: tuple[tuple[str, Path], ...]
    still_since_s: float = 0.0  # listings found these same files since (clock, s; set by scan)


class ListingCache:
    """Folder listings one scan may take from the last instead of listing and stat'ing again.

    Only while file-system events reach discovery, and only for a folder whose files held
    still (the same sizes and mtimes in every fresh listing) for ``still_s`` seconds: longer
    than the settle time, so a file the cache could show stale has already stood still long
    enough to count as complete without the cache, and a cached listing never makes a movie
    still being written look settled (a writer's events come late, or not at all where
    inotify has no watch: a watched folder given as a link, a file linked in from elsewhere, a
    folder the watch limit left unwatched). A folder is listed afresh when an event named it
    or anything in it since its listing (:meth:`touched`, any event, a write to a file
    included), when its own key changed, when it lies behind a symbolic link, when the scan
    is told to (a movie there still waits to be admitted: its waits are measured over scans),
    and at every scan after :meth:`expire` (the periodic full scan, and the one after lost
    events).
    """

    def __init__(self, still_s: float = 60.0) -> None:
        self.still_s = still_s
        self._listings: dict[str, FolderListing] = {}
        self._touched: set[str] = set()
        self._full = True
        self._lock = threading.Lock()  # the observer thread touches, the scan swaps
        self.reused_last = 0  # folders the last scan took from the one before

    def touched(self, folder: str) -> None:
        """An event named ``folder`` or a file in it (called from the observer thread)."""
        with self._lock:
            self._touched.add(folder)

    def expire(self) -> None:
        """List every folder afresh at the next scan."""
        with self._lock:
            self._full = True

    def begin(self) -> tuple[dict[str, FolderListing], set[str], bool]:
        """The listings to take from, the folders touched since the last scan and whether this
        scan lists everything; the touched set starts afresh (events during the scan count for
        the next)."""
        with self._lock:
            touched, self._touched = self._touched, set()
            full, self._full = self._full, False
        return self._listings, touched, full

    def end(self, listings: dict[str, FolderListing], reused: int) -> None:
        """This scan's listings (folders no longer there are forgotten), ``reused`` of them
        taken from the scan before."""
        self._listings = listings
        self.reused_last = reused


def scan(root: Path, *, movie_patterns: Sequence[str] = MOVIE_PATTERNS,
         metadata_patterns: Sequence[str] = METADATA_PATTERNS,
         exclude: Iterable[Path] = (), paths: dict[str, Path] | None = None,
         cache: ListingCache | None = None, now_s: float | None = None,
         fresh: Collection[str] = ()) -> ScanResult:
    """List ``root`` recursively once.

    Parameters
    ----------
    root : Path
        Folder to list.
    movie_patterns, metadata_patterns : sequence of str
        Shell patterns matched case-insensitively against file names.
    exclude : iterable of Path
        Folders not descended into (the output and state folders when inside ``root``).
    paths : dict, optional
        The ``Path`` of each path string listed by the last scan; the ones listed again are
        taken from it, not parsed again (a third of a scan of a large tree was pathlib), and
        it is left holding this scan's.
    cache : ListingCache, optional
        Folder listings of the last scan, taken where still valid (see there); left holding
        this scan's.
    now_s : float, optional
        Monotonic time of this scan (s), for the cache's stillness; ``time.monotonic()``.
    fresh : collection of str
        Folders listed afresh whatever the cache holds.

    Returns
    -------
    ScanResult
        Observations sorted by ``(mtime_ns, path)`` (acquisition order), plus what was skipped.
        A movie reached by several paths (a symbolic or hard link to it elsewhere in the tree)
        is listed once: under a path that is not a symbolic link, the first in sorted order.

    Symbolic links to folders: one whose target lies outside the watched tree is followed (a
    session folder linked in), and what it holds is named under the link; one whose target
    lies inside the tree is not (that folder is listed under its own name, so its movies and
    mdocs keep one name whatever order the folders are listed in), nor one to the watched
    folder or a folder above it (a loop). A folder reached twice (two links to one place) is
    listed once, under the first path in name order.
    """
    known, listed = (paths or {}), {}
    previous, touched, full = cache.begin() if cache is not None else ({}, set(), True)
    now_s = time.monotonic() if now_s is None else now_s
    listings: dict[str, FolderListing] = {}
    reused = 0

    def path_of(entry: os.DirEntry) -> Path:
        """``Path(entry.path)``, the one of the last scan when it listed it."""
        made = known.get(entry.path)
        if made is None:
            made = Path(entry.path)
        listed[entry.path] = made
        return made

    is_movie_name = name_matcher(tuple(movie_patterns))
    is_metadata_name = name_matcher(tuple(metadata_patterns))
    excluded = {os.path.realpath(p) for p in exclude}
    root_real = os.path.realpath(root)
    observations: list[Observation] = []
    skipped: list[tuple[Path, str]] = []
    errors: list[tuple[Path, str]] = []
    stack: list[tuple[Path, bool]] = [(Path(root), False)]
    visited: set[tuple[int, int]] = set()  # (device, inode): symlink loops are listed once
    # (device, inode) of each movie -> the path it is listed under: a symbolic or hard link to
    # a movie listed elsewhere in the tree is the same movie
    movie_paths: dict[tuple[int, int], tuple[tuple[bool, str], Observation]] = {}

    def take(observation: Observation, rank: tuple[bool, str] | None) -> None:
        if rank is None:
            observations.append(observation)
            return
        inode = observation.inode
        if inode in movie_paths and movie_paths[inode][0] <= rank:
            return
        movie_paths[inode] = (rank, observation)

    while stack:
        folder, via_link = stack.pop()
        name_of_folder = str(folder)
        taken = before = None
        try:
            st_folder = os.stat(folder)
            if (st_folder.st_dev, st_folder.st_ino) in visited:
                continue
            visited.add((st_folder.st_dev, st_folder.st_ino))
            key = (st_folder.st_dev, st_folder.st_ino, st_folder.st_mtime_ns,
                   st_folder.st_ctime_ns)
            before = previous.get(name_of_folder)
            if not (full or via_link or name_of_folder in touched
                    or name_of_folder in fresh) and before is not None \
                    and before.key == key and now_s - before.still_since_s >= cache.still_s:
                taken = before
            if taken is None:
                with os.scandir(folder) as entries:
                    listing = sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            errors.append((folder, exc.strerror or str(exc)))
            continue
        if taken is None:
            taken = _list_folder(folder, listing, key, root, root_real, excluded,
                                 is_movie_name, is_metadata_name, path_of)
            still = (before.still_since_s if before is not None and before.files == taken.files
                     else now_s)
            taken = dataclasses.replace(taken, still_since_s=still)
        else:
            listed.update(taken.paths)
            reused += 1
        if not via_link:
            listings[name_of_folder] = taken
        for observation, rank in taken.files:
            take(observation, rank)
        skipped.extend(taken.skipped)
        stack.extend((sub, via_link or link) for sub, link in reversed(taken.subfolders))
    observations.extend(observation for _, observation in movie_paths.values())
    observations.sort(key=lambda o: (o.mtime_ns, str(o.path)))
    if paths is not None:  # this scan's paths, for the next (those gone are forgotten)
        paths.clear()
        paths.update(listed)
    if cache is not None:
        cache.end(listings, reused)
    return ScanResult(tuple(observations), tuple(skipped), tuple(errors))


def _list_folder(folder: Path, listing: list[os.DirEntry], key: tuple[int, int, int, int],
                 root: Path, root_real: str, excluded: set[str],
                 is_movie_name: Callable[[str], re.Match | None],
                 is_metadata_name: Callable[[str], re.Match | None],
                 path_of: Callable[[os.DirEntry], Path]) -> FolderListing:
    """One folder's entries, stat'ed: its movies and metadata files, what is skipped and why,
    and the subfolders to descend into (:func:`scan`)."""
    files: list[tuple[Observation, tuple[bool, str] | None]] = []
    skipped: list[tuple[Path, str]] = []
    subfolders: list[tuple[Path, bool]] = []
    paths: list[tuple[str, Path]] = []
    folder_control = _control_character(os.path.relpath(folder, root))  # once per folder
    for entry in listing:
        name = entry.name
        if is_temporary_name(name) and (name.startswith(".") or not _is_folder(entry)):
            continue  # a folder named like a writer's temporary (``#2``, ``~old``) is looked in
        lower = name.lower()
        is_movie = is_movie_name(lower) is not None
        try:
            if not (is_movie or is_metadata_name(lower)) and not entry.is_dir(
                    follow_symlinks=True):
                continue  # the common case of a file of no interest: no Path made
            path = path_of(entry)
            paths.append((entry.path, path))
            if entry.is_dir(follow_symlinks=True):
                if is_movie:
                    skipped.append((path, "not a regular file (a directory with a movie's name)"))
                real = os.path.realpath(path)
                if real in excluded:
                    continue
                link = entry.is_symlink()
                if link and (_within(real, root_real) or _within(root_real, real)):
                    continue  # listed under its own name, or a loop
                subfolders.append((path, link))
                continue
            if is_movie and (control := folder_control or _control_character(name)):
                skipped.append((path, f"its name holds a control character ({control}), "
                                      "which RELION's STAR files and terminals cannot show: "
                                      "rename it"))
                continue
            if not entry.is_file(follow_symlinks=True):
                skipped.append((path, "not a regular file"))
                continue
            st = entry.stat(follow_symlinks=True)
        except FileNotFoundError:
            continue  # vanished between listing and stat: the next scan decides
        except OSError as exc:  # the entry's own path: ``path`` may not be made yet
            skipped.append((Path(entry.path), f"cannot stat: {exc.strerror or exc}"))
            continue
        observation = Observation(path, st.st_size, st.st_mtime_ns,
                                  "movie" if is_movie else "metadata",
                                  (st.st_dev, st.st_ino) if st.st_ino else None)
        # one movie reached by two paths is corrected once: its own name before a link's
        rank = (entry.is_symlink(), str(path)) if is_movie and st.st_ino else None
        files.append((observation, rank))
    return FolderListing(key, tuple(files), tuple(skipped), tuple(subfolders), tuple(paths))


#: watchdog event types that can call for a rescan (never "modified", "opened", "attrib" or
#: "closed_no_write"); "events_lost" is the kernel queue's overflow
_WAKING_EVENTS = frozenset({"created", "moved", "deleted", "closed", "events_lost"})


def _event_path(path: str | bytes) -> str:
    """A watchdog event's path as text (watchdog gives bytes for a watch given as bytes)."""
    return os.fsdecode(path) if path else ""


def _within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies below it (real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def mount_of(path: Path, *, mounts_file: Path = Path("/proc/mounts")
             ) -> tuple[str, str] | None:
    """``(mount point, file system type)`` of the mount holding ``path`` (its real path; the
    longest mount-point prefix, the last mount on it), or None."""
    try:
        lines = mounts_file.read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best: tuple[str, str] | None = None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and (
                best is None or len(mount) >= len(best[0])):
            best = (mount, parts[2])
    return best


def filesystem_type(path: Path, *, mounts_file: Path = Path("/proc/mounts")) -> str | None:
    """File system type of the mount holding ``path`` (:func:`mount_of`), or None."""
    mount = mount_of(path, mounts_file=mounts_file)
    return None if mount is None else mount[1]


def needs_polling(fs_type: str | None) -> bool:
    """True for network and FUSE file systems, where inotify misses other machines' writes."""
    return fs_type is not None and (fs_type in NETWORK_FS_TYPES or fs_type.startswith("fuse"))


class _OverflowHandler(logging.Handler):
    """Catches watchdog's 'queue overflowed' and 'Unable to watch' warnings (it reports both
    only by logging: a folder it could not watch, at the inotify watch limit, gives no events
    while the observer runs on)."""

    def __init__(self, callback: Callable[[], None],
                 unwatched: Callable[[str], None] = lambda message: None) -> None:
        super().__init__(level=logging.WARNING)
        self._callback = callback
        self._unwatched = unwatched

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "overflow" in message.lower():
            self._callback()
        elif "unable to watch" in message.lower():
            self._unwatched(message)


@dataclass(frozen=True, slots=True)
class DiscoveryState:
    """What discovery is doing, for health checks and the start-up log."""

    mode: str  # "events+rescan" or "rescan"
    fs_type: str | None
    reason: str
    scans: int


@dataclass(slots=True)
class _Counters:
    scans: int = 0
    events: int = 0  # file-system events received
    folders_reused: int = 0  # by the last scan, from the one before


class Discovery:
    """Periodic rescans of one folder, woken early by file-system events.

    Parameters
    ----------
    root : Path
        Watched folder.
    exclude : iterable of Path
        Folders never descended into (output, state).
    polling : {"auto", "on", "off"}
        ``"on"``: rescans only; ``"off"``: always try inotify events; ``"auto"``: rescans only on
        network/FUSE file systems.
    wake : callable
        Called (from the observer thread) when an event or an overflow suggests a rescan now.
        It must be cheap and thread-safe (the service writes a byte to a self-pipe).
    log : callable(event: str, **fields)
        Where discovery reports observer trouble.
    full_scan_s : float
        While events arrive, every folder is listed afresh at least this often (s); in between,
        a folder no event named is taken from its last listing (:class:`ListingCache`).
    listing_still_s : float
        How long a folder's files must have held still before its listing is taken again (s;
        give more than the settle time).
    clock : callable
        Monotonic clock (s).
    """

    def __init__(self, root: Path, *, exclude: Iterable[Path] = (),
                 movie_patterns: Sequence[str] = MOVIE_PATTERNS,
                 metadata_patterns: Sequence[str] = METADATA_PATTERNS,
                 polling: Polling = "auto",
                 wake: Callable[[], None] = lambda: None,
                 log: Callable[..., None] = lambda event, **kw: None,
                 mounts_file: Path = Path("/proc/mounts"), full_scan_s: float = FULL_SCAN_S,
                 listing_still_s: float = LISTING_STILL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self._exclude = tuple(Path(p) for p in exclude)
        self._exclude_strs = tuple({s for p in self._exclude
                                    for s in (str(p), os.path.realpath(p))})
        self._root_str = str(self.root).rstrip(os.sep) or os.sep
        self._root_real = os.path.realpath(self.root)
        self._movie_patterns = tuple(movie_patterns)
        self._paths: dict[str, Path] = {}  # the last scan's, reused by the next
        self._metadata_patterns = tuple(metadata_patterns)
        self._polling = polling
        self._wake = wake
        self._log = log
        mount = mount_of(self.root, mounts_file=mounts_file)
        self._fs_type = None if mount is None else mount[1]
        # the share the watch folder lies on (a mount point of its own, not the root's): when
        # it is not mounted any more, its empty mount point would list as a session emptied
        self._share = (mount[0] if mount is not None and mount[0] != os.sep
                       and os.path.ismount(mount[0]) else None)
        self._observer = None
        self._overflow_handler: _OverflowHandler | None = None
        self._counters = _Counters()
        self._reason = ""
        self._listings = ListingCache(listing_still_s)
        self._listings_off = False  # a folder left unwatched: listings are never taken again
        self._waiting_folders: frozenset[str] = frozenset()  # the last scan's ``fresh``
        self._clock = clock
        self._full_scan_s = full_scan_s
        self._last_full_s: float | None = None
        self._rearm_at: float | None = None  # when to start a stopped event reader again
        self._rearms = 0

    # --- observer -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the event observer if the mode and the file system allow; never raises."""
        if self._polling == "on":
            self._reason = "polling=on"
            return
        if self._polling == "auto" and needs_polling(self._fs_type):
            self._reason = f"network/FUSE file system ({self._fs_type}): rescans only"
            return
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError as exc:  # pragma: no cover - watchdog is a dependency
            self._fallback(f"watchdog unavailable: {exc}")
            return

        discovery = self

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # noqa: ANN001 - watchdog's type
                try:
                    discovery._counters.events += 1
                    discovery._touched(event.event_type, event.is_directory,
                                       _event_path(event.src_path),
                                       _event_path(getattr(event, "dest_path", "")))
                    if discovery.wakes_for(event.event_type, event.is_directory,
                                           _event_path(event.src_path),
                                           _event_path(getattr(event, "dest_path", ""))):
                        discovery._wake()
                except Exception:  # an exception here would end watchdog's dispatcher thread
                    pass

        if self._overflow_handler is None:  # once, whatever the observers started
            self._overflow_handler = _OverflowHandler(self._on_overflow, self._on_unwatched)
            logging.getLogger("watchdog.observers").addHandler(self._overflow_handler)
        try:
            observer = Observer()
            observer.daemon = True
            observer.schedule(_Wake(), str(self.root), recursive=True)
            observer.start()
        except OSError as exc:
            self._fallback(f"event observer could not start ({exc}); rescans only")
            return
        except Exception as exc:  # noqa: BLE001 - any observer failure means rescans only
            self._fallback(f"event observer could not start ({type(exc).__name__}: {exc}); rescans only")
            return
        self._observer = observer
        self._reason = "inotify events wake the rescans"

    def _fallback(self, reason: str) -> None:
        self._reason = reason
        self._log("discovery_fallback", reason=reason, root=str(self.root))

    def _touched(self, event_type: str, is_directory: bool, src_path: str,
                 dest_path: str) -> None:
        """An event (any, a write included): its folders are listed afresh at the next scan;
        every folder after lost events."""
        if event_type == "events_lost":
            self._listings.expire()
        for path in (src_path, dest_path):
            if not path:
                continue
            if is_directory:
                self._listings.touched(path)
            if not is_directory or event_type != "modified":  # not a folder's own listing
                self._listings.touched(os.path.dirname(path))

    def _on_unwatched(self, message: str) -> None:
        """A folder inotify does not watch: no listing is taken again from now on."""
        if not self._listings_off:
            self._listings_off = True
            self._log("discovery_folder_unwatched", root=str(self.root), message=message,
                      note="every folder is listed at every scan from now on")
        self._wake()

    def _on_overflow(self) -> None:
        self._listings.expire()
        self._log("discovery_event_overflow", root=str(self.root),
                  note="kernel event queue overflowed; the next rescan finds what was missed")
        self._wake()

    def check_observer(self) -> None:
        """Notice a dead observer thread; log once and continue with rescans only. An event
        reader that stopped (the watched folder removed, and made again: a session folder
        cleared by hand) is started again once the folder is there, at the first call
        :data:`REARM_S` seconds or more after it stopped (the service calls once a scan), and
        at most :data:`MAX_REARMS` times a run."""
        observer = self._observer
        if observer is not None and not observer.is_alive():
            self._observer = None
            self._fallback("event observer thread died; rescans only")
        elif observer is not None and not all(e.is_alive() for e in observer.emitters):
            # the thread reading inotify stopped while the dispatching thread runs on: no
            # events come any more
            self._observer = None
            self._stop_observer(observer)
            again = self._rearms < MAX_REARMS
            self._rearm_at = self._clock() + REARM_S if again else None
            self._fallback("event reader thread stopped (the watched folder removed?); rescans "
                           + ("only until it is there again" if again else "only from now on"))
        elif observer is None and self._rearm_at is not None and self._clock() >= self._rearm_at:
            if not self.root.is_dir():
                return
            self._rearm_at = None
            self._rearms += 1
            self._listings.expire()  # what happened while no events came is not known
            self.start()
            if self._observer is not None:
                self._log("discovery_events_restored", root=str(self.root),
                          note="the event reader started again on the watch folder")

    @staticmethod
    def _stop_observer(observer: Any) -> None:
        with contextlib.suppress(Exception):  # stopping must not raise
            observer.stop()
            observer.join(timeout=5)

    def stop(self) -> None:
        """Stop the observer thread (if any) and detach the overflow handler."""
        observer, self._observer = self._observer, None
        self._rearm_at = None
        if observer is not None:
            self._stop_observer(observer)
        if self._overflow_handler is not None:
            logging.getLogger("watchdog.observers").removeHandler(self._overflow_handler)
            self._overflow_handler = None

    def __enter__(self) -> Discovery:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wakes_for(self, event_type: str, is_directory: bool, src_path: str,
                  dest_path: str = "") -> bool:
        """Whether a file-system event calls for a rescan now (module docstring, "Events").

        Outside the excluded folders (the output folder inside the watched one): any file or
        folder made, renamed or removed (an EPU metadata file, a SerialEM lock, a session
        folder linked in); a movie or metadata file closed after writing, or any file closed
        after writing in a folder where a movie waits (:meth:`scan`'s ``fresh``: the metadata
        file it waits for). Not a write to an open file: a movie being written gives one event
        per write, and a rescan then only finds it still growing.
        """
        if event_type not in _WAKING_EVENTS:
            return False
        if event_type == "events_lost":
            return True
        paths = [p for p in (src_path, dest_path) if p]
        if all(self._excluded(p) for p in paths):
            return False
        if event_type != "closed":
            return True
        if is_directory:
            return False
        if os.path.dirname(src_path) in self._waiting_folders:
            return True
        names = (os.path.basename(p) for p in paths)
        is_movie_name = name_matcher(self._movie_patterns)
        is_metadata_name = name_matcher(self._metadata_patterns)
        return any(not is_temporary_name(name) and (
            is_movie_name(name.lower()) is not None or is_metadata_name(name.lower()) is not None)
            for name in names)

    def _excluded(self, path: str) -> bool:
        """``path`` (under the root as given) lies in an excluded folder, compared as given
        and through the root's real path (an output folder named through a link)."""
        real = (self._root_real + path[len(self._root_str):]
                if _within(path, self._root_str) else path)
        return any(_within(path, folder) or _within(real, folder)
                   for folder in self._exclude_strs)

    # --- scanning -------------------------------------------------------------------------
    def scan(self, *, fresh: Collection[str] = ()) -> ScanResult:
        """Rescan the tree (the source of truth): while events arrive, folders that none
        named since they were last listed, and that held still then, are taken from that
        listing (:class:`ListingCache`), except the ``fresh`` ones (folders of movies still
        waiting to be admitted); every folder is listed afresh every ``full_scan_s`` seconds."""
        self._waiting_folders = frozenset(fresh)  # replaced whole: read by the observer thread
        now = self._clock()
        cache = None
        if self._observer is not None and not self._listings_off:
            cache = self._listings
            if self._last_full_s is None or now - self._last_full_s >= self._full_scan_s:
                cache.expire()
                self._last_full_s = now
        if self._share is not None and not self._share_mounted():
            # the root not listed, as for any listing error: nothing seen in it is dropped
            self._counters.scans += 1
            return ScanResult((), (), ((self.root, f"the share mounted at {self._share} at "
                                                   "start is not mounted now"),))
        result = scan(self.root, movie_patterns=self._movie_patterns,
                      metadata_patterns=self._metadata_patterns, exclude=self._exclude,
                      paths=self._paths, cache=cache, now_s=now, fresh=fresh)
        self._counters.folders_reused = cache.reused_last if cache is not None else 0
        self._counters.scans += 1
        return result

    def _share_mounted(self) -> bool:
        """Whether the watch folder's share is mounted; not at first look, once more after
        listing the watch folder (an automounter mounts it again when it is looked into)."""
        if os.path.ismount(self._share):
            return True
        with contextlib.suppress(OSError):
            os.listdir(self.root)
        return os.path.ismount(self._share)

    def state(self) -> DiscoveryState:
        """Mode, file-system type and counters."""
        mode = "events+rescan" if self._observer is not None else "rescan"
        return DiscoveryState(mode, self._fs_type, self._reason, self._counters.scans)

    @property
    def uses_events(self) -> bool:
        return self._observer is not None
