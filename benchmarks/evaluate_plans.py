"""Prefix-sharing evaluator vs. one-by-one evaluation, measured in the same process.

For resnet56-cifar (729 ordered plans) and mobilenet_v3_large (144), random weights, 32x32 inputs:
block evaluations of each path and the unique lower bound, wall seconds of each path (median of
--repeats timed runs after a warm-up of both; min-max over the repeats), the speed-up next to the
block-evaluation ratio, where the time goes (seconds inside body blocks vs. everything else, from
one extra pass with timing hooks), the largest logit difference (checked: at most 1e-4), and the
peak memory of phase 2 at two plan counts (each in a fresh process).

    python benchmarks/evaluate_plans.py [--calib 64] [--eval 64] [--batch-size 64] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch
from torch.utils.data import DataLoader, TensorDataset

from loafing.bn import batchnorms
from loafing.evaluate import plan_logits_one_by_one
from loafing.models import create_model
from loafing.plan_tree import PlanTreeEvaluator, count_block_nodes, own_bn_tensors
from loafing.plans import ordered_space

from cpu_memory import peak_rss_mib, rss_mib, spawn_context

CASES = (("resnet56-cifar", 1.0), ("mobilenet_v3_large", 1.0))
MAX_LOGIT_DIFFERENCE = 1e-4


def make_model(name: str, width_mult: float, device: torch.device):
    torch.manual_seed(0)
    model = create_model(name, 10, width_mult)
    for bn in batchnorms(model):  # non-trivial stored statistics
        bn.running_var.uniform_(0.5, 2.0)
    return model.to(device).eval()


def loaders(n_calib: int, n_eval: int, batch_size: int):
    gen = torch.Generator().manual_seed(0)
    calib = TensorDataset(torch.rand(n_calib, 3, 32, 32, generator=gen), torch.zeros(n_calib, dtype=torch.long))
    test = TensorDataset(torch.rand(n_eval, 3, 32, 32, generator=gen), torch.randint(0, 10, (n_eval,), generator=gen))
    return DataLoader(test, batch_size), DataLoader(calib, batch_size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class BlockTimer:
    """Counts body-block calls per stage and the seconds spent inside them (hooks; used only when asked)."""

    def __init__(self, model) -> None:
        self.device = next(model.parameters()).device
        self.calls, self.seconds, self._start = Counter(), 0.0, 0.0
        self.handles = []
        for stage, blocks in enumerate(model.layout.stages, 1):
            for b in blocks:
                module = model.block(b)
                self.handles.append(module.register_forward_pre_hook(lambda m, i: self._enter()))
                self.handles.append(module.register_forward_hook(lambda m, i, o, s=stage: self._leave(s)))

    def _enter(self) -> None:
        sync(self.device)
        self._start = time.perf_counter()

    def _leave(self, stage: int) -> None:
        sync(self.device)
        self.seconds += time.perf_counter() - self._start
        self.calls[stage] += 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def one_by_one(model, plans, test_loader, calib_loader, device):
    return [plan_logits_one_by_one(model, p, test_loader, calib_loader, device)[0] for p in plans]


def tree(model, plans, test_loader, calib_loader, device):
    evaluator = PlanTreeEvaluator(model, plans, device)
    with own_bn_tensors(model):
        evaluator.calibrate(x for x, _ in calib_loader)
        return evaluator.logits(test_loader)


def timed(path, *args) -> tuple[float, object]:
    sync(args[-1])
    start = time.perf_counter()
    result = path(*args)
    sync(args[-1])
    return time.perf_counter() - start, result


def compare(name: str, width_mult: float, args, device: torch.device) -> dict:
    model = make_model(name, width_mult, device)
    plans = ordered_space(model.layout)
    test_loader, calib_loader = loaders(args.calib, args.eval, args.batch_size)
    batches = len(test_loader) + len(calib_loader)
    inputs = (model, plans, test_loader, calib_loader, device)
    # Warm-up of both paths (allocator, thread pools, kernel choices), on a slice of the plans.
    one_by_one(model, plans[:3], test_loader, calib_loader, device)
    tree(model, plans[:3], test_loader, calib_loader, device)
    times = {"one_by_one": [], "tree": []}
    for _ in range(args.repeats):
        seconds, reference = timed(one_by_one, *inputs)
        times["one_by_one"].append(seconds)
        seconds, logits = timed(tree, *inputs)
        times["tree"].append(seconds)
    max_diff = max((logits[i] - reference[i]).abs().max().item() for i in range(len(plans)))
    if max_diff > MAX_LOGIT_DIFFERENCE:
        raise AssertionError(f"{name}: tree and one-by-one logits differ by {max_diff:.2e} > {MAX_LOGIT_DIFFERENCE}")
    accounting = {}
    for path in (one_by_one, tree):  # one more pass each, with hooks timing the blocks
        timer = BlockTimer(model)
        total, _ = timed(path, *inputs)
        timer.remove()
        accounting[path.__name__] = (total, timer.seconds, sum(timer.calls.values()), timer.calls)
    return {"model": name, "plans": len(plans), "lower_bound": count_block_nodes(plans) * batches,
            "times": times, "accounting": accounting, "max_diff": max_diff}


def phase2_peak(name: str, width_mult: float, n_plans: int, args, queue) -> None:
    """In a fresh process: peak memory added by phase 2 (evaluation) for the last n_plans ordered plans.

    Phase 1 is skipped (the stored statistics serve): it would set the process's peak before phase 2
    starts. A one-plan warm-up runs first so that one-time start-up memory is not counted.
    """
    device = torch.device(args.device)
    model = make_model(name, width_mult, device)
    plans = ordered_space(model.layout)[-n_plans:]
    test_loader, _ = loaders(args.calib, args.eval, args.batch_size)
    evaluator = PlanTreeEvaluator(model, plans, device)
    with own_bn_tensors(model):
        PlanTreeEvaluator(model, plans[:1], device).evaluate(test_loader)  # warm-up: allocator, thread pools
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            evaluator.evaluate(test_loader)
            queue.put(("cuda peak allocated", (torch.cuda.max_memory_allocated() - base) / 2**20))
        else:
            base = rss_mib()
            evaluator.evaluate(test_loader)
            peak = peak_rss_mib()
            queue.put(("peak RSS above start", peak - base))


def report(r: dict) -> None:
    one, tree_times = r["times"]["one_by_one"], r["times"]["tree"]
    ratios = [a / b for a, b in zip(one, tree_times)]
    (o_total, o_blocks, o_calls, o_per_stage), (t_total, t_blocks, t_calls, t_per_stage) = r["accounting"].values()
    print(f"{r['model']} ({r['plans']} plans)")
    print(f"  block evaluations: tree {t_calls} / unique bound {r['lower_bound']} / one-by-one {o_calls}"
          f"  -> block ratio {o_calls / t_calls:.1f}x")
    print(f"  wall time, median of {len(one)} (min-max): one-by-one {statistics.median(one):.2f} s "
          f"({min(one):.2f}-{max(one):.2f}), tree {statistics.median(tree_times):.2f} s "
          f"({min(tree_times):.2f}-{max(tree_times):.2f})")
    print(f"  speed-up: median {statistics.median(ratios):.1f}x (per repeat {min(ratios):.1f}-{max(ratios):.1f}x), "
          f"block ratio {o_calls / t_calls:.1f}x")
    print(f"  where the time goes (one pass with block timers): one-by-one {o_total:.2f} s = {o_blocks:.2f} s in "
          f"blocks + {o_total - o_blocks:.2f} s outside; tree {t_total:.2f} s = {t_blocks:.2f} s in blocks + "
          f"{t_total - t_blocks:.2f} s outside")
    print(f"    ms per block call: one-by-one {o_blocks / o_calls * 1e3:.2f}, tree {t_blocks / t_calls * 1e3:.2f} "
          f"(calls per stage: one-by-one {dict(sorted(o_per_stage.items()))}, "
          f"tree {dict(sorted(t_per_stage.items()))})")
    print(f"  largest logit difference {r['max_diff']:.2e} (at most {MAX_LOGIT_DIFFERENCE:g}: checked)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", type=int, default=64, help="calibration images")
    parser.add_argument("--eval", type=int, default=64, help="evaluation images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path (the median is reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=[name for name, _ in CASES], help="which of the cases to run")
    parser.add_argument("--memory-only", action="store_true", help="skip the timing comparison")
    args = parser.parse_args()
    device = torch.device(args.device)
    cases = [(name, width) for name, width in CASES if name in args.models]
    print(f"device {device}, torch threads {torch.get_num_threads()}, calib {args.calib}, eval {args.eval}, "
          f"batch {args.batch_size}, {args.repeats} repeats")
    for name, width in [] if args.memory_only else cases:
        report(compare(name, width, args, device))

    ctx = spawn_context()
    for name, width in cases:
        total = len(ordered_space(create_model(name, 10, width).layout))
        for n in (max(total // 27, 1), total):
            queue = ctx.Queue()
            proc = ctx.Process(target=phase2_peak, args=(name, width, n, args, queue))
            proc.start()
            what, mib = queue.get()
            proc.join()
            print(f"phase 2 memory, {name}, {n:4d} plans: {what} {mib:8.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
