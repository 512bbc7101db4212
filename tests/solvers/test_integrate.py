import math

import pytest
import torch

from solvers import (
    Adaptive,
    Condition,
    Euler,
    FixedStep,
    FunctionProblem,
    GradientRatio,
    MaxSteps,
    Observer,
    WallClock,
    integrate,
)

from .problems import Recorder, decay


def test_save_times_are_hit_exactly_and_every_save_is_reported():
    rec = Recorder()
    times = [0.0, 0.013, 0.1, 0.77, 3.0]
    integrate(decay(), torch.ones(2), (0.0, 3.0), Adaptive(Euler(), GradientRatio(1e-3)), save_at=times, observers=[rec])
    assert [s.ev.t for s in rec.saves] == times
    assert [s.index for s in rec.saves] == list(range(len(times)))


def test_evaluations_are_counted_accepted_and_rejected_alike():
    rec = Recorder()
    sol = integrate(decay(5.0), torch.ones(2), (0.0, 2.0), Adaptive(Euler(), GradientRatio(1e-3), dt0=1.0),
                    observers=[rec])
    rejected = sum(r.rejected for r in rec.steps)
    assert rejected > 0  # dt0 = 1 is far too large at first
    assert sol.counters.evals == 1 + len(rec.steps) + rejected
    assert [r.evals for r in rec.steps] == sorted(r.evals for r in rec.steps)
    assert sol.counters.steps == len(rec.steps)


def test_reaching_t_end_finishes_and_saves_the_final_state():
    rec = Recorder()
    sol = integrate(decay(), torch.ones(1), (0.0, 1.0), Adaptive(Euler(), FixedStep(0.1), dt0=0.1), observers=[rec])
    assert sol.stop.status == "finished" and sol.t == 1.0
    assert rec.saves[-1].ev.t == 1.0


def test_condition_event_stops_as_finished_at_the_first_step_it_holds():
    sol = integrate(decay(), torch.ones(1), (0.0, 10.0), Adaptive(Euler(), FixedStep(0.01), dt0=0.01),
                    events=[Condition(lambda ev: float(ev.y) < 0.5, "below half")])
    assert sol.stop.status == "finished" and sol.stop.reason == "below half"
    assert float(sol.y) < 0.5 and float(sol.y) / 0.99 >= 0.5
    assert sol.t == pytest.approx(math.log(0.5) / math.log(0.99) // 1 * 0.01 + 0.01, abs=0.011)


def test_max_steps_and_wall_clock_stop_as_stopped():
    sol = integrate(decay(), torch.ones(1), (0.0, 10.0), Adaptive(Euler(), FixedStep(0.01), dt0=0.01),
                    events=[MaxSteps(7)])
    assert sol.stop.status == "stopped" and sol.counters.steps == 7
    sol = integrate(decay(), torch.ones(1), (0.0, 1e9), Adaptive(Euler(), FixedStep(1e-3), dt0=1e-3),
                    events=[WallClock(0.2)])
    assert sol.stop.status == "stopped" and "wall-clock" in sol.stop.reason


def test_non_finite_evaluation_fails_with_the_time_of_the_first_offending_step():
    blowup = FunctionProblem(lambda t, y: torch.full_like(y, math.nan) if t > 0.5 else -y,
                             lambda t, y: {"grad": y})
    sol = integrate(blowup, torch.ones(1), (0.0, 2.0), Adaptive(Euler(), FixedStep(0.1), dt0=0.1))
    assert sol.stop.status == "failed" and "non-finite" in sol.stop.reason
    assert sol.t == pytest.approx(0.5)


def test_collapsing_step_size_fails_instead_of_crawling():
    # The gradient flips sign at every evaluation: the turn ratio never goes below the bound.
    flip = FunctionProblem(lambda t, y: -y, lambda t, y: {"grad": y * (-1) ** int(t * 1e15 % 2)})
    sol = integrate(flip, torch.ones(1), (0.0, 1.0), Adaptive(Euler(), GradientRatio(1e-4), dt0=0.1))
    assert sol.stop.status == "failed" and "collapsed" in sol.stop.reason


def test_resumed_integration_continues_counts_and_matches_uninterrupted_bitwise():
    method = Adaptive(Euler(), GradientRatio(1e-3))
    full = integrate(decay(), torch.ones(3), (0.0, 4.0), method, save_at=[0.0, 1.0, 4.0])
    first = integrate(decay(), torch.ones(3), (0.0, 1.0), method, save_at=[0.0, 1.0])
    second = integrate(decay(), first.y, (1.0, 4.0), method, save_at=[1.0, 4.0], dt=first.dt, counters=first.counters)
    assert torch.equal(full.y, second.y)
    assert second.counters.steps == full.counters.steps
    assert second.counters.evals == full.counters.evals + 1  # the resumed start is evaluated again


@pytest.mark.parametrize("save_at", [[0.0, 2.0, 1.0], [0.0, 5.0]])
def test_bad_save_times_are_rejected(save_at):
    with pytest.raises(ValueError, match="save times"):
        integrate(decay(), torch.ones(1), (0.0, 3.0), Adaptive(Euler(), FixedStep(0.1)), save_at=save_at)


def test_fixed_steps_keep_their_size_when_they_land_on_save_times():
    """Gradient descent at lr = 0.1 is the textbook loop to the bit, although t_save - t
    differs from 0.1 by rounding at the save times it lands on."""
    y0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    problem = FunctionProblem(lambda t, y: -torch.sin(3 * y) - y**3)
    saves = [round(0.1 * k, 10) for k in (1, 3, 7, 20, 55, 149, 200)]
    solution = integrate(problem, y0, (0.0, 20.0), Adaptive(Euler(), FixedStep(0.1), dt0=0.1), save_at=saves)
    y = y0.clone()
    for _ in range(200):
        y = torch.add(y, -torch.sin(3 * y) - y**3, alpha=0.1)
    assert solution.counters.steps == 200 and torch.equal(solution.y, y)


def test_an_interpolating_method_does_not_keep_the_first_evaluation_alive_past_its_step():
    # The one segment of an interpolating method is the whole run: the entry point must not
    # hold the evaluation it started from (for a network, state-sized vectors) through it.
    import gc
    import weakref

    from solvers import ExponentialRosenbrock, LocalError

    made = []

    class Tracked(FunctionProblem):
        def evaluate(self, t, y):
            ev = super().evaluate(t, y)
            made.append(weakref.ref(ev))
            return ev

    alive_at_step = []

    class Probe(Observer):
        def on_step(self, record):
            gc.collect()
            alive_at_step.append(made[0]() is not None)

    stepper = ExponentialRosenbrock()
    method = Adaptive(stepper, LocalError(1e-6, 1e-9, estimate=stepper.error_estimate, order=3), dt0=0.1)
    integrate(Tracked(lambda t, y: -y), torch.ones(4, dtype=torch.float64), (0.0, 5.0), method, observers=[Probe()])
    assert len(alive_at_step) >= 4
    # Still held while its own step is reported (the step's start), released from the next on.
    assert alive_at_step[0] and not any(alive_at_step[1:])
