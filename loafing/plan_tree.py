"""Prefix-sharing evaluation: plans as a tree of (block after prefix) nodes, each computed once.

After BN recalibration a block's statistics depend only on its prefix, so plans that share a
prefix share its activations. Phase 1 walks the tree over the calibration batches (train mode,
whole-set BN statistics kept per node); phase 2 streams the evaluation data in chunks and walks the
tree depth-first with each node's statistics, so memory holds one root-to-leaf path of activations.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from loafing.bn import batches_of_two_or_more, batchnorms_with_statistics, has_batchnorm, whole_set_statistics
from loafing.distributed import World, gather_objects
from loafing.evaluate import plan_row
from loafing.models import StagedModel
from loafing.plans import Plan

BNState = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class Node:
    """One block after one specific prefix; `plans` lists the plans that end here."""

    block: int  # the plan step (negative: the block's branch alone); 0 for the root (the stem)
    children: dict[int, "Node"] = field(default_factory=dict)
    plans: list[int] = field(default_factory=list)
    bn_state: BNState | None = None  # statistics of the block's BNs (the stem's for the root)
    head_state: BNState | None = None  # statistics of the head's BNs, when plans end here


def build_tree(plans: Sequence[Plan], main: Plan) -> Node:
    """The prefix tree of `plans`; the main plan is inserted first so its path is walked first."""
    root = Node(0)
    order = sorted(range(len(plans)), key=lambda i: plans[i] != main)
    for i in order:
        node = root
        for b in plans[i].sequence():
            node = node.children.setdefault(b, Node(b))
        node.plans.append(i)
    return root


def iter_nodes(root: Node) -> Iterator[Node]:
    """Every node, depth-first."""
    yield root
    for child in root.children.values():
        yield from iter_nodes(child)


def count_block_nodes(plans: Sequence[Plan]) -> int:
    """Unique block evaluations per input: the number of (block after prefix) nodes."""
    return len({plan.sequence()[:k] for plan in plans for k in range(1, plan.n_blocks + 1)})


def _fresh_state(bns: list[nn.modules.batchnorm._BatchNorm]) -> BNState:
    return [(torch.zeros_like(bn.running_mean), torch.ones_like(bn.running_var),
             torch.zeros_like(bn.num_batches_tracked)) for bn in bns]


def _install(bns: list[nn.modules.batchnorm._BatchNorm], state: BNState) -> None:
    # Swapping tensor objects (no copies): the BN then reads and, in train mode, updates the node's own.
    for bn, (mean, var, count) in zip(bns, state):
        bn.running_mean, bn.running_var, bn.num_batches_tracked = mean, var, count


@dataclass
class _Metrics:
    correct1: torch.Tensor
    correct5: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


class PlanTreeEvaluator:
    """Evaluate many plans of one model with each (block after prefix) computed once per input."""

    def __init__(self, model: StagedModel, plans: Sequence[Plan], device: torch.device,
                 reference: Plan | None = None) -> None:
        self.model, self.plans, self.device = model, list(plans), device
        self.main = reference or model.layout.main_plan  # the network KL is measured against
        self.all_plans = self.plans if self.main in self.plans else self.plans + [self.main]
        self.main_index = self.all_plans.index(self.main)
        self.root = build_tree(self.all_plans, self.main)
        self.stem_bns = [bn for m in model.stem_modules() for bn in batchnorms_with_statistics(m)]
        self.head_bns = [bn for m in model.head_modules() for bn in batchnorms_with_statistics(m)]
        self.block_bns = {b: batchnorms_with_statistics(model.block(b)) for b in model.layout.main_plan.sequence()}
        self.recalibrated = False

    def _bns(self, node: Node) -> list[nn.modules.batchnorm._BatchNorm]:
        return self.stem_bns if node.block == 0 else self.block_bns[abs(node.block)]

    @torch.no_grad()
    def calibrate(self, batches: Iterator[torch.Tensor], progress: tqdm | None = None) -> None:
        """Phase 1: per-node BN statistics of the whole calibration set (`whole_set_statistics`)."""
        for node in iter_nodes(self.root):
            node.bn_state = _fresh_state(self._bns(node))
            if node.plans:
                node.head_state = _fresh_state(self.head_bns)
        self.model.train()
        with whole_set_statistics(self.model):
            for x in batches_of_two_or_more(batches):
                self._walk(self.root, x.to(self.device, non_blocking=True), use_state=True, on_logits=None)
                if progress is not None:
                    progress.update(1)
        self.recalibrated = True

    @torch.no_grad()
    def _walk(self, node: Node, x: torch.Tensor, use_state: bool,
              on_logits: Callable[[list[int], torch.Tensor], None] | None) -> None:
        if use_state:
            _install(self._bns(node), node.bn_state)
        out = self.model.stem(x) if node.block == 0 else self.model.run_step(node.block, x)
        for child in node.children.values():
            self._walk(child, out, use_state, on_logits)
        # Heads run after the children (post-order): the main plan's leaf, walked first, comes first,
        # so its logits are known when any other plan's are scored against them.
        if node.plans:
            if use_state:
                _install(self.head_bns, node.head_state)
            logits = self.model.head(out)
            if on_logits is not None:
                on_logits(node.plans, logits)

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, predictions: bool = False,
                 progress: tqdm | None = None) -> tuple[pd.DataFrame, torch.Tensor | None]:
        """Phase 2: top-1, top-5, mean CE and mean KL(p_main || p_plan) of every plan over `loader`."""
        self.model.eval()
        n_plans = len(self.all_plans)
        totals = _Metrics(*(torch.zeros(n_plans, dtype=torch.float64) for _ in range(4)))
        preds: list[torch.Tensor] = []
        n_seen = 0
        for x, y in loader:
            y = y.to(self.device, non_blocking=True)
            main_log_probs: list[torch.Tensor] = []
            pending: list[tuple[list[int], torch.Tensor]] = []
            chunk_preds = torch.empty(n_plans, len(y), dtype=torch.long) if predictions else None

            def score(plan_ids: list[int], logits: torch.Tensor) -> None:
                logits = logits.float()
                log_probs = F.log_softmax(logits, 1)
                if self.main_index in plan_ids:
                    main_log_probs.append(log_probs)
                elif not main_log_probs:  # only when a plan extends a non-main reference
                    pending.append((plan_ids, logits))
                    return
                topk = logits.topk(min(5, logits.shape[1]), dim=1).indices
                hit = topk == y.unsqueeze(1)
                c1, c5 = hit[:, 0].sum().item(), hit.any(1).sum().item()
                ce = F.cross_entropy(logits, y, reduction="sum").item()
                kl = F.kl_div(log_probs, main_log_probs[0], log_target=True, reduction="sum").item()
                for i in plan_ids:
                    totals.correct1[i] += c1
                    totals.correct5[i] += c5
                    totals.ce[i] += ce
                    totals.kl[i] += kl
                    if chunk_preds is not None:
                        chunk_preds[i] = logits.argmax(1).cpu()
                if self.main_index in plan_ids:
                    while pending:
                        score(*pending.pop())

            self._walk(self.root, x.to(self.device, non_blocking=True), self.recalibrated, score)
            n_seen += len(y)
            if chunk_preds is not None:
                preds.append(chunk_preds)
            if progress is not None:
                progress.update(1)
        rows = []
        for j, plan in enumerate(self.plans):  # self.all_plans starts with self.plans
            rows.append(plan_row(plan, self.main, {
                "top1": 100.0 * totals.correct1[j].item() / n_seen,
                "top5": 100.0 * totals.correct5[j].item() / n_seen,
                "loss": totals.ce[j].item() / n_seen, "n_examples": n_seen,
                "kl": totals.kl[j].item() / n_seen}))
        all_preds = torch.cat(preds, dim=1)[: len(self.plans)] if predictions else None
        return pd.DataFrame(rows), all_preds

    @torch.no_grad()
    def logits(self, loader: DataLoader) -> torch.Tensor:
        """Logits of every plan for every example, [plans, N, classes]; memory grows with plans (tests, benchmarks)."""
        self.model.eval()
        chunks = []
        for x, _ in loader:
            out: list[torch.Tensor | None] = [None] * len(self.all_plans)

            def keep(plan_ids: list[int], logits: torch.Tensor) -> None:
                for i in plan_ids:
                    out[i] = logits.float().cpu()

            self._walk(self.root, x.to(self.device, non_blocking=True), self.recalibrated, keep)
            chunks.append(torch.stack(out[: len(self.plans)]))
        return torch.cat(chunks, dim=1)


@contextlib.contextmanager
def own_bn_tensors(model: nn.Module) -> Iterator[None]:
    """Give the model its own BN statistic tensors and train/eval mode back on exit."""
    saved = [(bn, bn.running_mean, bn.running_var, bn.num_batches_tracked)
             for bn in batchnorms_with_statistics(model)]
    was_training = model.training
    try:
        yield
    finally:
        for bn, mean, var, count in saved:
            _install([bn], [(mean, var, count)])
        model.train(was_training)


def evaluate_plans(model: StagedModel, plans: Sequence[Plan], test_loader: DataLoader,
                   calib_loader: DataLoader | None, device: torch.device, progress: bool = True,
                   predictions: bool = False, reference: Plan | None = None) -> tuple[pd.DataFrame, torch.Tensor | None]:
    """Evaluate `plans` (BN-recalibrated on `calib_loader` if given) sharing every common prefix.

    Returns one row per plan (plan, depths, n_blocks, is_main, top1, top5, loss, n_examples, kl)
    and, if asked, the predicted class of every plan for every evaluation example ([plans, N]).
    KL and `is_main` refer to `reference` (default: the main network).
    The model's own BN statistics and train/eval mode are left as they were.
    """
    if calib_loader is not None and not has_batchnorm(model):  # nothing to recalibrate: skip the calibration pass
        calib_loader = None
    evaluator = PlanTreeEvaluator(model, plans, device, reference)
    total = len(test_loader) + (len(calib_loader) if calib_loader is not None else 0)
    with own_bn_tensors(model), tqdm(total=total, desc=f"{len(plans)} plans", unit="batch", leave=False,
                                     disable=not progress) as bar:
        if calib_loader is not None:
            evaluator.calibrate((x for x, _ in calib_loader), bar)
        return evaluator.evaluate(test_loader, predictions, bar)


def plan_shares(plans: Sequence[Plan], parts: int) -> list[list[int]]:
    """`plans`' indices in `parts` contiguous runs of prefix order (the plans' block sequences sorted), as even in
    size as they go: each part is whole subtrees of the prefix tree but for the paths at its two ends."""
    order = sorted(range(len(plans)), key=lambda i: plans[i].sequence())
    bounds = [round(k * len(order) / parts) for k in range(parts + 1)]
    return [order[bounds[k]:bounds[k + 1]] for k in range(parts)]


def evaluate_plans_across(world: World, model: StagedModel, plans: Sequence[Plan], test_loader: DataLoader,
                          calib_loader: DataLoader | None, device: torch.device, progress: bool = True,
                          reference: Plan | None = None) -> pd.DataFrame:
    """`evaluate_plans` with the plans shared out over the ranks of `world`, every rank returning the whole table.

    Each rank recalibrates and evaluates its share on all the data (and the reference network, which KL
    needs), so each row is computed exactly as one process computes it.
    """
    if not world.distributed:
        return evaluate_plans(model, plans, test_loader, calib_loader, device, progress, reference=reference)[0]
    mine = plan_shares(plans, world.size)[world.rank]
    part = evaluate_plans(model, [plans[i] for i in mine], test_loader, calib_loader, device,
                          progress and world.is_main, reference=reference)[0] if mine else pd.DataFrame()
    rows: dict[int, dict] = {}
    for indices, records in gather_objects(world, (mine, part.to_dict("records"))):
        rows.update(zip(indices, records))
    return pd.DataFrame([rows[i] for i in range(len(plans))])
