"""One watch folder, two spellings: a run started on a link to the folder an earlier run
watched by its real path watches it as the state names it; the other way round, the state's
rows are named anew by the real path given."""

from __future__ import annotations

from daemon_process import events_in
from series_session import copied_series

from daemon.commands.cli import main
from daemon.state.ledger import DB_NAME, Ledger

FAST = ["--settle-time", "0.2", "--scan-interval", "0.1", "--mdoc-quiet", "0.5",
        "--exit-when-idle", "2", "--no-publish", "--dose-per-frame", "1"]


def _nothing_happened(events, out, watch, tilts) -> None:
    """No tilt corrected or met again, the series not re-opened, and the state naming every
    tilt once, below ``watch``."""
    assert not [e for e in events if e["event"] in ("series_reopened", "movie_done",
                                                    "movie_alias")]
    with Ledger(out / DB_NAME, read_only=True) as ledger:
        assert ledger.movie_counts()["done"] == len(tilts)
        assert {r.key.path for r in ledger.rows()} == {str(watch / t.movie.path.name)
                                                      for t in tilts}


def test_a_run_on_a_link_to_the_watched_folder_leaves_its_finished_series_finished(
        tmp_path, capsys):
    """Run 1 watched ``w`` and finished its series; run 2, on ``current -> w`` (a unit file
    installed again with the link's name), re-opened the series ("4 movie(s) corrected
    again", none was) and left it open for good: every tilt read as another file under the
    new spelling. Now run 2 watches the folder as the state names it, and nothing happens."""
    watch, out, tilts = copied_series(tmp_path, seed=5)
    assert main(["watch", str(watch), "--out", str(out), *FAST]) == 0
    first = events_in(capsys.readouterr().out)
    assert [e["event"] for e in first].count("movie_done") == len(tilts)
    assert any(e["event"] == "series_completed" for e in first)

    link = tmp_path / "current"
    link.symlink_to(watch, target_is_directory=True)
    assert main(["watch", str(link), "--out", str(out), *FAST]) == 0
    second = events_in(capsys.readouterr().out)
    said = [e for e in second if e["event"] == "watch_folder_as_recorded"]
    assert said and said[0]["given"] == str(link) and said[0]["watching"] == str(watch)
    _nothing_happened(second, out, watch, tilts)


def test_a_recorded_link_is_not_taken_over_a_real_path_given_instead(tmp_path):
    """Watched by a ``current`` link before, by the real path now (so that re-pointing the link
    at the next session does not stop the service): the real path stays, as given."""
    from daemon.engine.ownership import recorded_spelling, served_folders

    real, out = tmp_path / "2026-12-07", tmp_path / "out"
    real.mkdir()
    out.mkdir()
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)
    by_link = served_folders({}, watch_dir=link, out_dir=out, state_dir=out)
    assert recorded_spelling(by_link, watch_dir=real, out_dir=out, state_dir=out) is None
    by_real = served_folders({}, watch_dir=real, out_dir=out, state_dir=out)
    assert recorded_spelling(by_real, watch_dir=link, out_dir=out, state_dir=out) == real


def test_a_run_on_the_real_path_of_a_linked_folder_leaves_its_finished_series_finished(
        tmp_path, capsys):
    """Run 1 watched ``current -> w``; run 2 watches ``w`` itself (so that re-pointing the link
    at the next session does not stop it). Every tilt was met again under the new spelling:
    none was corrected twice, but the series was re-opened and never assembled again
    (its STAR listed both spellings). Now the state's rows are named anew below the path
    given, and nothing happens."""
    watch, out, tilts = copied_series(tmp_path, seed=6)
    link = tmp_path / "current"
    link.symlink_to(watch, target_is_directory=True)
    assert main(["watch", str(link), "--out", str(out), *FAST]) == 0
    first = events_in(capsys.readouterr().out)
    assert [e["event"] for e in first].count("movie_done") == len(tilts)
    assert any(e["event"] == "series_completed" for e in first)

    assert main(["watch", str(watch), "--out", str(out), *FAST]) == 0
    second = events_in(capsys.readouterr().out)
    _nothing_happened(second, out, watch, tilts)
    respelled = [e for e in second if e["event"] == "state_respelled"]
    assert respelled and respelled[0]["movies"] == len(tilts)
    # RELION's files name the movies by the real path too: the link is re-pointed at the next
    # session, whose movies of the same names they would have named
    import starfile

    for star in (out / "TS_01" / "TS_01.star", out / "corrected_tilt_series.star"):
        tables = starfile.read(star, always_dict=True)
        names = [str(v) for t in tables.values() if hasattr(t, "columns")
                 for c in ("rlnMicrographMovieName",) if c in t.columns for v in t[c]]
        assert all(str(link) not in n for n in names), (star, names)
    assert sorted(n for t in starfile.read(out / "TS_01" / "TS_01.star",
                                           always_dict=True).values()
                  for n in t["rlnMicrographMovieName"]) == sorted(
        str(watch / t.movie.path.name) for t in tilts)
    # written again once: the next start leaves the movies' own files as they are
    stars = {t.movie.path.stem: (out / f"{t.movie.path.stem}.star").stat().st_mtime_ns
             for t in tilts}
    assert main(["watch", str(watch), "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    assert {stem: (out / f"{stem}.star").stat().st_mtime_ns for stem in stars} == stars


def test_rows_of_a_link_since_re_pointed_stay_their_session_s(tmp_path):
    """``current`` led to yesterday's folder when it was watched; it leads to today's now, which
    is given by its real path: yesterday's rows are not today's movies, and keep their names."""
    from daemon.engine.ownership import respelled_from, served_folders

    yesterday, today, out = tmp_path / "2026-12-06", tmp_path / "2026-12-07", tmp_path / "out"
    for folder in (yesterday, today, out):
        folder.mkdir()
    link = tmp_path / "current"
    link.symlink_to(yesterday, target_is_directory=True)
    served = served_folders({}, watch_dir=link, out_dir=out, state_dir=out)
    assert respelled_from(served, watch_dir=yesterday, out_dir=out, state_dir=out) == str(link)
    link.unlink()
    link.symlink_to(today, target_is_directory=True)
    assert respelled_from(served, watch_dir=today, out_dir=out, state_dir=out) is None
    assert respelled_from(served, watch_dir=link, out_dir=out, state_dir=out) is None


def test_only_the_output_folders_rows_are_named_anew_in_a_shared_state_folder(tmp_path):
    """A state folder shared by two sessions, both watched through ``current`` (re-pointed):
    the rows of both were under ``current/``, and giving one session's real path named the
    other's movies as its own. Only rows whose outputs lie in this output folder (or, without
    outputs, whose file is at the new name) are named anew."""
    from daemon.events import MovieKey

    real, out_a, out_b, link = (tmp_path / "s2", tmp_path / "outA", tmp_path / "outB",
                                tmp_path / "current")
    real.mkdir()
    (real / "pending.mrc").write_bytes(b"frames")
    st = (real / "pending.mrc").stat()
    with Ledger(tmp_path / DB_NAME) as ledger:
        for name, out in (("mine.mrc", out_b), ("theirs.mrc", out_a)):
            key = MovieKey(f"{link}/{name}", 10, 1, "f")
            ledger.add(key)
            ledger.claim(key)
            ledger.mark_done(key, outputs={"motion": f"{out}/{name}.motion.json"}, timings={},
                             summary={})
        ledger.add(MovieKey(f"{link}/pending.mrc", st.st_size, st.st_mtime_ns, "f"))
        ledger.add(MovieKey(f"{link}/gone.mrc", 5, 1, "f"))
        assert ledger.respell(str(link), str(real), out_dir=str(out_b)) == 2
        assert sorted(r.key.path for r in ledger.rows()) == sorted([
            f"{real}/mine.mrc", f"{link}/theirs.mrc", f"{real}/pending.mrc", f"{link}/gone.mrc"])
