import pytest

from gflow.limits import ReleaseFreedMemory, _malloc_trim, resident_bytes

glibc = pytest.mark.skipif(_malloc_trim() is None or resident_bytes() is None, reason="needs glibc and /proc")


def _churn(megabytes: int) -> list[bytearray]:
    """Allocate many blocks below glibc's mmap threshold, each followed by a small one that
    stays, and free the large ones: the heap cannot shrink from its top, so without a trim
    the freed memory stays resident (fragmentation). Returns the small blocks."""
    large, small = [], []
    for _ in range(megabytes * 16):
        large.append(bytearray(64 * 1024))
        small.append(bytearray(1024))
    del large
    return small


@glibc
def test_freed_memory_goes_back_to_the_system_once_growth_passes_the_slack():
    release = ReleaseFreedMemory(slack=32 * 2**20)
    kept = _churn(256)
    grown = resident_bytes()
    release.on_step(None)
    assert resident_bytes() < grown - 128 * 2**20
    assert len(kept) == 256 * 16


@glibc
def test_growth_within_the_slack_releases_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr("gflow.limits._malloc_trim", lambda: calls.append)
    release = ReleaseFreedMemory(slack=2**40)
    kept = _churn(64)
    release.on_step(None)
    assert calls == [] and kept
    release.slack = -1
    release.on_step(None)
    assert calls == [0]


@glibc
def test_releases_keep_to_their_time_budget_on_one_clock_for_every_observer(monkeypatch):
    calls, clock = [], [100.0]

    def trim(pad: int) -> None:  # a release that takes 1 ms
        calls.append(pad)
        clock[0] += 1e-3

    monkeypatch.setattr("gflow.limits._malloc_trim", lambda: trim)
    monkeypatch.setattr("gflow.limits.time.monotonic", lambda: clock[0])
    a, b = ReleaseFreedMemory(slack=-1, budget=0.01), ReleaseFreedMemory(slack=-1, budget=0.01)
    a.on_step(None)
    assert calls == [0]
    clock[0] += 0.09  # within (1 ms + the pages given back) / 1%: no release, by either observer
    a.on_step(None)
    b.on_step(None)
    assert calls == [0]
    clock[0] += 10.0
    b.on_step(None)
    assert calls == [0, 0]
