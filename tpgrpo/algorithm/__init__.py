"""The pure math of TP-GRPO (SPEC.md §2–§6): samplers, annotation, advantages, loss. No I/O."""

from __future__ import annotations

from tpgrpo.algorithm.advantages import STD_SCOPES, advantages, zero_advantage_mask
from tpgrpo.algorithm.annotation import (
    MODES,
    Annotation,
    AnnotationConfig,
    annotate,
    balance_turning_points,
    detect_turning_points,
)
from tpgrpo.algorithm.grid import Window, default_window, flow_match_sigmas, timesteps_of
from tpgrpo.algorithm.loss import LossOut, grpo_loss
from tpgrpo.algorithm.samplers import (
    SAMPLERS,
    StepOut,
    kl_to_reference,
    ode_step,
    reference_cps_log_prob,
    sampler_step,
    transition_log_prob,
)

__all__ = [
    "MODES",
    "SAMPLERS",
    "STD_SCOPES",
    "Annotation",
    "AnnotationConfig",
    "LossOut",
    "StepOut",
    "Window",
    "advantages",
    "annotate",
    "balance_turning_points",
    "default_window",
    "detect_turning_points",
    "flow_match_sigmas",
    "grpo_loss",
    "kl_to_reference",
    "ode_step",
    "reference_cps_log_prob",
    "sampler_step",
    "timesteps_of",
    "transition_log_prob",
    "zero_advantage_mask",
]
