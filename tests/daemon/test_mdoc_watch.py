"""The series mdocs the daemon keeps: an mdoc missing for a moment is not forgotten.

SerialEM rewrites an mdoc whole (IMOD's autodoc writer renames the old file to ``name~`` first),
and a network share may hide a file for a scan or two. Forgetting the mdoc at once sent its tilts
to the file-name fallback and redid every corrected tilt twice (with other doses, then back).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mdoc_data import DATA

from daemon.events import Observation, ScanResult
from daemon.series.mdoc_watch import MdocWatcher
from daemon.state.ledger import Ledger


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def warning(self, event: str, **fields) -> None:
        self.events.append(event)


def _scan(*paths: Path) -> ScanResult:
    return ScanResult(tuple(Observation(p, p.stat().st_size, p.stat().st_mtime_ns, "metadata")
                            for p in paths))


def test_an_mdoc_missing_for_less_than_the_grace_is_kept_as_last_read_then_forgotten(tmp_path):
    mdoc = tmp_path / "test_1.mrc.mdoc"
    shutil.copy(DATA / "test_1.mdoc", mdoc)
    log = _Log()
    with Ledger(tmp_path / "state.sqlite") as ledger:
        watcher = MdocWatcher(ledger, log=log, log_once=lambda *a, **k: None,
                              vanish_grace_s=30.0)
        watcher.load()
        watcher.read(_scan(mdoc), now=100.0)
        parsed = watcher.mdocs[str(mdoc)].parsed
        mdoc.rename(mdoc.with_name(mdoc.name + "~"))  # SerialEM rewriting the file
        watcher.read(_scan(), now=101.0)
        watcher.read(_scan(), now=129.0)
        assert watcher.mdocs[str(mdoc)].parsed is parsed and log.events == []
        mdoc.with_name(mdoc.name + "~").rename(mdoc)  # written again: the clock starts over
        watcher.read(_scan(mdoc), now=129.5)
        watcher.read(_scan(), now=140.0)
        assert str(mdoc) in watcher.mdocs
        watcher.read(_scan(), now=170.0)  # 30 s missing: forgotten
        assert str(mdoc) not in watcher.mdocs and log.events == ["mdoc_vanished"]
        assert str(mdoc) not in ledger.mdoc_states()


def test_an_mdoc_that_fails_to_parse_is_reported_and_the_others_are_still_read(tmp_path,
                                                                              monkeypatch):
    """Whatever a damaged mdoc makes the parser raise, the other mdocs of the scan are read
    (before, only OSError was caught: the error went up to the resolver, which lost the scan
    for every series)."""
    import daemon.series.mdoc_watch as mdoc_watch

    good, bad = tmp_path / "TS_01.mrc.mdoc", tmp_path / "TS_02.mrc.mdoc"
    shutil.copy(DATA / "test_1.mdoc", good)
    shutil.copy(DATA / "test_1.mdoc", bad)
    parse = mdoc_watch.read_mdoc

    def read_mdoc(path):
        if Path(path) == bad:
            raise OverflowError("cannot convert float infinity to integer")
        return parse(path)

    monkeypatch.setattr(mdoc_watch, "read_mdoc", read_mdoc)
    reported = []
    with Ledger(tmp_path / "state.sqlite") as ledger:
        watcher = MdocWatcher(ledger, log=_Log(), vanish_grace_s=30.0,
                              log_once=lambda level, event, key, reason, **kw:
                              reported.append((event, key, reason)))
        watcher.load()
        watcher.read(_scan(bad, good), now=100.0)
    assert list(watcher.mdocs) == [str(good)]
    assert reported == [("mdoc_unreadable", str(bad),
                         "OverflowError: cannot convert float infinity to integer")]
