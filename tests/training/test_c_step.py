import jax
import numpy as np

from metaopt.gps import BadmmDuals, estimated_cost, float64
from metaopt.training.gps_loop import fit_model, run_c_step


def test_c_step_improves_expected_cost_on_fitted_model(tiny_rollout):
    """Trajectory optimisation alone: the policy linearisation is ψ itself and λ = 0, so the
    C-step minimises E[cost] − entropy + (η + ν)·KL(ψ_new ‖ ψ) under the KL budget."""
    config, task, state, tracked, data = tiny_rollout
    with float64():
        dynamics, cost = jax.device_get(fit_model(
            data, prior_strength=config.dynamics_prior_strength, ridge=config.dynamics_ridge))
    groups = len(state.eta)
    duals = BadmmDuals(np.zeros_like(state.duals.multiplier), state.duals.penalty)
    result = run_c_step(config, cost, dynamics, state.controller, np.ones(groups), state.eta,
                        state.controller, duals)
    with float64():
        before = np.asarray(estimated_cost(cost, state.controller, dynamics))
        after = np.asarray(estimated_cost(cost, result.controller, dynamics))
    assert not np.any(result.failed)
    assert np.all(result.satisfied), (result.kl.sum(-1), result.kl_budget)
    assert np.all(np.isfinite(after))
    # strictly better per group, by a margin well above float noise
    assert np.all(after < before - 1e-3 * np.abs(before)), (before, after)
