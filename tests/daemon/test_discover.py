"""Discovery: what a scan sees, what it ignores, and when polling is used."""

import os
from pathlib import Path

import pytest

from daemon.intake.discover import Discovery, filesystem_type, is_temporary_name, needs_polling, scan


def touch(path: Path, data: bytes = b"x", mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.mark.parametrize("name", [".a.mrc", ".S.mrc.tmp-123", "a.mrc.tmp", "a.mrc.part", "a.mrc~",
                                  "#a.mrc#", "~$a.tif", "stack.mrc.openTS", "a.tif.partial"])
def test_temporary_names_and_dotfiles_are_recognised(name):
    assert is_temporary_name(name)


@pytest.mark.parametrize("name", ["a.mrc", "Position_1_001.tif", "x.eer", "a.mrc.mdoc", "tmp.mrc",
                                  "#1_001.mrc"])
def test_ordinary_names_are_not_temporary(name):
    assert not is_temporary_name(name)


def test_movies_in_folders_named_like_temporaries_are_found_but_not_in_hidden_ones(tmp_path):
    """``#2/``, ``~old/``, ``x.tmp/``: folders a user names so, not writers' temporary files;
    their movies were skipped without a word."""
    for folder in ("#2", "~old", "run.tmp", "grid.part"):
        touch(tmp_path / folder / "m.mrc")
    touch(tmp_path / ".snapshot" / "m.mrc")
    touch(tmp_path / "#2" / "m.mrc.part")
    found = sorted(o.path.relative_to(tmp_path).as_posix() for o in scan(tmp_path).observations)
    assert found == ["#2/m.mrc", "grid.part/m.mrc", "run.tmp/m.mrc", "~old/m.mrc"]


def test_scan_finds_movies_recursively_in_acquisition_order_and_skips_temporaries(tmp_path):
    touch(tmp_path / "grid1" / "b.tif", mtime_ns=2_000_000_000)
    touch(tmp_path / "a.mrc", mtime_ns=3_000_000_000)
    touch(tmp_path / "grid1" / "sq2" / "c.EER", mtime_ns=1_000_000_000)
    touch(tmp_path / "a.mrc.mdoc", mtime_ns=4_000_000_000)
    touch(tmp_path / ".hidden.mrc")
    touch(tmp_path / "d.mrc.part")
    touch(tmp_path / ".trash" / "e.mrc")
    touch(tmp_path / "notes.txt")
    result = scan(tmp_path)
    names = [(o.path.name, o.kind) for o in result.observations]
    assert names == [("c.EER", "movie"), ("b.tif", "movie"), ("a.mrc", "movie"),
                     ("a.mrc.mdoc", "metadata")]
    assert result.skipped == () and result.errors == ()


def test_scan_never_descends_into_the_output_folder_inside_the_watch_folder(tmp_path):
    touch(tmp_path / "a.mrc")
    touch(tmp_path / "motioncorr" / "a.mrc")  # an output with a movie's name
    result = scan(tmp_path, exclude=[tmp_path / "motioncorr"])
    assert [o.path for o in result.observations] == [tmp_path / "a.mrc"]


def test_a_directory_with_a_movie_name_is_reported_as_skipped_with_a_reason(tmp_path):
    (tmp_path / "x.mrc").mkdir()
    result = scan(tmp_path)
    assert result.observations == ()
    assert result.skipped == ((tmp_path / "x.mrc", "not a regular file (a directory with a movie's name)"),)


def test_a_movie_whose_name_holds_a_control_character_is_skipped_with_a_reason(tmp_path):
    """A newline (or an escape sequence) in a movie's path cannot be written into a STAR
    file's loop (starfile raises, and the folder's corrected_micrographs.star failed for every
    movie) nor shown on a terminal: the movie is set aside (quarantined, with the reason) to be
    renamed, and the rest of the folder is scanned as usual."""
    touch(tmp_path / "new\nline.mrc")
    touch(tmp_path / "esc\x1b[31m" / "a.mrc")
    touch(tmp_path / "good name [1] ünï.mrc")
    result = scan(tmp_path)
    assert [o.path.name for o in result.observations] == ["good name [1] ünï.mrc"]
    reasons = {path.name: why for path, why in result.skipped}
    assert "control character (U+000A)" in reasons["new\nline.mrc"]
    assert "control character (U+001B)" in reasons["a.mrc"] and "rename it" in reasons["a.mrc"]


def test_a_dangling_symlink_does_not_drop_the_scan(tmp_path):
    touch(tmp_path / "a.mrc")
    (tmp_path / "b.mrc").symlink_to(tmp_path / "missing.mrc")
    result = scan(tmp_path)
    assert [o.path.name for o in result.observations] == ["a.mrc"]


@pytest.mark.parametrize("loop_name", ["a_loop", "c_loop"])
def test_an_entry_that_cannot_be_looked_at_is_skipped_under_its_own_name(tmp_path, loop_name):
    """A link to itself (ELOOP), listed before or after a movie: it is skipped by its own
    name, and the movie is listed (it stopped the scan, or was blamed on the movie before)."""
    touch(tmp_path / "b_movie.tif")
    (tmp_path / loop_name).symlink_to(loop_name)
    result = scan(tmp_path)
    assert [o.path.name for o in result.observations] == ["b_movie.tif"]
    assert [(p.name, why.split(":")[0]) for p, why in result.skipped] == [
        (loop_name, "cannot stat")]


def test_a_scan_reuses_the_last_scans_paths_and_lists_what_a_fresh_scan_lists(tmp_path):
    """The ``Path`` of a file listed again is the last scan's (a third of a scan of a large
    tree was parsing them again); what is listed is what a scan without them lists, and a
    file gone is forgotten."""
    for name in ("a.mrc", "grid1/b.tif", "grid1/TS.mrc.mdoc", "grid1/notes.txt"):
        touch(tmp_path / name)
    paths: dict = {}
    first = scan(tmp_path, paths=paths)
    assert set(paths) >= {str(o.path) for o in first.observations}
    (tmp_path / "a.mrc").unlink()
    touch(tmp_path / "grid1" / "c.eer")
    again = scan(tmp_path, paths=paths)
    assert again == scan(tmp_path)
    assert str(tmp_path / "a.mrc") not in paths
    before = {str(o.path): o.path for o in first.observations}
    assert all(o.path is before[str(o.path)] for o in again.observations
               if str(o.path) in before)


def test_filesystem_type_uses_the_longest_mount_prefix(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n//cam/share /mnt/camera cifs rw 0 0\n"
                      "server:/x /mnt/cam nfs4 rw 0 0\n")
    assert filesystem_type(Path("/mnt/camera/session"), mounts_file=mounts) == "cifs"
    assert filesystem_type(Path("/mnt/cam/s"), mounts_file=mounts) == "nfs4"
    assert filesystem_type(Path("/mnt/cameras"), mounts_file=mounts) == "ext4"


@pytest.mark.parametrize("fs,expected", [("cifs", True), ("smb3", True), ("nfs", True),
                                         ("nfs4", True), ("fuse.sshfs", True), ("ext4", False),
                                         ("xfs", False), (None, False)])
def test_network_and_fuse_file_systems_need_polling(fs, expected):
    assert needs_polling(fs) is expected


def test_auto_polling_on_a_network_mount_uses_rescans_only(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"//cam/share {tmp_path} cifs rw 0 0\n")
    events = []
    with Discovery(tmp_path, polling="auto", mounts_file=mounts,
                   log=lambda e, **kw: events.append(e)) as discovery:
        assert not discovery.uses_events
        assert "cifs" in discovery.state().reason


def test_inotify_events_wake_the_scanner(tmp_path):
    import threading

    woke = threading.Event()
    with Discovery(tmp_path, polling="off", wake=woke.set) as discovery:
        assert discovery.uses_events
        touch(tmp_path / "new.mrc")
        assert woke.wait(5.0)


@pytest.mark.parametrize("event_type, is_dir, src, dest, wakes", [
    ("created", False, "w/a.mrc", "", True),
    ("closed", False, "w/sub/a.eer", "", True),          # written to the end
    ("deleted", False, "w/a.tif", "", True),
    ("moved", False, "w/a.mrc.tmp", "w/a.mrc", True),    # renamed into place
    ("moved", False, "w/a.mrc", "w/b.txt", True),        # a movie gone from its name
    ("created", False, "w/Position_1.mdoc", "", True),
    ("closed", False, "w/Position_1.mdoc", "", True),    # SerialEM appended a tilt
    ("modified", False, "w/a.mrc", "", False),           # one per write while it is written
    ("opened", False, "w/a.mrc", "", False),
    ("closed_no_write", False, "w/a.mrc", "", False),    # read by our own validation
    ("attrib", False, "w/a.mrc", "", False),
    ("created", False, "w/FoilHole_1.xml", "", True),    # EPU's metadata file, made
    ("closed", False, "w/FoilHole_1.xml", "", False),    # written, no movie waits for it
    ("closed", False, "w/wait/FoilHole_2.xml", "", True),  # written beside a waiting movie
    ("closed", False, "w/FoilHole_1.jpg", "", False),
    ("created", False, "w/TS_1.mrc.openTS", "", True),   # SerialEM's lock beside its stack
    ("deleted", False, "w/TS_1.mrc.openTS", "", True),
    ("modified", False, "w/a.mrc.part", "", False),      # still being copied
    ("closed", False, "w/a.mrc.part", "", False),
    ("created", False, "w/out/S_DW.mrc", "", False),     # our outputs, in the watched folder
    ("moved", False, "w/out/.S.mrc.tmp", "w/out/S.mrc", False),
    ("created", True, "w/session2", "", True),           # a new folder
    ("moved", True, "w/old", "w/new", True),
    ("modified", True, "w/session2", "", False),
    ("events_lost", False, "", "", True),                # the kernel queue overflowed
])
def test_only_events_that_can_change_a_scan_wake_it(tmp_path, event_type, is_dir, src, dest,
                                                    wakes):
    (tmp_path / "w" / "out").mkdir(parents=True)
    d = Discovery(tmp_path / "w", exclude=[tmp_path / "w" / "out"], polling="off")
    d.scan(fresh={str(tmp_path / "w" / "wait")})  # a movie there waits to be admitted
    full = (lambda p: str(tmp_path / p) if p else "")
    assert d.wakes_for(event_type, is_dir, full(src), full(dest)) is wakes


def test_the_excluded_output_folder_is_recognised_through_a_link_to_the_watched_folder(
        tmp_path):
    (tmp_path / "real" / "out").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    d = Discovery(tmp_path / "link", exclude=[tmp_path / "real" / "out"], polling="off")
    assert not d.wakes_for("created", False, str(tmp_path / "link" / "out" / "S.mrc"))
    assert d.wakes_for("created", False, str(tmp_path / "link" / "a.mrc"))


def test_a_movie_written_piece_by_piece_wakes_the_scanner_when_made_and_when_closed(tmp_path):
    """Not once per write: a detector writing 200 pieces would have the scanner list the whole
    tree about ten times a second for as long as the writing lasts."""
    import threading
    import time

    wakes = []
    closed = threading.Event()

    def wake() -> None:
        wakes.append(time.monotonic())
        if len(wakes) >= 2:
            closed.set()

    touch(tmp_path / "FoilHole_1_Data_2.xml")  # beside the movie, as EPU writes it
    with Discovery(tmp_path, polling="off", wake=wake) as discovery:
        assert discovery.uses_events
        with open(tmp_path / "FoilHole_1_Data_2.xml", "ab") as f:  # no movie waits for it
            f.write(b"<xml/>")
        with open(tmp_path / "movie.tif", "wb") as f:
            for _ in range(200):
                f.write(b"x" * 4096)
                f.flush()
                os.fsync(f.fileno())
        assert closed.wait(5.0)
        time.sleep(0.5)  # any late events
        assert len(wakes) == 2, "created and closed only"
        assert discovery.state().scans == 0
        # the writes were seen (the kernel merges repeated ones it has not yet handed over)
        assert discovery._counters.events > 10


def test_a_file_written_beside_a_waiting_movie_wakes_the_scanner(tmp_path):
    """EPU completes a movie's metadata file after the movie: while the movie waits for it,
    the file's closing wakes a rescan (in another folder it does not)."""
    import threading
    import time

    for folder in ("waiting", "other"):
        touch(tmp_path / folder / "FoilHole_1_Data_2.xml", b"<half")
    woke = threading.Event()
    with Discovery(tmp_path, polling="off", wake=woke.set) as discovery:
        discovery.scan(fresh={str(tmp_path / "waiting")})
        with open(tmp_path / "other" / "FoilHole_1_Data_2.xml", "ab") as f:
            f.write(b"/>")
        time.sleep(1.0)  # watchdog may hold an event up to 0.5 s
        assert not woke.is_set()
        with open(tmp_path / "waiting" / "FoilHole_1_Data_2.xml", "ab") as f:
            f.write(b"/>")
        assert woke.wait(5.0)


def test_observer_that_cannot_start_falls_back_to_rescans(tmp_path, monkeypatch):
    import watchdog.observers

    class Broken:
        daemon = True

        def schedule(self, *a, **k):
            raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(watchdog.observers, "Observer", Broken)
    logged = []
    with Discovery(tmp_path, polling="off", log=lambda e, **kw: logged.append((e, kw))) as d:
        assert not d.uses_events
        touch(tmp_path / "a.mrc")
        assert [o.path.name for o in d.scan().observations] == ["a.mrc"]
    assert logged and logged[0][0] == "discovery_fallback"
    assert "watch limit" in logged[0][1]["reason"]


def test_a_dead_observer_thread_is_noticed_and_rescans_continue(tmp_path):
    logged = []
    with Discovery(tmp_path, polling="off", log=lambda e, **kw: logged.append(e)) as d:
        d._observer.stop()
        d._observer.join(5)
        d.check_observer()
        assert not d.uses_events
        assert logged == ["discovery_fallback"]
        touch(tmp_path / "a.mrc")
        assert len(d.scan().observations) == 1


def test_an_event_queue_overflow_is_logged_and_wakes_a_rescan(tmp_path):
    import logging
    import threading

    woke = threading.Event()
    logged = []
    with Discovery(tmp_path, polling="off", wake=woke.set,
                   log=lambda e, **kw: logged.append(e)):
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost")
        assert woke.is_set()
    assert logged == ["discovery_event_overflow"]


def test_a_symlink_loop_does_not_make_the_scan_endless(tmp_path):
    touch(tmp_path / "sub" / "a.mrc")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)
    result = scan(tmp_path)
    assert [o.path.name for o in result.observations] == ["a.mrc"]


def test_a_movie_reached_by_several_paths_is_listed_once_under_its_own_name(tmp_path):
    """A folder of links for processing (``for_processing/x.mrc -> ../raw/x.mrc``), or a hard
    link, is the same movie: corrected twice it would be two rows of the STAR file."""
    movie = touch(tmp_path / "raw" / "movie_001.mrc")
    (tmp_path / "a_links").mkdir()
    (tmp_path / "a_links" / "movie_001.mrc").symlink_to(movie)
    os.link(movie, tmp_path / "raw" / "movie_001_hard.mrc")
    other = touch(tmp_path / "raw" / "movie_002.mrc")
    paths = [o.path for o in scan(tmp_path).observations]
    assert sorted(paths) == [movie, other]


# --- folder listings taken again while events arrive (ListingCache) ---------------------------

STILL_S = 60.0


def sizes(result) -> dict[str, int]:
    return {o.path.name: o.size for o in result.observations}


def scans_until_still(root, cache, *, start_s: float = 0.0):
    """Scan at ``start_s`` and again once the files have held still for ``STILL_S``; returns
    the time of the last scan."""
    scan(root, cache=cache, now_s=start_s)
    scan(root, cache=cache, now_s=start_s + STILL_S)
    return start_s + STILL_S


def test_a_folder_whose_files_held_still_a_minute_and_no_event_named_is_not_listed_again(
        tmp_path):
    from daemon.intake.discover import ListingCache

    touch(tmp_path / "a" / "m1.mrc")
    touch(tmp_path / "b" / "m2.mrc")
    cache = ListingCache(STILL_S)
    first = scan(tmp_path, cache=cache, now_s=0.0)
    scan(tmp_path, cache=cache, now_s=STILL_S - 1.0)  # not yet: listed again
    assert cache.reused_last == 0
    again = scan(tmp_path, cache=cache, now_s=STILL_S)
    assert cache.reused_last == 3  # the root, a and b
    assert sizes(first) == sizes(again) == {"m1.mrc": 1, "m2.mrc": 1}


def test_a_writer_that_pauses_and_writes_on_is_followed_even_without_events(tmp_path):
    """A listing is taken again only after its files held still for longer than the settle
    time: a movie still being written never looks settled from a stale listing, whether its
    events come late (watchdog holds them up to 0.5 s) or never (a watched folder given as a
    link, a file linked in from elsewhere, a folder the inotify watch limit left unwatched)."""
    from daemon.intake.discover import ListingCache

    movie = touch(tmp_path / "m1.tif", b"x" * 100)
    cache = ListingCache(STILL_S)
    t = 0.0
    for size in (100, 100, 100, 200, 200, 200, 300):  # every 2 s; no event reaches the cache
        if size > movie.stat().st_size:
            with open(movie, "ab") as f:
                f.write(b"x" * (size - movie.stat().st_size))
        assert sizes(scan(tmp_path, cache=cache, now_s=t))["m1.tif"] == size
        assert cache.reused_last == 0
        t += 2.0


def test_a_folder_an_event_named_is_listed_afresh(tmp_path):
    from daemon.intake.discover import ListingCache

    movie = touch(tmp_path / "a" / "m1.mrc")
    touch(tmp_path / "b" / "m2.mrc")
    cache = ListingCache(STILL_S)
    t = scans_until_still(tmp_path, cache)
    with open(movie, "ab") as f:  # written on: the folder's own mtime does not change
        f.write(b"more")
    cache.touched(str(tmp_path / "a"))  # what the observer does for the write's event
    result = scan(tmp_path, cache=cache, now_s=t + 2.0)
    assert sizes(result)["m1.mrc"] == 5
    assert cache.reused_last == 2  # the root and b
    scan(tmp_path, cache=cache, now_s=t + 4.0)  # a changed: listed until still a minute again
    assert cache.reused_last == 2


def test_a_name_made_in_a_folder_is_found_even_without_its_event(tmp_path):
    from daemon.intake.discover import ListingCache

    touch(tmp_path / "a" / "m1.mrc")
    cache = ListingCache(STILL_S)
    t = scans_until_still(tmp_path, cache)
    touch(tmp_path / "a" / "m2.mrc")
    os.utime(tmp_path / "a", ns=(1, 1))  # the folder's mtime changes with its names
    assert set(sizes(scan(tmp_path, cache=cache, now_s=t + 2.0))) == {"m1.mrc", "m2.mrc"}


def test_an_expired_cache_lists_every_folder_afresh(tmp_path):
    from daemon.intake.discover import ListingCache

    movie = touch(tmp_path / "a" / "m1.mrc")
    cache = ListingCache(STILL_S)
    t = scans_until_still(tmp_path, cache)
    movie.write_bytes(b"rewritten, and no event came")
    cache.expire()  # the periodic full scan, or lost events
    result = scan(tmp_path, cache=cache, now_s=t + 2.0)
    assert sizes(result)["m1.mrc"] == len(b"rewritten, and no event came")
    assert cache.reused_last == 0


def test_a_folder_behind_a_symbolic_link_is_listed_at_every_scan(tmp_path):
    """inotify does not follow links: no event would name what changes there."""
    from daemon.intake.discover import ListingCache

    outside = tmp_path / "elsewhere"
    movie = touch(outside / "m1.mrc")
    (tmp_path / "watch").mkdir()
    (tmp_path / "watch" / "linked").symlink_to(outside)
    cache = ListingCache(STILL_S)
    t = scans_until_still(tmp_path / "watch", cache)
    with open(movie, "ab") as f:
        f.write(b"more")
    assert sizes(scan(tmp_path / "watch", cache=cache, now_s=t + 2.0))["m1.mrc"] == 5
    assert cache.reused_last == 1  # the watched folder itself


def test_discovery_lists_every_folder_afresh_every_full_scan_s(tmp_path):
    now = [0.0]
    movie = touch(tmp_path / "a" / "m1.mrc")
    with Discovery(tmp_path, polling="off", full_scan_s=30.0, listing_still_s=STILL_S,
                   clock=lambda: now[0]) as d:
        d._touched = lambda *a: None  # as if every event were lost without a word
        for now[0] in (0.0, 20.0, 40.0, 61.0, 62.0):
            d.scan()
        assert d._counters.folders_reused == 2  # at 62 s: still since 0 s, full scans at 0, 40
        movie.write_bytes(b"rewritten")
        d.scan()
        assert sizes(d.scan())["m1.mrc"] == 1  # taken again: no event said it changed
        now[0] = 70.0  # the next full scan, 30 s after the one at 40 s
        assert sizes(d.scan())["m1.mrc"] == len(b"rewritten")


@pytest.mark.parametrize("polling", ["on", "auto-on-a-share"])
def test_without_events_every_folder_is_listed_at_every_scan(tmp_path, polling):
    now = [0.0]
    touch(tmp_path / "a" / "m1.mrc")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"//cam/share {tmp_path} cifs rw 0 0\n")
    with Discovery(tmp_path, polling="on" if polling == "on" else "auto", mounts_file=mounts,
                   clock=lambda: now[0]) as d:
        for now[0] in (0.0, 100.0, 200.0, 300.0):
            d.scan()
            assert d._counters.folders_reused == 0


def test_a_folder_watchdog_could_not_watch_ends_the_taking_of_listings(tmp_path):
    import logging

    now = [0.0]
    touch(tmp_path / "a" / "m1.mrc")
    logged = []
    with Discovery(tmp_path, polling="off", clock=lambda: now[0],
                   log=lambda e, **kw: logged.append(e)) as d:
        for now[0] in (0.0, 61.0, 62.0):
            d.scan()
        assert d._counters.folders_reused == 2
        logging.getLogger("watchdog.observers.inotify").warning(
            "Unable to watch %r: %s", str(tmp_path / "new"), "[Errno 28] No space left on device")
        now[0] = 64.0
        d.scan()
        assert d._counters.folders_reused == 0
    assert logged == ["discovery_folder_unwatched"]


def test_a_stopped_event_reader_is_noticed_and_rescans_list_every_folder(tmp_path):
    logged = []
    with Discovery(tmp_path, polling="off", log=lambda e, **kw: logged.append(e)) as d:
        for emitter in list(d._observer.emitters):
            emitter.stop()
            emitter.join(5)
        d.check_observer()
        assert not d.uses_events
    assert logged == ["discovery_fallback"]


def test_lost_events_have_the_next_scan_list_every_folder(tmp_path):
    now = [0.0]
    touch(tmp_path / "a" / "m1.mrc")
    with Discovery(tmp_path, polling="off", clock=lambda: now[0]) as d:
        for now[0] in (0.0, 61.0, 62.0):
            d.scan()
        assert d._counters.folders_reused == 2
        d._touched("events_lost", False, "", "")
        now[0] = 64.0
        d.scan()
        assert d._counters.folders_reused == 0


def test_a_movie_written_on_in_a_still_folder_is_seen_once_its_event_has_come(tmp_path):
    """With real inotify events: the write names the folder, which is then listed afresh."""
    import time

    now = [0.0]
    movie = touch(tmp_path / "sub" / "m1.mrc")
    touch(tmp_path / "other" / "m2.mrc")
    with Discovery(tmp_path, polling="off", clock=lambda: now[0]) as d:
        assert d.uses_events
        for now[0] in (0.0, 61.0, 62.0):
            d.scan()
        assert d._counters.folders_reused == 3
        with open(movie, "ab") as f:
            f.write(b"more")
        deadline = time.monotonic() + 5.0
        while str(tmp_path / "sub") not in d._listings._touched and time.monotonic() < deadline:
            time.sleep(0.02)  # the event reaches the observer thread (watchdog holds some)
        now[0] = 64.0
        assert sizes(d.scan())["m1.mrc"] == 5
        assert d._counters.folders_reused == 2  # the root and other


def test_a_link_to_a_folder_above_the_watched_one_is_not_followed(tmp_path):
    """D4: ``watch/up -> ..`` is a loop through a folder above the watched one: following it
    lists the watched folder's siblings (another session, the output folder's neighbours)."""
    watch = tmp_path / "watch"
    touch(watch / "a.mrc")
    touch(tmp_path / "other_session" / "b.mrc")
    (watch / "up").symlink_to(tmp_path)
    result = scan(watch)
    assert [o.path.relative_to(watch).as_posix() for o in result.observations] == ["a.mrc"]


def test_filesystem_type_takes_the_last_of_mounts_on_one_mount_point(tmp_path):
    """D9: autofs lists its trigger mount first and the NFS mount over it after: the later
    one (the one in effect) decides, or a share would be watched with inotify alone."""
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n"
                      "auto.data /data autofs rw 0 0\n"
                      "server:/export /data nfs4 rw 0 0\n")
    assert filesystem_type(Path("/data/session1"), mounts_file=mounts) == "nfs4"
    assert needs_polling(filesystem_type(Path("/data/session1"), mounts_file=mounts))


def test_an_event_making_or_removing_a_folder_touches_its_parent(tmp_path):
    """D7: a folder made, removed or renamed names its parent's listing (not only itself);
    only a folder's own "modified" event spares its parent."""
    d = Discovery(tmp_path, polling="on")
    d._touched("created", True, str(tmp_path / "g" / "new"), "")
    _, touched, _ = d._listings.begin()
    assert str(tmp_path / "g") in touched and str(tmp_path / "g" / "new") in touched
    d._touched("modified", True, str(tmp_path / "g" / "new"), "")
    _, touched, _ = d._listings.begin()
    assert touched == {str(tmp_path / "g" / "new")}


def test_a_watched_share_no_longer_mounted_is_a_listing_error_not_an_empty_session(
        tmp_path, monkeypatch):
    """An unmounted share leaves its mount point, an empty folder that lists fine: the daemon
    took it for a session emptied and said nothing. (The share is a line of a mounts file
    here; the daemon tests mount a tmpfs where they may.)"""
    watch = tmp_path / "share" / "session"
    watch.mkdir(parents=True)
    (watch / "movie_001.tif").write_bytes(b"II*\0")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\n//cam/share {tmp_path / 'share'} cifs rw 0 0\n")
    mounted = {"now": True}
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: (
        mounted["now"] if str(p) == str(tmp_path / "share") else real_ismount(p)))
    with Discovery(watch, polling="on", mounts_file=mounts) as discovery:
        listed = discovery.scan()
        assert [o.path.name for o in listed.observations] == ["movie_001.tif"]
        assert listed.errors == ()
        mounted["now"] = False
        away = discovery.scan()
        assert away.observations == ()
        assert away.errors == ((watch, f"the share mounted at {tmp_path / 'share'} at start "
                                       "is not mounted now"),)
        mounted["now"] = True
        assert [o.path.name for o in discovery.scan().observations] == ["movie_001.tif"]
        # an automounter mounts the share again when the folder is looked into: it is
        # (else the check, made before the listing, would keep it unmounted for good)
        looked = []
        real_listdir = os.listdir

        def listdir_mounts(path):
            looked.append(path)
            mounted["now"] = True
            return real_listdir(path)

        monkeypatch.setattr(os, "listdir", listdir_mounts)
        mounted["now"] = False
        assert [o.path.name for o in discovery.scan().observations] == ["movie_001.tif"]
        assert looked == [watch]


def test_events_come_again_once_a_removed_watch_folder_is_made_again(tmp_path):
    """A session folder cleared by hand (removed, made again) stopped inotify's reader for
    good: rescans alone found the next movies, at every scan interval, for the rest of the run.
    The reader is started again once the folder is back, and its events wake the scans."""
    import shutil
    import threading
    import time

    root = tmp_path / "w"
    root.mkdir()
    now, logged, woken = [0.0], [], threading.Event()
    with Discovery(root, polling="off", clock=lambda: now[0], wake=woken.set,
                   log=lambda e, **kw: logged.append(e)) as d:
        assert d.uses_events
        shutil.rmtree(root)
        deadline = time.monotonic() + 10
        while d.uses_events and time.monotonic() < deadline:
            time.sleep(0.05)
            d.check_observer()
        assert not d.uses_events and logged == ["discovery_fallback"]
        d.check_observer()
        assert not d.uses_events  # not there yet
        root.mkdir()
        d.check_observer()
        assert not d.uses_events  # not before REARM_S
        now[0] += 5.0
        d.check_observer()
        assert d.uses_events and logged == ["discovery_fallback", "discovery_events_restored"]
        woken.clear()
        touch(root / "m1.mrc")
        assert woken.wait(5)
