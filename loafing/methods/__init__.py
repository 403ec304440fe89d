"""Training methods: a registry (`registry.py`) and one file per family of methods, each method one
`register_method(TrainingMethod(...))`; importing this package registers the built-in ones, CT and ST first
(`ct_st.py`), then the appendix's baselines (`baselines.py`), then ST++ (`st_plus.py`).
"""
from loafing.methods.registry import (METHODS, ROLES, StepResult, TrainingMethod, TrainingStep, check_method,
                                      get_method, register_method, require_residuals, trained_plan,
                                      unregister_method)
from loafing.methods.ct_st import (SAMPLING_RULES, ST_LOSSES, ct_loss, forward_with_subnetwork, kl_to_teacher,
                                   st_loss_shared, st_loss_simple)
from loafing.methods import baselines  # noqa: F401  (registers the appendix's baselines)
from loafing.methods import st_plus  # noqa: F401  (registers ST++, ST with its follow-up's ingredients)

__all__ = ["METHODS", "ROLES", "SAMPLING_RULES", "ST_LOSSES", "StepResult", "TrainingMethod", "TrainingStep",
           "check_method", "ct_loss", "forward_with_subnetwork", "get_method", "kl_to_teacher", "register_method",
           "require_residuals", "st_loss_shared", "st_loss_simple", "trained_plan", "unregister_method"]
