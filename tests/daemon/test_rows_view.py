"""What the tilt-series resolver reads of the state rows: the facts of each row of a real
ledger, kept up to date as rows are written (a row is read again only when written, the
counts follow), and the same as reading every row afresh."""

from __future__ import annotations

from daemon.series.resolution import MovieObservation
from daemon.series.rows_view import RowsView, row_series
from daemon.state.ledger import Ledger, MovieKey
from daemon.state.newest import NewestRows


def _tilt_metadata(series: str, mdoc: str | None) -> dict:
    tilt = {"series": series, **({"mdoc": mdoc} if mdoc else {})}
    return {"log_context": {"series": series}, "extra_record": {"tilt": tilt}}


def _fresh(rows, relative) -> RowsView:
    view = RowsView(relative)
    view.update(rows)
    return view


def test_each_rows_facts_come_from_the_row_and_follow_its_writes(tmp_path):
    relative = lambda path: path.removeprefix("/w/")  # noqa: E731
    wall = [1000.0]  # the ledger's clock: rows written a minute apart
    newest = NewestRows(clock=lambda: 0.0, wall=lambda: wall[0])
    with Ledger(tmp_path / "state.sqlite", clock=lambda: wall[0]) as ledger:
        keys = [MovieKey(f"/w/grid{g}/TS_01_00{i}.tif", 100, 10 + i, "fp")
                for g in (1, 2) for i in range(3)]
        for k, key in enumerate(keys):
            grid = key.path.split("/")[2]
            ledger.add(key, metadata=_tilt_metadata(f"{grid}/TS_01",
                                                    f"/w/{grid}/TS_01.mdoc" if k else None))
        ledger.add(MovieKey("/w/single.tif", 100, 5, "fp"))  # a movie of no series
        for key in keys[:2] + keys[3:4]:
            ledger.claim(key)
            ledger.mark_done(key, outputs={}, timings={}, summary={})
        ledger.claim(keys[2])
        ledger.mark_failed(keys[2], "bad", quarantine=True)
        rows = newest.rows(ledger)
        view = RowsView(relative)
        view.update(rows)

        assert view.done_and_failed("grid1/TS_01") == (2, 1)
        assert view.done_and_failed("grid2/TS_01") == (1, 0)
        assert view.done_and_failed("grid3/TS_01") == (0, 0)
        assert view.observations["/w/grid1/TS_01_001.tif"] == MovieObservation(
            "grid1/TS_01_001.tif", rows["/w/grid1/TS_01_001.tif"].first_seen, 11,
            "/w/grid1/TS_01.mdoc")
        assert view.observations["/w/grid1/TS_01_000.tif"].recorded_mdoc is None
        assert view.observations["/w/single.tif"].name == "single.tif"
        assert view.path_of_name == {path.removeprefix("/w/"): path for path in rows}
        assert row_series(rows["/w/grid2/TS_01_000.tif"]) == {"grid2/TS_01"}
        assert row_series(rows["/w/single.tif"]) == set()

        wall[0] += 60.0
        ledger.claim(keys[4])
        view.update(newest.rows(ledger))
        read = view.rows_read
        wall[0] += 60.0
        view.update(newest.rows(ledger))  # nothing written: nothing read again
        assert view.rows_read == read

        ledger.mark_done(keys[4], outputs={}, timings={}, summary={})  # a tilt corrected,
        ledger.add(MovieKey("/w/grid2/TS_01_003.tif", 100, 13, "fp"),  # a new one seen
                   metadata=_tilt_metadata("grid2/TS_01", "/w/grid2/TS_01.mdoc"))
        wall[0] += 60.0
        view.update(newest.rows(ledger))
        assert view.rows_read == read + 2  # the rows written, not every row
        assert view.done_and_failed("grid2/TS_01") == (2, 0)

        ledger.move(keys[5].path, "/w/elsewhere/TS_01_002.tif", size=keys[5].size,
                    mtime_ns=keys[5].mtime_ns)  # one moved away (the store reads all again)
        ledger.mark_failed(keys[1], "bad", quarantine=True)
        rows = newest.rows(ledger)
        view.update(rows)
        fresh = _fresh(rows, relative)
        assert "/w/grid2/TS_01_002.tif" not in view.observations
        assert view.observations == fresh.observations
        assert view.path_of_name == fresh.path_of_name
        for series in ("grid1/TS_01", "grid2/TS_01"):
            assert view.done_and_failed(series) == fresh.done_and_failed(series)
        assert view.done_and_failed("grid1/TS_01") == (1, 2)


def test_a_name_two_paths_share_stays_while_one_of_them_has_a_row(tmp_path):
    """A database that holds a movie under a relative and an absolute path (the daemon run
    with ``.`` and with ``/w``) names both ``a.tif``: when one row goes, the name keeps the
    other path (it was dropped, though a row still had it)."""
    relative = lambda path: path.removeprefix("/w/")  # noqa: E731
    with Ledger(tmp_path / "state.sqlite") as ledger:
        for path in ("a.tif", "/w/a.tif"):
            ledger.add(MovieKey(path, 100, 10, "fp"))
        rows = NewestRows(clock=lambda: 0.0).rows(ledger)
    view = RowsView(relative)
    view.update(rows)
    named = view.path_of_name["a.tif"]
    other = next(path for path in rows if path != named)
    view.update({other: rows[other]})  # the row named goes; the other is handed again
    assert view.path_of_name == {"a.tif": other}
    assert list(view.observations) == [other]


def test_a_look_at_every_row_of_a_long_history_keeps_none_of_them_decoded(tmp_path):
    """The rows the store keeps for the resolver (a state database of months of sessions, read
    whole at start-up) hold their JSON as text; the view reads each row's tilt fields without
    keeping them decoded (100,000 rows: 230 MB held instead of 777 MB)."""
    import tracemalloc

    frame_doses = [0.8264] * 40
    with Ledger(tmp_path / "state.sqlite") as ledger:
        for i in range(400):
            metadata = _tilt_metadata(f"old/TS_{i // 40}", f"/w/old/TS_{i // 40}.mdoc")
            metadata["extra_record"]["tilt"]["frame_doses_e_A2"] = frame_doses
            metadata["dose"] = {"frame_doses_e_A2": frame_doses, "voltage_kV": 300.0}
            ledger.add(MovieKey(f"/w/old/TS_{i // 40}_{i % 40:03d}.tif", 100, i, "fp"),
                       metadata=metadata)
        tracemalloc.start()
        try:
            rows = NewestRows().rows(ledger)
            view = _fresh(rows, lambda path: path.removeprefix("/w/"))
            held_text, _ = tracemalloc.get_traced_memory()
            for row in rows.values():
                assert row.metadata["extra_record"]["tilt"]["frame_doses_e_A2"] == frame_doses
            held_decoded, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert view.observations["/w/old/TS_3_007.tif"].recorded_mdoc == "/w/old/TS_3.mdoc"
    assert view.done_and_failed("old/TS_3") == (0, 0)
    assert held_text < 0.5 * held_decoded, (held_text, held_decoded)


def test_a_listed_tilt_quarantined_before_its_series_was_resolved_counts_as_failed(tmp_path):
    """A corrupt or truncated tilt is quarantined at validation, before its metadata names its
    series: the feed's series messages said n_failed 0 (a dashboard could not tell it from a
    tilt still to come)."""
    newest = NewestRows(clock=lambda: 0.0, wall=lambda: 1000.0)
    with Ledger(tmp_path / "state.sqlite", clock=lambda: 1000.0) as ledger:
        good = MovieKey("/w/TS_01_000.tif", 100, 10, "fp")
        bad = MovieKey("/w/TS_01_001.tif", 100, 11, "fp")
        ledger.add(good, metadata=_tilt_metadata("TS_01", "/w/TS_01.mdoc"))
        ledger.claim(good)
        ledger.mark_done(good, outputs={}, timings={}, summary={})
        ledger.add(bad, status="quarantined", error="not a movie: bad header")
        ledger.add(MovieKey("/w/other.tif", 100, 12, "fp"), status="quarantined", error="x")
        view = _fresh(newest.rows(ledger), lambda path: path.removeprefix("/w/"))
    listed = frozenset({"TS_01_000.tif", "TS_01_001.tif", "TS_01_002.tif"})
    assert view.done_and_failed("TS_01", listed) == (1, 1)
