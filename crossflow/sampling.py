"""ODE solvers for the flow from t = 0 (text latent) to t = 1 (image latent), over any velocity callable.

Nothing here knows about models: a solver takes ``velocity_fn(x, t) -> v`` with x (B, ...) and t (B,).
Every solve reports its number of function evaluations (NFE: calls of ``velocity_fn``), the cost axis of a
quality-vs-NFE study. With classifier-free guidance one evaluation is one batched forward pass over 2B.

=========  =====  =================  ==========================================================
solver     order  NFE per step       notes
=========  =====  =================  ==========================================================
euler      1      1                  the paper's sampler (50 steps)
midpoint   2      2                  explicit midpoint (RK2); never evaluates at t = 1
heun       2      2                  trapezoidal predictor-corrector; evaluates at t = 1
dopri5     5(4)   ~6 per attempt     adaptive (torchdiffeq, the ``ode`` extra); ``rtol``/``atol``
=========  =====  =================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from crossflow.errors import CrossFlowError

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Solver = Literal["euler", "midpoint", "heun", "dopri5"]
SOLVERS: tuple[str, ...] = get_args(Solver)
"""Every solver name, in the order of :data:`Solver` (the one list: CLIs take their choices from it)."""
NFE_PER_STEP: dict[str, int] = {"euler": 1, "midpoint": 2, "heun": 2}
"""Function evaluations per step of the fixed-step solvers (dopri5 adapts its steps: see :func:`integrate`)."""
DEFAULT_RTOL = 1e-3
"""dopri5's default relative tolerance. With atol, bounds each step's local error estimate (RMS over the whole
batch) by atol + rtol·|x|; 1e-3 on a roughly unit-scale latent is well below an 8-bit pixel step (2/255)."""
DEFAULT_ATOL = 1e-3
"""dopri5's default absolute tolerance (see :data:`DEFAULT_RTOL`); tighten both (e.g. 1e-6) for reference solutions."""
ODE_INSTALL_HINT = "pip install 'crossflow[ode]' (or pip install torchdiffeq)"


@dataclass
class SolveResult:
    """The outcome of :func:`integrate`."""

    x: torch.Tensor
    """The state at t = 1."""
    nfe: int
    """Calls of ``velocity_fn`` actually made (counted, not predicted)."""
    num_steps: int
    """Steps taken: the grid's steps for fixed-step solvers, accepted steps for dopri5."""
    trajectory: list[torch.Tensor] | None = None
    """With ``return_trajectory``: the states at every time of ``time_grid(num_steps)``, x0 first."""


def time_grid(
    num_steps: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """num_steps + 1 uniformly spaced times from 0 to 1."""
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    return torch.linspace(0.0, 1.0, num_steps + 1, device=device, dtype=dtype)


def check_solver(solver: str) -> None:
    """Raise ValueError naming the known solvers if ``solver`` is not one of them."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")


class _Counted:
    """velocity_fn that counts its calls: NFE is measured rather than derived from a formula, so it stays honest
    for adaptive steps, rejected steps and solver start-up evaluations alike."""

    def __init__(self, velocity_fn: VelocityFn) -> None:
        self.velocity_fn = velocity_fn
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.velocity_fn(x, t)


def _t(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return value.expand(x.shape[0]).to(x.device)


def _time_dtype(x: torch.Tensor) -> torch.dtype:
    # Times at least in float32 (a bf16 grid cannot even hold 1/50 exactly), float64 for float64 states.
    return torch.promote_types(torch.float32, x.dtype) if x.is_floating_point() else torch.float32


def integrate(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    num_steps: int = 50,
    solver: Solver = "euler",
    return_trajectory: bool = False,
    progress: Callable[[int], None] | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> SolveResult:
    """Integrate dx/dt = v(x, t) from t = 0 to 1 and report the NFE used.

    Fixed-step solvers take ``num_steps`` uniform steps of h = 1/num_steps:

    - ``euler`` (order 1, 1 NFE/step): x ← x + h·v(x, t).
    - ``midpoint`` (order 2, 2 NFE/step): x ← x + h·v(x + h/2·v(x, t), t + h/2).
    - ``heun`` (order 2, 2 NFE/step, trapezoidal): x̃ = x + h·v(x, t), x ← x + h/2·(v(x, t) + v(x̃, t + h)).

    ``dopri5`` (Dormand–Prince 5(4), torchdiffeq): adaptive steps with local error ≤ atol + rtol·|x| (RMS over
    all elements of the batch, so one step size serves the whole batch). 7 stages with first-same-as-last:
    6 NFE per attempted step (rejected ones too) plus 2 to start (the initial slope and the first-step guess).
    ``num_steps`` does not steer it: it only sets the grid at which the trajectory is reported (interpolated,
    so it costs no evaluations). ``rtol``/``atol`` are ignored by the fixed-step solvers.

    ``progress`` is called with the step index after each (accepted) step, for progress bars.
    """
    check_solver(solver)
    if num_steps <= 0:  # checked for dopri5 too, so an argument is valid or not whatever the solver
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if solver == "dopri5":
        return _integrate_dopri5(velocity_fn, x0, num_steps, return_trajectory, progress, rtol, atol)
    counted = _Counted(velocity_fn)
    grid = time_grid(num_steps, device=x0.device, dtype=_time_dtype(x0))
    x = x0
    trajectory = [x0]
    for i in range(num_steps):
        t, t_next = grid[i], grid[i + 1]
        h = t_next - t
        v = counted(x, _t(t, x))
        if solver == "euler":
            x = x + h * v
        elif solver == "midpoint":
            x_mid = x + 0.5 * h * v
            x = x + h * counted(x_mid, _t(t + 0.5 * h, x))
        else:  # heun
            x_pred = x + h * v
            x = x + 0.5 * h * (v + counted(x_pred, _t(t_next, x)))
        if return_trajectory:
            trajectory.append(x)
        if progress is not None:
            progress(i)
    return SolveResult(x, counted.calls, num_steps, trajectory if return_trajectory else None)


def _import_odeint() -> Callable[..., Any]:
    try:
        from torchdiffeq import odeint
    except ImportError as err:
        raise CrossFlowError(f"solver 'dopri5' needs torchdiffeq: {ODE_INSTALL_HINT}") from err
    return odeint


class _OdeintFunc:
    """Adapts v(x, t (B,)) to torchdiffeq's f(t (scalar), y) and counts accepted / rejected steps through the
    callbacks torchdiffeq looks up on the function object."""

    def __init__(self, velocity_fn: _Counted, progress: Callable[[int], None] | None) -> None:
        self.velocity_fn = velocity_fn
        self.progress = progress
        self.accepted = 0

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.velocity_fn(x, _t(t.to(_time_dtype(x)), x))

    def callback_accept_step(self, t0: torch.Tensor, x0: torch.Tensor, dt: torch.Tensor) -> None:
        if self.progress is not None:
            self.progress(self.accepted)
        self.accepted += 1


def _integrate_dopri5(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    num_steps: int,
    return_trajectory: bool,
    progress: Callable[[int], None] | None,
    rtol: float,
    atol: float,
) -> SolveResult:
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    odeint = _import_odeint()
    # Ask only for the end point unless a trajectory is wanted: dense output makes the grid free either way.
    grid = time_grid(num_steps if return_trajectory else 1, device=x0.device, dtype=_time_dtype(x0))
    counted = _Counted(velocity_fn)
    func = _OdeintFunc(counted, progress)
    states = odeint(func, x0, grid, rtol=rtol, atol=atol, method="dopri5")
    trajectory = [x0, *states[1:].unbind(0)] if return_trajectory else None
    return SolveResult(states[-1], counted.calls, func.accepted, trajectory)


def solve_ode(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    num_steps: int = 50,
    solver: Solver = "euler",
    return_trajectory: bool = False,
    progress: Callable[[int], None] | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """:func:`integrate`, returning only the final x (and with ``return_trajectory`` the list of states at
    every grid time). Use :func:`integrate` for the NFE."""
    result = integrate(velocity_fn, x0, num_steps, solver, return_trajectory, progress, rtol, atol)
    return (result.x, result.trajectory) if return_trajectory else result.x  # type: ignore[return-value]


GuidedVelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def classifier_free_guidance(velocity_fn: GuidedVelocityFn, guidance_scale: float) -> VelocityFn:
    """Wrap v(x, t, unconditional) into v_cfg(x, t) = v_u + w·(v_c − v_u), both evaluated at the same x_t.

    In CrossFlow the unconditional branch is selected by the indicator token, not by an empty prompt
    (paper Sec. 3.3). w = 1 is plain conditional sampling (one forward pass).
    """
    if guidance_scale == 1.0:
        return lambda x, t: velocity_fn(x, t, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        indicator = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        v_cond, v_uncond = velocity_fn(torch.cat([x, x]), torch.cat([t, t]), indicator).chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    return guided
