"""ODE solvers and the classifier-free-guidance wrapper of crossflow.sampling."""

from __future__ import annotations

import builtins
import math
from typing import Any

import pytest
import torch

from crossflow.errors import CrossFlowError
from crossflow.sampling import (
    NFE_PER_STEP,
    SOLVERS,
    classifier_free_guidance,
    integrate,
    solve_ode,
    time_grid,
)

FIXED_STEP = ["euler", "midpoint", "heun"]
NEEDS_TORCHDIFFEQ = "dopri5 needs the optional 'ode' extra (torchdiffeq)"


def test_time_grid() -> None:
    grid = time_grid(4)
    torch.testing.assert_close(grid, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    with pytest.raises(ValueError):
        time_grid(0)


@pytest.mark.parametrize("solver", FIXED_STEP)
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


@pytest.mark.parametrize("solver", FIXED_STEP)
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


def test_invalid_solver_raises_listing_the_solvers() -> None:
    with pytest.raises(ValueError, match="unknown solver 'rk4'; expected one of euler, midpoint, heun, dopri5"):
        solve_ode(lambda x, t: x, torch.zeros(1, 2), num_steps=2, solver="rk4")  # type: ignore[arg-type]


# --- The linear test ODE dx/dt = a·x + b·t, x(0) = x0, with its closed form
# x(t) = (x0 + b/a²)·e^{at} − (b/a)·t − b/a² (substitute: x' = a(x0 + b/a²)e^{at} − b/a = a·x + b·t).
A, B = 1.3, -0.7


def _linear_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return A * x + B * t.reshape(-1, *([1] * (x.dim() - 1)))


def _linear_exact(x0: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    return (x0 + B / A**2) * math.exp(A * t) - B / A * t - B / A**2


def _x0() -> torch.Tensor:
    return torch.linspace(-1.0, 2.0, 6, dtype=torch.float64).reshape(2, 3)


def _affine_error(solver: str, steps: int) -> float:
    x0 = _x0()
    return (integrate(_linear_field, x0, steps, solver).x - _linear_exact(x0)).abs().max().item()  # type: ignore[arg-type]


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("midpoint", 2), ("heun", 2)])
def test_fixed_step_solvers_converge_at_their_order(solver: str, order: int) -> None:
    # Global error ~ C·h^order: halving h divides it by 2^order (≈ 2 for Euler, ≈ 4 for the RK2 pair).
    e16, e32 = _affine_error(solver, 16), _affine_error(solver, 32)
    assert e16 / e32 == pytest.approx(2.0**order, rel=0.1)
    # ... and to the accuracy that implies at 32 steps: error ≤ C·h^order, C = 10 covering |x0| ≤ 2, e^a ≈ 3.7.
    assert e32 < 10.0 * (1 / 32) ** order


@pytest.mark.parametrize("solver", FIXED_STEP)
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_fixed_step_nfe_is_exact(solver: str, steps: int) -> None:
    calls = []
    result = integrate(lambda x, t: calls.append(1) or -x, torch.ones(2, 3), steps, solver)  # type: ignore[arg-type]
    assert result.nfe == len(calls) == NFE_PER_STEP[solver] * steps
    assert result.num_steps == steps and result.trajectory is None


def test_midpoint_evaluates_at_half_steps_and_heun_at_the_step_ends() -> None:
    def times_seen(solver: str) -> list[float]:
        seen: list[float] = []
        integrate(lambda x, t: seen.append(t[0].item()) or torch.zeros_like(x), torch.zeros(2, 1), 2, solver)  # type: ignore[arg-type]
        return seen

    assert times_seen("midpoint") == [0.0, 0.25, 0.5, 0.75]  # never at t = 1
    assert times_seen("heun") == [0.0, 0.5, 0.5, 1.0]


def test_midpoint_and_heun_differ_on_a_nonlinear_field() -> None:
    # On a linear field every 2-stage order-2 Runge-Kutta method gives the same update; x' = −x² separates them.
    x0 = torch.full((1, 1), 1.0, dtype=torch.float64)
    mid = integrate(lambda x, t: -(x**2), x0, 8, "midpoint").x
    heun = integrate(lambda x, t: -(x**2), x0, 8, "heun").x
    assert not torch.allclose(mid, heun, rtol=0, atol=1e-6)
    for x in (mid, heun):  # exact x(1) = 1/(1 + t) = 0.5
        torch.testing.assert_close(x, torch.full_like(x, 0.5), rtol=0, atol=5e-3)


def test_integrate_and_solve_ode_agree() -> None:
    x0 = torch.randn(2, 3)
    result = integrate(_linear_field, x0, 5, "heun", return_trajectory=True)
    x, trajectory = solve_ode(_linear_field, x0, 5, "heun", return_trajectory=True)
    assert torch.equal(result.x, x)
    assert result.trajectory is not None and all(map(torch.equal, result.trajectory, trajectory))


@pytest.mark.parametrize("tol", [1e-4, 1e-6, 1e-8])
def test_dopri5_meets_its_tolerance_and_reports_nfe(tol: float) -> None:
    pytest.importorskip("torchdiffeq", reason=NEEDS_TORCHDIFFEQ)
    x0 = _x0()
    calls = []

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return _linear_field(x, t)

    result = integrate(counted, x0, solver="dopri5", rtol=tol, atol=tol)
    exact = _linear_exact(x0)
    # Local error per step ≤ atol + rtol·|x|; over a handful of steps the global error stays within ~10×.
    assert (result.x - exact).abs().max().item() < 10 * (tol + tol * exact.abs().max().item())
    assert result.nfe == len(calls) > 0
    # Dormand–Prince is first-same-as-last: 6 new evaluations per attempted step, 2 to start.
    assert result.nfe >= 2 + 6 * result.num_steps


def test_dopri5_spends_more_evaluations_for_tighter_tolerances() -> None:
    pytest.importorskip("torchdiffeq", reason=NEEDS_TORCHDIFFEQ)
    x0 = _x0()
    loose, tight = (integrate(_linear_field, x0, solver="dopri5", rtol=tol, atol=tol) for tol in (1e-3, 1e-8))
    assert tight.nfe > loose.nfe
    assert (tight.x - _linear_exact(x0)).abs().max() < (loose.x - _linear_exact(x0)).abs().max()


def test_dopri5_trajectory_is_on_the_requested_grid() -> None:
    pytest.importorskip("torchdiffeq", reason=NEEDS_TORCHDIFFEQ)
    x0 = _x0()
    steps: list[int] = []
    end = integrate(_linear_field, x0, num_steps=4, solver="dopri5", rtol=1e-8, atol=1e-8)
    result = integrate(
        _linear_field, x0, num_steps=4, solver="dopri5", rtol=1e-8, atol=1e-8, return_trajectory=True,
        progress=steps.append,
    )
    assert result.trajectory is not None and len(result.trajectory) == 5
    assert result.trajectory[0] is x0 and torch.equal(result.trajectory[-1], result.x)
    for t, state in zip(time_grid(4).tolist(), result.trajectory, strict=True):
        torch.testing.assert_close(state, _linear_exact(x0, t), rtol=0, atol=1e-6)
    # The grid is read off the dense output: it costs no evaluations and does not move the steps.
    assert result.nfe == end.nfe
    assert steps == list(range(result.num_steps))
    x, trajectory = solve_ode(_linear_field, x0, num_steps=4, solver="dopri5", return_trajectory=True)
    assert len(trajectory) == 5 and x.shape == x0.shape


def test_dopri5_keeps_float32_and_passes_per_sample_times() -> None:
    pytest.importorskip("torchdiffeq", reason=NEEDS_TORCHDIFFEQ)
    seen: list[torch.Tensor] = []

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return -x

    x = integrate(velocity, torch.ones(3, 2), solver="dopri5").x
    assert x.dtype == torch.float32
    assert all(t.shape == (3,) and t.dtype == torch.float32 for t in seen)
    torch.testing.assert_close(x, torch.full((3, 2), math.exp(-1.0)), rtol=1e-2, atol=0)


@pytest.mark.parametrize(("rtol", "atol"), [(0.0, 1e-3), (1e-3, -1.0)])
def test_dopri5_rejects_non_positive_tolerances(rtol: float, atol: float) -> None:
    with pytest.raises(ValueError, match="rtol and atol must be positive"):
        integrate(_linear_field, torch.ones(1, 2), solver="dopri5", rtol=rtol, atol=atol)


def test_dopri5_without_torchdiffeq_is_a_one_line_error_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_torchdiffeq(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "torchdiffeq":
            raise ImportError("No module named 'torchdiffeq'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchdiffeq)
    with pytest.raises(CrossFlowError, match=r"torchdiffeq: pip install 'crossflow\[ode\]'") as err:
        integrate(_linear_field, torch.ones(1, 2), solver="dopri5")
    assert "\n" not in str(err.value)


def test_every_solver_is_known_and_fixed_step_ones_have_an_nfe_count() -> None:
    assert SOLVERS == ("euler", "midpoint", "heun", "dopri5")
    assert set(NFE_PER_STEP) == set(SOLVERS) - {"dopri5"}


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
