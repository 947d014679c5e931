import jax
import numpy as np
import pytest

from metaopt.gps import BadmmDuals, estimated_cost, float64
from metaopt.training.gps_loop import fit_model, model_state_dim, run_c_step, to_model


@pytest.mark.parametrize("privileged_gradient", [False, True])
def test_c_step_improves_expected_cost_on_fitted_model(tiny_rollout, privileged_gradient):
    """Trajectory optimisation alone: the policy linearisation is ψ itself and λ = 0, so the
    C-step minimises E[cost] − entropy + (η + ν)·KL(ψ_new ‖ ψ) under the KL budget."""
    config, task, state, tracked, data = tiny_rollout
    config = config.__class__(**{**config.__dict__, "privileged_gradient": privileged_gradient})
    dim = model_state_dim(config)
    with float64():
        dynamics, cost, _ = jax.device_get(fit_model(
            data, prior_strength=config.dynamics_prior_strength, ridge=config.dynamics_ridge,
            privileged_gradient=privileged_gradient))
    groups = len(state.eta)
    duals = BadmmDuals(np.zeros_like(state.duals.multiplier), state.duals.penalty)
    previous = to_model(state.controller, dim)
    result = run_c_step(config, cost, dynamics, state.controller, np.ones(groups), state.eta,
                        previous, duals)
    assert result.controller.gain.shape == state.controller.gain.shape
    if not privileged_gradient:   # the controllers never act on g*
        np.testing.assert_array_equal(result.controller.gain[..., -1], 0.0)
    with float64():
        before = np.asarray(estimated_cost(cost, previous, dynamics))
        after = np.asarray(estimated_cost(cost, to_model(result.controller, dim), dynamics))
    assert not np.any(result.failed)
    assert np.all(result.satisfied), (result.kl.sum(-1), result.kl_budget)
    assert np.all(np.isfinite(after))
    # strictly better per group, by a margin well above float noise
    assert np.all(after < before - 1e-3 * np.abs(before)), (before, after)
