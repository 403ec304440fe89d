"""Evaluating plans of one network: accuracy, loss and KL to the main network, BN-recalibrated per plan."""
from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from loafing.bn import preserved_bn_state, recalibrate_bn
from loafing.data import images_only
from loafing.errors import LoafingError
from loafing.models import StagedModel
from loafing.plans import Plan


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LoafingError(f"unknown device {name!r}; valid choices: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoafingError(f"device {name!r} requested but CUDA is not available; valid choices here: auto, cpu")
    return device


@torch.no_grad()
def predict(model: StagedModel, plan: Plan | None, loader: DataLoader,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (on the CPU) and labels of `plan` over a loader, in eval mode."""
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x.to(device, non_blocking=True), plan).float().cpu())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           main_log_probs: torch.Tensor | None = None) -> dict[str, float]:
    """top-1 / top-5 (percent), mean cross-entropy and, given the main network's, mean KL(p_main || p)."""
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    correct = topk == labels.unsqueeze(1)
    out = {
        "top1": 100.0 * correct[:, 0].sum().item() / len(labels),
        "top5": 100.0 * correct.any(dim=1).sum().item() / len(labels),
        "loss": F.cross_entropy(logits, labels).item(),
        "n_examples": int(labels.numel()),
    }
    if main_log_probs is not None:
        out["kl"] = F.kl_div(F.log_softmax(logits, 1), main_log_probs, log_target=True,
                             reduction="batchmean").item()
    return out


def plan_logits_one_by_one(model: StagedModel, plan: Plan, test_loader: DataLoader,
                           calib_loader: DataLoader | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of one plan, BN-recalibrated on `calib_loader` if given; model BN state restored."""
    with preserved_bn_state(model):
        if calib_loader is not None:
            recalibrate_bn(model, plan, images_only(calib_loader), device)
        return predict(model, plan, test_loader, device)


def evaluate_plans_one_by_one(model: StagedModel, plans: Sequence[Plan], test_loader: DataLoader,
                              calib_loader: DataLoader | None, device: torch.device,
                              progress: bool = True) -> pd.DataFrame:
    """Reference evaluator: for each plan, recalibrate BN on `calib_loader` (if given), then evaluate.

    The model's own BN statistics are restored afterwards. KL is against the main network evaluated
    the same way (recalibrated too when the plans are).
    """
    main = model.layout.main_plan
    main_logits, labels = plan_logits_one_by_one(model, main, test_loader, calib_loader, device)
    main_log_probs = F.log_softmax(main_logits, 1)
    rows = []
    for plan in tqdm(plans, desc="plans", unit="plan", disable=not progress, leave=False):
        logits = main_logits if plan == main else plan_logits_one_by_one(
            model, plan, test_loader, calib_loader, device)[0]
        rows.append(plan_row(plan, main, classification_metrics(logits, labels, main_log_probs)))
    return pd.DataFrame(rows)


def plan_row(plan: Plan, main: Plan, metrics: dict[str, float]) -> dict[str, object]:
    """One tidy row: the plan's identifiers followed by its metrics."""
    return {"plan": str(plan), "depths": plan.depths_str, "n_blocks": plan.n_blocks,
            "is_main": plan == main, **metrics}


def check_plans(model: StagedModel, plans: Iterable[Plan]) -> list[Plan]:
    """Validate every plan against the model before any work starts."""
    plans = list(plans)
    for plan in plans:
        model.check_plan(plan)
    return plans
