import math

import pytest
import torch

from solvers import (
    Adaptive,
    Euler,
    FixedStep,
    FunctionProblem,
    GradientRatio,
    Observer,
    RatioTarget,
    integrate,
)
from solvers.controllers import gradient_turn


class Steps(Observer):
    def __init__(self):
        self.records = []

    def on_step(self, record):
        self.records.append(record)


def test_gradient_turn_is_the_papers_ratio():
    g, g2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    assert gradient_turn(g, g2) == pytest.approx(5.0 / 2.0)
    assert gradient_turn(torch.zeros(2), torch.zeros(2)) == 0.0  # at rest
    assert gradient_turn(g, torch.zeros(2)) == math.inf  # a step that annihilated the gradient
    assert gradient_turn(torch.zeros(2), g) == math.inf  # one that left a stationary point


@pytest.mark.parametrize("scale", [1e-100, 1e-160, 1e-200, 1e-300])
def test_gradient_turn_does_not_depend_on_the_gradients_scale_down_to_subnormals(scale):
    g, g2 = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([1.0, 0.01, 2.0])
    assert gradient_turn(scale * g, scale * g2) == pytest.approx(gradient_turn(g, g2), rel=1e-10)


def test_the_paper_controller_does_not_accept_a_step_that_annihilates_the_gradient():
    """y' = -y from y = 1: a first Euler step of dt = 1 lands on y = 0 exactly. Accepting it
    (ratio 0) would finish at y(10) = 0; rejecting it, the run reaches e^-10 to the accuracy of
    Euler at the steps the bound allows: r = dt^2 / (1 - dt) < max_dgrad, so dt ~ sqrt(max_dgrad)
    and the relative error ~ T dt / 2, falling tenfold when the bound falls a hundredfold."""
    problem = FunctionProblem(lambda t, y: -y, lambda t, y: {"grad": y})
    errors = []
    for bound in (1e-4, 1e-6):
        sol = integrate(problem, torch.ones(1), (0.0, 10.0), Adaptive(Euler(), GradientRatio(max_dgrad=bound)),
                        save_at=[1.0, 10.0])
        assert sol.stop.status == "finished"
        errors.append(abs(float(sol.y) / math.exp(-10.0) - 1))
    assert errors[0] < 10 * 0.01 / 2 and errors[1] < errors[0] / 5


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-14), (torch.float32, 1e-3)])
def test_gradient_turn_keeps_tiny_turns_accurate(dtype, tol):
    """Nearly parallel gradients (r ~ 1e-8, the regime of small steps): the float64 path
    expands ||g' - g||^2 and must stay within ~eps of the exact value; the float32 path
    must not lose the small difference to cancellation."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(30_000, dtype=torch.float64, generator=gen)
    g_new = g + 1e-4 * torch.randn(30_000, dtype=torch.float64, generator=gen)
    exact = float((g_new - g).dot(g_new - g)) / float(g.norm() * g_new.norm())
    r = gradient_turn(g.to(dtype), g_new.to(dtype))
    assert abs(r - exact) < tol * exact if dtype == torch.float32 else abs(r - exact) < tol


def _stiffening_at(t_ramp: float, rate: float) -> FunctionProblem:
    """Gradient flow of L = lambda(t) |y|^2 / 2 with lambda rising smoothly but fast from 1
    to ``rate`` around t_ramp: a planted stiff stretch the controller must slow down for."""

    def lam(t):
        return 1.0 + (rate - 1.0) / (1.0 + math.exp(-(t - t_ramp) / 0.01))

    return FunctionProblem(lambda t, y: -lam(t) * y, lambda t, y: {"grad": lam(t) * y})


def test_gradient_ratio_rejects_and_shrinks_tenfold_at_a_planted_stiff_step():
    steps = Steps()
    integrate(_stiffening_at(2.0, 1e3), torch.ones(3), (0.0, 2.5),
              Adaptive(Euler(), GradientRatio(max_dgrad=1e-2), dt0=0.05), observers=[steps])
    assert steps.records[-1].ev.t == 2.5
    early = [r for r in steps.records if r.ev.t < 1.5]
    assert sum(r.rejected for r in early) == 0  # smooth stretch: no rejection once dt has settled
    ramp = next(i for i, r in enumerate(steps.records) if r.ev.t > 1.5 and r.rejected > 0)
    record, previous = steps.records[ramp], steps.records[ramp - 1]
    # Each rejection divides the controller's dt by 10; the accepted step then used that dt.
    shrunk = previous.dt / 10**record.rejected
    assert record.dt == pytest.approx(shrunk) or record.dt == pytest.approx(shrunk * 1.1)
    assert all(r.ratios["dgrad"] < 1.0 for r in steps.records)
    assert min(r.dt for r in steps.records if r.ev.t > 2.0) < previous.dt / 10


def test_gradient_ratio_grows_by_1_1_only_when_every_ratio_is_under_half():
    controller = GradientRatio(max_dgrad=10.0, max_dout=1.0)
    p = FunctionProblem(lambda t, y: -y, lambda t, y: {"grad": y.clone(), "f": y.clone()})
    a = p.evaluate(0.0, torch.tensor([1.0]))
    small = p.evaluate(0.1, torch.tensor([0.9]))
    mid = p.evaluate(0.1, torch.tensor([0.3]))  # dout = 0.7: accepted, not grown
    big = p.evaluate(0.1, torch.tensor([-0.5]))
    assert controller.adapt(a, small, 0.1, 0.1).dt_next == pytest.approx(0.11)
    decision = controller.adapt(a, mid, 0.1, 0.1)
    assert decision.accept and decision.dt_next == 0.1
    decision = controller.adapt(a, big, 0.1, 0.1)
    assert not decision.accept and decision.dt_next == pytest.approx(0.01)


def test_ratio_target_follows_a_stiffening_problem_with_fewer_rejections():
    # lambda(t) = 1 + t^2: the stable step keeps shrinking, so the paper's grow-by-1.1 rule
    # runs into its bound again and again, each time paying a rejected evaluation.
    problem = FunctionProblem(lambda t, y: -(1 + t * t) * y, lambda t, y: {"grad": (1 + t * t) * y})
    runs = {}
    for name, controller in (("paper", GradientRatio(1e-4)), ("target", RatioTarget(1e-4))):
        obs = Steps()
        integrate(problem, torch.ones(2), (0.0, 3.0), Adaptive(Euler(), controller, dt0=0.01), observers=[obs])
        runs[name] = obs.records
    target_records, paper_records = runs["target"], runs["paper"]
    assert all(r.ratios["dgrad"] < 1.0 for r in target_records)
    assert sum(r.rejected for r in target_records) < sum(r.rejected for r in paper_records) / 2
    late = target_records[len(target_records) // 4:]
    mean_ratio = sum(r.ratios["dgrad"] for r in late) / len(late)
    assert 0.3 < mean_ratio < 0.7  # it sits near its target of half the bound


@pytest.mark.parametrize("bad", [dict(max_dgrad=0.0), dict(max_dout=-1.0)])
def test_controllers_reject_non_positive_bounds(bad):
    for cls in (GradientRatio, RatioTarget):
        with pytest.raises(ValueError):
            cls(**bad)


def test_fixed_step_rejects_non_positive_dt():
    with pytest.raises(ValueError, match="dt"):
        FixedStep(0.0)


def test_nan_ratio_counts_as_exceeded():
    c = GradientRatio(max_dgrad=1.0)
    p = FunctionProblem(lambda t, y: -y, lambda t, y: {"grad": y})
    a = p.evaluate(0.0, torch.tensor([1.0]))
    b = p.evaluate(0.0, torch.tensor([math.inf]))
    assert not c.adapt(a, b, 0.1, 0.1).accept
