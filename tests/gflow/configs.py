"""Run configurations shared by tests."""

from gflow import RunConfig

# A network small enough that a tight-tolerance reference integration takes a second.
# The paper's stepper, named: tests of the stepper and of storage keep it whatever the default.
TINY = RunConfig(ptr=30, pte=10, width=10, depth=2, t_end=5.0, saves=4, save_t_min=0.5, solver="gradient-ratio")
