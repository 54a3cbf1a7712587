"""docs/zmq.md shows what the running daemon really sends (faults issue, item 14).

The examples used to come from a publisher fed a hand-made record, and the live movie message
differed (outputs keys and bare names, timings keys, no ``dose.source`` outside a series). Now
they are generated from a running daemon, and this test runs the same session and compares the
key sets of every message, at every depth, with the examples.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_GENERATOR = Path(__file__).resolve().parents[2] / "docs" / "make_zmq_examples.py"


def _generator():
    spec = importlib.util.spec_from_file_location("make_zmq_examples", _GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The messages of a running daemon on the docs' simulated session, and its output folder."""
    generator = _generator()
    examples, out_dir = generator.collect_examples(tmp_path_factory.mktemp("feed"))
    return generator, examples, out_dir


def test_every_documented_example_has_the_keys_of_what_the_running_daemon_sends(live):
    generator, examples, _ = live
    documented = generator.doc_examples(generator.DOC.read_text())
    assert sorted(documented) == sorted(examples) == sorted(generator.TOPICS)
    for topic in generator.TOPICS:
        assert generator.key_sets(documented[topic]) == generator.key_sets(examples[topic]), (
            f"docs/zmq.md example of {topic!r} differs from the running daemon's message: run "
            f"python docs/make_zmq_examples.py")


def test_movie_outputs_are_paths_relative_to_the_output_folder_the_feed_names(live):
    _, examples, out_dir = live
    movie = examples["movie"]
    assert movie["out_dir"] == str(out_dir)
    assert examples["heartbeat"]["out_dir"] == examples["state"]["out_dir"] == str(out_dir)
    assert sorted(movie["outputs"]) == ["dw", "even", "motion", "odd", "sum"]
    for kind, relative in movie["outputs"].items():
        assert not Path(relative).is_absolute(), (kind, relative)
        assert (Path(movie["out_dir"]) / relative).is_file(), (kind, relative)


def test_the_documented_movie_message_shows_dose_source_and_relative_outputs(live):
    generator, _, _ = live
    movie = generator.doc_examples(generator.DOC.read_text())["movie"]
    assert set(movie["dose"]) >= {"pre_exposure_e_A2", "total_e_A2", "source", "fallback"}
    assert set(movie["outputs"]) == {"sum", "dw", "even", "odd", "motion"}
    assert all(not Path(p).is_absolute() for p in movie["outputs"].values())
    assert movie["out_dir"] == "/data/session/motioncorr"


_ENVELOPE = {"schema", "seq", "time", "host", "session"}
#: objects whose members the docs name one by one (the others: "scalar members of ...")
_ENUMERATED = {"movie": ("drift", "timings_s", "local", "resolution", "outputs", "ran_on"),
               "series": ("stacks",)}


def test_every_key_the_running_daemon_sends_is_explained_in_its_topics_section(live):
    """The key sets of the examples are checked above; this checks the prose: each top-level
    key of a message is in its section's table, and each member of the objects the table
    explains member by member is named in the section (``ran_on``, ``drift.early_frames`` and
    ``timings_s.quicklook`` were sent but explained nowhere)."""
    import re

    generator, examples, _ = live
    sections = {part.split("`", 2)[1]: part for part in
                re.split(r"\n## ", generator.DOC.read_text()) if part.startswith("`")}
    for topic, message in examples.items():
        prose = sections[topic].split("<!-- example")[0]
        named = set(re.findall(r"`([^`]+)`", prose))
        table_keys = {key for line in prose.splitlines() if line.startswith("| `")
                      for key in re.findall(r"`([^`]+)`", line.split("|")[1])}
        assert set(message) - _ENVELOPE - table_keys == set(), topic
        for key in _ENUMERATED.get(topic, ()):
            members = set(message.get(key) or {})
            assert members - named == set(), f"{topic}.{key}"
