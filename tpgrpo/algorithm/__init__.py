"""The pure math of TP-GRPO (SPEC.md §2–§6): samplers, annotation, advantages, loss. No I/O."""

from __future__ import annotations

from tpgrpo.algorithm.advantages import (
    STD_SCOPES,
    advantages,
    aggregate_advantages,
    best_of_n_mask,
    zero_advantage_mask,
    zero_std_groups,
)
from tpgrpo.algorithm.annotation import (
    MODES,
    Annotation,
    AnnotationConfig,
    annotate,
    balance_turning_points,
    detect_turning_points,
)
from tpgrpo.algorithm.grid import (
    STEP_STD_FLOOR,
    Window,
    flow_match_sigmas,
    grid_step_stds,
    resolve_window,
    timesteps_of,
    window_problems,
)
from tpgrpo.algorithm.loss import LossOut, grpo_loss
from tpgrpo.algorithm.samplers import (
    SAMPLERS,
    StepOut,
    kl_to_reference,
    ode_step,
    reference_cps_log_prob,
    sampler_step,
    step_std,
    transition_log_prob,
)
from tpgrpo.algorithm.subsets import num_trained_steps, trained_step_mask

__all__ = [
    "MODES",
    "SAMPLERS",
    "STD_SCOPES",
    "STEP_STD_FLOOR",
    "Annotation",
    "AnnotationConfig",
    "LossOut",
    "StepOut",
    "Window",
    "advantages",
    "aggregate_advantages",
    "annotate",
    "balance_turning_points",
    "best_of_n_mask",
    "detect_turning_points",
    "flow_match_sigmas",
    "grid_step_stds",
    "grpo_loss",
    "kl_to_reference",
    "num_trained_steps",
    "ode_step",
    "reference_cps_log_prob",
    "resolve_window",
    "sampler_step",
    "step_std",
    "timesteps_of",
    "trained_step_mask",
    "transition_log_prob",
    "window_problems",
    "zero_advantage_mask",
    "zero_std_groups",
]
