"""Settle: a file is ready only when size and mtime held across >= 2 scans spanning the settle time."""

from pathlib import Path

import pytest

from daemon.intake.settle import Observation, Settler


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def obs(size: int, mtime_ns: int, name: str = "a.mrc") -> Observation:
    return Observation(Path("/data") / name, size, mtime_ns)


def test_file_settles_only_after_two_identical_scans_spanning_the_settle_time():
    clock = FakeClock()
    settler = Settler(5.0, clock=clock)
    assert settler.update([obs(100, 1)]) == []
    clock.now += 4.9
    assert settler.update([obs(100, 1)]) == []  # two scans, but only 4.9 s apart
    clock.now += 0.2
    assert settler.update([obs(100, 1)]) == [obs(100, 1)]


def test_two_scans_are_needed_even_when_the_settle_time_is_zero():
    settler = Settler(0.0, clock=FakeClock())
    assert settler.update([obs(100, 1)]) == []
    assert settler.update([obs(100, 1)]) == [obs(100, 1)]


def test_a_growing_file_restarts_its_settle_time():
    clock = FakeClock()
    settler = Settler(1.0, clock=clock)
    settler.update([obs(100, 1)])
    clock.now += 2
    assert settler.update([obs(200, 1)]) == []  # size changed: starts over
    clock.now += 2
    assert settler.update([obs(200, 1)]) == [obs(200, 1)]


def test_an_mtime_change_alone_restarts_the_settle_time_as_when_a_header_is_rewritten():
    clock = FakeClock()
    settler = Settler(1.0, clock=clock)
    settler.update([obs(100, 1)])
    clock.now += 2
    assert settler.update([obs(100, 2)]) == []
    clock.now += 2
    assert settler.update([obs(100, 2)]) == [obs(100, 2)]


def test_mtime_far_in_the_past_or_future_does_not_matter_only_its_constancy():
    """The camera PC's clock may be off by hours: the mtime is never compared with our clock."""
    clock = FakeClock()
    settler = Settler(1.0, clock=clock)
    future = 10**19  # year 2286
    settler.update([obs(100, future), obs(100, 0, "b.mrc")])
    clock.now += 1.5
    ready = settler.update([obs(100, future), obs(100, 0, "b.mrc")])
    assert {o.path.name for o in ready} == {"a.mrc", "b.mrc"}


def test_a_vanished_file_is_forgotten_and_starts_over_when_it_reappears():
    clock = FakeClock()
    settler = Settler(1.0, clock=clock)
    settler.update([obs(100, 1)])
    clock.now += 2
    settler.update([])
    assert len(settler) == 0
    clock.now += 2
    assert settler.update([obs(100, 1)]) == []


def test_negative_settle_time_is_rejected_by_name():
    with pytest.raises(ValueError, match="settle_time_s"):
        Settler(-1.0)
