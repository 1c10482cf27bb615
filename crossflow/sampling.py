"""ODE solvers for the flow from t = 0 (text latent) to t = 1 (image latent), over any velocity callable.

Nothing here knows about models: a solver takes ``velocity_fn(x, t) -> v`` with x (B, ...) and t (B,).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Solver = Literal["euler", "heun"]


def time_grid(num_steps: int, device: torch.device | str | None = None) -> torch.Tensor:
    """num_steps + 1 uniformly spaced times from 0 to 1."""
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    return torch.linspace(0.0, 1.0, num_steps + 1, device=device)


def _t(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return value.expand(x.shape[0]).to(x.device)


def solve_ode(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    num_steps: int = 50,
    solver: Solver = "euler",
    return_trajectory: bool = False,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Integrate dx/dt = v(x, t) from t = 0 to 1.

    Euler: x ← x + h·v(x, t). Heun (2nd order, trapezoidal): predictor x̃ = x + h·v(x, t), then
    x ← x + h/2·(v(x, t) + v(x̃, t + h)); twice the function evaluations per step.
    Returns the final x, and with ``return_trajectory`` also the list of states at every grid time.
    ``progress`` is called with the step index after each step (for progress bars).
    """
    grid = time_grid(num_steps, device=x0.device)
    x = x0
    trajectory = [x0]
    for i in range(num_steps):
        t, t_next = grid[i], grid[i + 1]
        h = t_next - t
        v = velocity_fn(x, _t(t, x))
        if solver == "euler":
            x = x + h * v
        elif solver == "heun":
            x_pred = x + h * v
            x = x + 0.5 * h * (v + velocity_fn(x_pred, _t(t_next, x)))
        else:
            raise ValueError(f"unknown solver {solver!r}; expected 'euler' or 'heun'")
        if return_trajectory:
            trajectory.append(x)
        if progress is not None:
            progress(i)
    return (x, trajectory) if return_trajectory else x


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
