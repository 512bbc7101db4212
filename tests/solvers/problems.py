"""Small ODEs with closed-form solutions, shared by the solver tests."""

import math

import torch

from solvers import FunctionProblem, Observer


class Recorder(Observer):
    """Keeps every step and save record an integration reports."""

    def __init__(self):
        self.steps, self.saves = [], []

    def on_step(self, record):
        self.steps.append(record)

    def on_save(self, record):
        self.saves.append(record)


def decay(rate: float = 1.0) -> FunctionProblem:
    """dy/dt = -rate y (gradient flow of L = rate |y|^2 / 2): y(t) = y0 e^{-rate t}."""
    return FunctionProblem(lambda t, y: -rate * y, lambda t, y: {"grad": rate * y})


def oscillator(k: float, tau: float = 1.0) -> FunctionProblem:
    """Momentum flow of L = k x^2 / 2: state (x, v), force g = k x."""

    def field(t, y):
        x, v = y.chunk(2)
        return torch.cat([v, -(v + k * x) / tau])

    return FunctionProblem(field, lambda t, y: {"grad": k * y.chunk(2)[0]})


def oscillator_solution(k: float, tau: float, t: float) -> float:
    """x(t) of tau x'' + x' + k x = 0 with x(0) = 1, x'(0) = 0 (underdamped: 4 k tau > 1)."""
    decay_rate = 1 / (2 * tau)
    omega = math.sqrt(4 * k * tau - 1) / (2 * tau)
    return math.exp(-decay_rate * t) * (math.cos(omega * t) + decay_rate / omega * math.sin(omega * t))
