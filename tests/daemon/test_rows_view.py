"""What the tilt-series resolver reads of the state rows: the facts of each row of a real
ledger, made once per version of the rows (a scan with no row written makes none again)."""

from __future__ import annotations

from daemon.series.resolution import MovieObservation
from daemon.series.rows_view import RowsView, row_series
from daemon.state.ledger import Ledger, MovieKey
from daemon.state.newest import NewestRows


def _tilt_metadata(series: str, mdoc: str | None) -> dict:
    tilt = {"series": series, **({"mdoc": mdoc} if mdoc else {})}
    return {"log_context": {"series": series}, "extra_record": {"tilt": tilt}}


def test_each_rows_facts_come_from_the_row_and_are_made_once_per_version(tmp_path):
    names = []
    newest = NewestRows(clock=lambda: 0.0)
    with Ledger(tmp_path / "state.sqlite") as ledger:
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
        view = RowsView(rows, lambda path: names.append(path) or path.removeprefix("/w/"))

        assert view.done_and_failed == {"grid1/TS_01": (2, 1), "grid2/TS_01": (1, 0)}
        assert view.observations["/w/grid1/TS_01_001.tif"] == MovieObservation(
            "grid1/TS_01_001.tif", rows["/w/grid1/TS_01_001.tif"].first_seen, 11,
            "/w/grid1/TS_01.mdoc")
        assert view.observations["/w/grid1/TS_01_000.tif"].recorded_mdoc is None
        assert view.observations["/w/single.tif"].name == "single.tif"
        assert view.path_of_name == {path.removeprefix("/w/"): path for path in rows}
        assert row_series(rows["/w/grid2/TS_01_000.tif"]) == {"grid2/TS_01"}
        assert row_series(rows["/w/single.tif"]) == set()

        made = len(names)
        assert view.observations is view.observations and view.path_of_name is view.path_of_name
        assert len(names) == made  # each made once for this version of the rows
        assert newest.rows(ledger) is rows  # nothing written: the same version
