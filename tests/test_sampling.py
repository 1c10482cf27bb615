"""ODE solvers and the classifier-free-guidance wrapper of crossflow.sampling."""

from __future__ import annotations

import math

import pytest
import torch

from crossflow.sampling import classifier_free_guidance, solve_ode, time_grid


def test_time_grid() -> None:
    grid = time_grid(4)
    torch.testing.assert_close(grid, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    with pytest.raises(ValueError):
        time_grid(0)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_constant_velocity_is_integrated_exactly_in_one_step(solver: str) -> None:
    x0 = torch.randn(3, 2, 4, 4)
    c = torch.randn(3, 2, 4, 4)
    x1 = solve_ode(lambda x, t: c, x0, num_steps=1, solver=solver)
    torch.testing.assert_close(x1, x0 + c, rtol=0, atol=0)


def _linear_ode_error(solver: str, steps: int, a: float = 1.0) -> float:
    x0 = torch.ones(2, 3, dtype=torch.float64)
    x1 = solve_ode(lambda x, t: a * x, x0, num_steps=steps, solver=solver)
    return (x1 - x0 * math.exp(a)).abs().max().item()


def test_heun_beats_euler_on_linear_ode() -> None:
    euler, heun = _linear_ode_error("euler", 10), _linear_ode_error("heun", 10)
    assert heun < euler / 10
    # Orders of convergence: halving h halves Euler's error and quarters Heun's.
    assert _linear_ode_error("euler", 10) / _linear_ode_error("euler", 20) == pytest.approx(2.0, rel=0.1)
    assert _linear_ode_error("heun", 10) / _linear_ode_error("heun", 20) == pytest.approx(4.0, rel=0.1)


def test_euler_on_straight_line_field_lands_on_target() -> None:
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    x, trajectory = solve_ode(lambda x, t: z1 - z0, z0, num_steps=7, solver="euler", return_trajectory=True)
    torch.testing.assert_close(x, z1, rtol=0, atol=1e-5)
    # Every intermediate state lies on the straight line z0 + t·(z1 − z0).
    for t, state in zip(time_grid(7).tolist(), trajectory, strict=True):
        torch.testing.assert_close(state, z0 + t * (z1 - z0), rtol=0, atol=1e-5)


def test_euler_on_state_dependent_straight_field_lands_on_target() -> None:
    # The conditional OT field towards z1, v(x, t) = (z1 − x) / (1 − t), is never evaluated at t = 1 by Euler.
    g = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    x = solve_ode(lambda x, t: (z1 - x) / (1 - t).reshape(-1, 1, 1, 1), z0, num_steps=5)
    torch.testing.assert_close(x, z1, rtol=0, atol=1e-5)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_trajectory_length_and_ends(solver: str) -> None:
    x0 = torch.randn(2, 4)
    x, trajectory = solve_ode(lambda x, t: -x, x0, num_steps=6, solver=solver, return_trajectory=True)
    assert len(trajectory) == 7
    assert trajectory[0] is x0
    assert torch.equal(trajectory[-1], x)
    assert isinstance(solve_ode(lambda x, t: -x, x0, num_steps=6, solver=solver), torch.Tensor)


def test_velocity_fn_receives_per_sample_times_on_the_grid() -> None:
    seen: list[torch.Tensor] = []

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        return torch.zeros_like(x)

    solve_ode(velocity, torch.zeros(3, 2), num_steps=4, solver="euler")
    assert len(seen) == 4
    for t, expected in zip(seen, [0.0, 0.25, 0.5, 0.75], strict=True):
        assert t.shape == (3,)
        torch.testing.assert_close(t, torch.full((3,), expected))


def test_heun_uses_two_evaluations_per_step_and_progress_is_called() -> None:
    calls = []
    steps_done: list[int] = []
    solve_ode(
        lambda x, t: calls.append(1) or x,
        torch.ones(1, 2),
        num_steps=3,
        solver="heun",
        progress=steps_done.append,
    )
    assert len(calls) == 6
    assert steps_done == [0, 1, 2]


@pytest.mark.parametrize("steps", [0, -3])
def test_invalid_num_steps_raises(steps: int) -> None:
    with pytest.raises(ValueError, match="num_steps"):
        solve_ode(lambda x, t: x, torch.zeros(1, 2), num_steps=steps)


def test_invalid_solver_raises() -> None:
    with pytest.raises(ValueError, match="unknown solver"):
        solve_ode(lambda x, t: x, torch.zeros(1, 2), num_steps=2, solver="rk4")  # type: ignore[arg-type]


class _FakeGuidedVelocity:
    """v(x, t, uncond): a different linear function of x and t per branch; records its inputs."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, unconditional: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), t.clone(), unconditional.clone()))
        u = unconditional.reshape(-1, *([1] * (x.dim() - 1)))
        tt = t.reshape(-1, *([1] * (x.dim() - 1)))
        return torch.where(u, self.uncond(x, tt), self.cond(x, tt))

    @staticmethod
    def cond(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 2.0 * x + t

    @staticmethod
    def uncond(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * x + 3.0


def test_cfg_scale_one_is_the_conditional_branch_in_one_pass() -> None:
    fake = _FakeGuidedVelocity()
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([0.1, 0.5, 0.9])
    v = classifier_free_guidance(fake, 1.0)(x, t)
    torch.testing.assert_close(v, fake.cond(x, t.reshape(-1, 1, 1, 1)))
    assert len(fake.calls) == 1
    assert not fake.calls[0][2].any() and fake.calls[0][2].dtype == torch.bool


@pytest.mark.parametrize("scale", [1.5, 3.0, 7.0])
def test_cfg_combines_branches(scale: float) -> None:
    fake = _FakeGuidedVelocity()
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([0.1, 0.5, 0.9])
    v = classifier_free_guidance(fake, scale)(x, t)
    tt = t.reshape(-1, 1, 1, 1)
    v_c, v_u = fake.cond(x, tt), fake.uncond(x, tt)
    torch.testing.assert_close(v, v_u + scale * (v_c - v_u))
    assert v.shape == x.shape


def test_cfg_branches_see_the_same_x_and_t() -> None:
    fake = _FakeGuidedVelocity()
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([0.1, 0.5, 0.9])
    classifier_free_guidance(fake, 4.0)(x, t)
    assert len(fake.calls) == 1
    x_in, t_in, u_in = fake.calls[0]
    x_c, x_u = x_in.chunk(2)
    assert torch.equal(x_c, x) and torch.equal(x_u, x)
    assert torch.equal(t_in, torch.cat([t, t]))
    assert u_in.tolist() == [False] * 3 + [True] * 3


def test_guided_sampling_runs_through_the_solver() -> None:
    fake = _FakeGuidedVelocity()
    x0 = torch.randn(2, 3)
    x = solve_ode(classifier_free_guidance(fake, 2.0), x0, num_steps=4)
    assert x.shape == x0.shape and torch.isfinite(x).all()
    assert len(fake.calls) == 4
