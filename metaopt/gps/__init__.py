"""Guided policy search: dynamics fitting, cost model and KL-constrained LQG, batched over groups.

The solvers compute in float64 when called (and traced) inside ``metaopt.gps.float64()``; the rest
of the library stays float32.
"""

from metaopt.gps.cost import (
    add_costs,
    augmented_cost,
    expected_cost,
    horizon_weights,
    negative_log_likelihood_cost,
    tied_coordinate_cost,
)
from metaopt.gps.dynamics import (
    DEFAULT_PRIOR_STRENGTH,
    NormalInverseWishartPrior,
    condition_gaussian,
    fit_conditional_mean,
    fit_dynamics,
    pooled_time_prior,
    posterior_mean_covariance,
)
from metaopt.gps.lqg import (
    BackwardPassResult,
    backward_pass,
    backward_recursion,
    controller_kl,
    forward_marginals,
    forward_recursion,
    trajectory_kl,
)
from metaopt.gps.moments import (
    accumulate,
    add_moments,
    mean_covariance,
    moments_from_points,
    select_moments,
    sum_moments,
    transition_moments,
    transition_points,
    zeros_moments,
)
from metaopt.gps.trust_region import (
    EtaSearchResult,
    estimated_cost,
    eta_search,
    kl_budget,
    solve_with_pd_fallback,
    update_step_multiplier,
)
from metaopt.gps.types import (
    BadmmDuals,
    LinearGaussianController,
    LinearGaussianDynamics,
    QuadraticCost,
    RegressionMoments,
    StateActionMarginals,
    float64,
    solve_dtype,
    to_solve_dtype,
)

__all__ = [
    "DEFAULT_PRIOR_STRENGTH",
    "BackwardPassResult",
    "BadmmDuals",
    "EtaSearchResult",
    "LinearGaussianController",
    "LinearGaussianDynamics",
    "NormalInverseWishartPrior",
    "QuadraticCost",
    "RegressionMoments",
    "StateActionMarginals",
    "accumulate",
    "add_costs",
    "add_moments",
    "augmented_cost",
    "backward_pass",
    "backward_recursion",
    "condition_gaussian",
    "controller_kl",
    "estimated_cost",
    "eta_search",
    "expected_cost",
    "fit_conditional_mean",
    "fit_dynamics",
    "float64",
    "forward_marginals",
    "forward_recursion",
    "horizon_weights",
    "kl_budget",
    "mean_covariance",
    "moments_from_points",
    "negative_log_likelihood_cost",
    "pooled_time_prior",
    "posterior_mean_covariance",
    "solve_dtype",
    "solve_with_pd_fallback",
    "select_moments",
    "sum_moments",
    "tied_coordinate_cost",
    "to_solve_dtype",
    "trajectory_kl",
    "transition_moments",
    "transition_points",
    "update_step_multiplier",
    "zeros_moments",
]
