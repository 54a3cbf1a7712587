"""Validation: a settled movie is read only when its format and frame mdoc say it is complete."""

import numpy as np

from daemon.simulation.movies import write_frame_mdoc, write_movie_progressively
from daemon.intake.validate import read_frame_mdoc, validate


def frames(n=4, shape=(64, 64)):
    return np.random.default_rng(0).poisson(1.0, (n, *shape)).astype(np.int16)


def no_sleep(_):
    pass


def test_a_complete_mrc_movie_is_ready(tmp_path):
    path = tmp_path / "a.mrc"
    write_movie_progressively(path, frames(), pixel_size_A=1.0, sleep=no_sleep)
    verdict = validate(path, stable_for_s=1.0, incomplete_grace_s=60)
    assert (verdict.decision, verdict.n_frames) == ("ready", 4)


def test_a_movie_shorter_than_its_header_waits_then_is_rejected_after_the_grace_time(tmp_path):
    path = tmp_path / "a.mrc"
    write_movie_progressively(path, frames(6), pixel_size_A=1.0, stop_after=3, sleep=no_sleep)
    waiting = validate(path, stable_for_s=1.0, incomplete_grace_s=60)
    assert waiting.decision == "wait"
    rejected = validate(path, stable_for_s=61.0, incomplete_grace_s=60)
    assert rejected.decision == "reject" and "incomplete after 61 s" in rejected.reason


def test_a_full_size_mrc_ending_in_zeros_waits_then_is_taken_as_it_is_after_the_grace(tmp_path):
    """A copy that sized the file first and stalled: it waits (it was corrected as it stood,
    then again once filled); unchanged for the grace time, a movie whose last frame is blank
    is corrected as it is, not quarantined."""
    path = tmp_path / "a.mrc"
    movie = frames(6)
    movie[3:] = 0
    write_movie_progressively(path, movie, pixel_size_A=1.0, sleep=no_sleep)
    waiting = validate(path, stable_for_s=10.0, incomplete_grace_s=60)
    assert waiting.decision == "wait" and "last frame ends in zeros" in waiting.reason
    taken = validate(path, stable_for_s=61.0, incomplete_grace_s=60)
    assert (taken.decision, taken.n_frames) == ("ready", 6)
    assert taken.reason.endswith("unchanged for 61 s: taken as it is")


def test_header_rewritten_with_fewer_frames_at_the_end_makes_the_movie_complete(tmp_path):
    path = tmp_path / "a.mrc"
    write_movie_progressively(path, frames(4), pixel_size_A=1.0, expected_frames=6, sleep=no_sleep)
    assert validate(path, stable_for_s=0.0, incomplete_grace_s=60).n_frames == 4


def test_garbage_with_a_movie_name_is_rejected_with_the_readers_reason(tmp_path):
    path = tmp_path / "junk.mrc"
    path.write_bytes(b"this is not a movie" * 100)
    verdict = validate(path, stable_for_s=100.0, incomplete_grace_s=60)
    assert verdict.decision == "reject" and verdict.reason


def test_garbage_is_rejected_as_not_a_movie_once_settled_not_after_the_grace_time(tmp_path):
    for name, payload in (("junk.mrc", b"PK\x03\x04 a zip file, not a movie" * 50),
                          ("junk.tif", bytes(range(256)) * 20)):
        path = tmp_path / name
        path.write_bytes(payload)
        verdict = validate(path, stable_for_s=0.0, incomplete_grace_s=120)
        assert verdict.decision == "reject" and verdict.reason.startswith("not a movie"), verdict


def test_a_directory_with_a_movie_name_is_rejected(tmp_path):
    (tmp_path / "x.mrc").mkdir()
    verdict = validate(tmp_path / "x.mrc", stable_for_s=0, incomplete_grace_s=60)
    assert (verdict.decision, verdict.reason) == ("reject", "not a regular file")


def test_a_movie_gone_when_validated_waits_and_is_ready_when_it_comes_back(tmp_path):
    """A folder moved aside and back by an operator, between the scan that listed its movies
    and their validation: before, each was quarantined for good as "not a regular file"."""
    from daemon.intake.validate import GONE_REASON

    path = tmp_path / "grid2" / "TS_01_001_3.0.mrc"
    path.parent.mkdir()
    write_movie_progressively(path, frames(4), pixel_size_A=1.0, sleep=no_sleep)
    path.parent.rename(tmp_path / "aside")
    verdict = validate(path, stable_for_s=5, incomplete_grace_s=60)
    assert (verdict.decision, verdict.reason) == ("wait", GONE_REASON)
    (tmp_path / "aside").rename(path.parent)
    assert validate(path, stable_for_s=5, incomplete_grace_s=60).decision == "ready"


def test_a_frame_mdoc_that_disagrees_with_the_frame_count_makes_the_movie_wait(tmp_path):
    path = tmp_path / "a.mrc"
    write_movie_progressively(path, frames(4), pixel_size_A=1.0, sleep=no_sleep)
    write_frame_mdoc(path, 5, pixel_size_A=1.0, dose_per_frame_e_A2=1.0)
    assert validate(path, stable_for_s=1, incomplete_grace_s=60).decision == "wait"
    write_frame_mdoc(path, 4, pixel_size_A=1.0, dose_per_frame_e_A2=1.0)
    verdict = validate(path, stable_for_s=1, incomplete_grace_s=60)
    assert verdict.decision == "ready" and verdict.reason == "frame mdoc agrees"


def test_required_frame_mdoc_is_waited_for(tmp_path):
    path = tmp_path / "a.mrc"
    write_movie_progressively(path, frames(4), pixel_size_A=1.0, sleep=no_sleep)
    assert validate(path, stable_for_s=1, incomplete_grace_s=60,
                    require_frame_mdoc=True).decision == "wait"
    mdoc = write_frame_mdoc(path, 4, pixel_size_A=1.0, dose_per_frame_e_A2=1.0)
    assert read_frame_mdoc(mdoc).num_subframes == 4
    assert validate(path, stable_for_s=1, incomplete_grace_s=60,
                    require_frame_mdoc=True).decision == "ready"


def test_a_frame_mdocs_absurd_subframe_count_is_no_count_not_an_error(tmp_path):
    """A damaged NumSubFrames of 5,000 digits (Python refuses to convert more than 4,300):
    before, the error escaped validation and the movie was neither corrected nor quarantined."""
    mdoc = tmp_path / "m.tif.mdoc"
    mdoc.write_text("[FrameSet = 0]\nNumSubFrames = " + "9" * 5000 + "\n")
    assert read_frame_mdoc(mdoc).num_subframes is None


def test_a_movie_quarantined_at_validation_is_an_error_saying_how_to_requeue_it(tmp_path):
    """It is not corrected: it was logged a warning, below a full disk's retries (errors that
    lost nothing), and `journalctl -p err` missed it."""
    from service_run import watch_once

    from correction.params import CorrectionParams, DoseParams

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    (watch / "corrupt.mrc").write_bytes(np.random.default_rng(0).bytes(4096))
    log, _ = watch_once(watch, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)))
    (entry,) = [(level, f) for level, e, f in log.events if e == "movie_quarantined"]
    assert entry[0] == "error" and "motionwatch retry" in entry[1]["note"]


def test_a_frame_mdoc_saved_as_utf16_is_found_complete_with_its_frame_count(tmp_path):
    """It was read as UTF-8: no [FrameSet = 0] found, so a movie requiring its frame mdoc was
    refused as having none after the wait, though the file was there."""
    text = "PixelSpacing = 0.83\n\n[FrameSet = 0]\nNumSubFrames = 40\nTiltAngle = 3.0\n"
    path = tmp_path / "m.tif.mdoc"
    path.write_bytes(text.encode("utf-16"))
    found = read_frame_mdoc(path)
    assert found.has_frameset and found.num_subframes == 40


def test_a_frame_mdoc_saying_fewer_frames_than_the_file_has_also_waits_then_is_rejected(tmp_path):
    """V1: "a movie whose frame count disagrees waits": an mdoc of fewer frames than the file
    (the mdoc of another exposure left beside it, a file written again) is a disagreement too,
    and one that lasts past the grace time is rejected."""
    path = tmp_path / "a.mrc"
    data = np.random.default_rng(0).poisson(1.0, (4, 64, 64)).astype(np.int16)
    write_movie_progressively(path, data, pixel_size_A=1.0, sleep=lambda _: None)
    write_frame_mdoc(path, 3, pixel_size_A=1.0, dose_per_frame_e_A2=1.0)
    verdict = validate(path, stable_for_s=1, incomplete_grace_s=60)
    assert verdict.decision == "wait" and "3 frames" in verdict.reason
    assert validate(path, stable_for_s=61, incomplete_grace_s=60).decision == "reject"
