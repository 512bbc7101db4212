"""How many torch threads a run takes by default (gflow/threads.py): the cores that other
processes' load leaves free."""

import builtins
import math
import os
import time

import pytest

from gflow import threads


def test_default_threads_honour_omp_num_threads_and_the_load(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "recent_busy", lambda: None)  # the load average's rule alone
    monkeypatch.setattr(os, "getloadavg", lambda: (1e6, 0.0, 0.0))
    assert threads.default_threads() == 1  # a loaded machine: one thread
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert threads.default_threads() == len(os.sched_getaffinity(0))  # idle: every core


def test_a_process_does_not_count_its_own_load_as_another_s(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    monkeypatch.setattr(threads, "recent_busy", lambda: None)  # the load average's rule alone
    monkeypatch.setattr(os, "getloadavg", lambda: (1.9, 0.0, 0.0))
    monkeypatch.setattr(threads, "own_load", lambda: 1.8)  # the load is this process's last run
    assert threads.default_threads() == 2
    monkeypatch.setattr(threads, "own_load", lambda: 0.1)  # another process's
    assert threads.default_threads() == 1


@pytest.mark.parametrize("load, recent, expected", [
    (1.9, 0.0, 2),   # the load average remembers a process that has ended: it holds no core now
    (1.0, 1.0, 1),   # another process busy in both: its core is taken
    (0.0, 2.0, 2),   # a moment's work the last minute has not seen (a process starting): no core taken
    (1.9, None, 1),  # no /proc/stat: the load average alone
])
def test_other_processes_load_is_the_lower_of_the_load_average_and_their_recent_work(monkeypatch, load, recent,
                                                                                     expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(threads, "own_load", lambda: 0.0)
    monkeypatch.setattr(threads, "recent_busy", lambda: recent)
    assert threads.default_threads() == expected


def test_recent_busy_is_other_processes_work_on_this_process_s_cpus_per_second(monkeypatch):
    # /proc/stat's busy seconds on this process's CPUs, this process's CPU time, the clock
    readings = iter([(0.0, 100.0, 10.0), (0.1, 100.1, 10.1), (2.0, 103.0, 11.0), (3.0, 103.5, 11.5)])
    monkeypatch.setattr(threads.RecentBusy, "_reading", staticmethod(lambda: next(readings)))
    busy = threads.RecentBusy()
    assert busy() is None  # 0.1 s: too short to tell; the interval runs on from t = 0
    assert busy() == pytest.approx((3.0 - 1.0) / 2.0)  # 3 busy seconds in 2, 1 of them this process's
    assert busy() == pytest.approx(0.0)  # the next second, all the busy time was this process's
    monkeypatch.setattr(threads.RecentBusy, "_reading", staticmethod(lambda: None))
    assert busy() is None  # unreadable


def test_recent_busy_samples_afresh_rather_than_average_over_an_old_interval(monkeypatch):
    from gflow import threads

    # imported at t = 0; idle for an hour; then another process busy on one core when the
    # run starts: averaged over the hour it would be 0.0003 of a core
    readings = iter([(0.0, 0.0, 0.0), (3600.0, 1.0, 0.0), (3600.2, 1.2, 0.0)])
    slept = []
    monkeypatch.setattr(threads.RecentBusy, "_reading", staticmethod(lambda: next(readings)))
    monkeypatch.setattr(time, "sleep", slept.append)
    busy = threads.RecentBusy()
    assert busy() == pytest.approx(1.0)
    assert slept == [threads.RecentBusy.MIN_INTERVAL]


def test_busy_seconds_count_only_the_cpus_given(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(f"cpu  {3 * ticks} 0 0 0 0 0 0 0 0 0\n"
                    f"cpu0 {ticks} 0 0 {5 * ticks} {7 * ticks} 0 0 0 0 0\n"
                    f"cpu1 0 {ticks} {ticks} 0 0 0 0 0 0 0\n"
                    f"cpu2 {100 * ticks} 0 0 0 0 0 0 0 0 0\nintr 0\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(stat if path == "/proc/stat" else path, *a, **k))
    assert threads._busy_seconds({0, 1}) == pytest.approx(3.0)  # idle and I/O wait are not busy; cpu2 not ours
    assert threads._busy_seconds({2}) == pytest.approx(100.0)


def test_own_load_is_the_cpu_rate_damped_like_the_load_average(monkeypatch):
    clock = iter([0.0, 60.0, 120.0, 120.0])
    cpu = iter([0.0, 120.0, 120.0, 120.0])  # two cores busy for a minute, then idle for one
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(time, "process_time", lambda: next(cpu))
    load = threads.OwnLoad()
    assert load() == pytest.approx(2 * (1 - math.exp(-1)))
    assert load() == pytest.approx(2 * (1 - math.exp(-1)) * math.exp(-1))
    assert load() == pytest.approx(2 * (1 - math.exp(-1)) * math.exp(-1))  # no time passed: unchanged
