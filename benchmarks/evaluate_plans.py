"""Prefix-sharing evaluator vs. one-by-one evaluation, measured in the same process.

For resnet56-cifar (729 ordered plans) and mobilenet_v3_large (144), random weights, 32x32 inputs:
block evaluations executed vs. the unique lower bound, wall seconds of each path, speed-up, the
largest logit difference, and the peak memory of phase 2 at two plan counts (each in a fresh process).

    python benchmarks/evaluate_plans.py [--calib 64] [--eval 64] [--batch-size 64] [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from loafing.bn import batchnorms
from loafing.evaluate import plan_logits_one_by_one
from loafing.models import create_model
from loafing.plan_tree import PlanTreeEvaluator, count_block_nodes, own_bn_tensors
from loafing.plans import ordered_space

from cpu_memory import peak_rss_mib, rss_mib, spawn_context

CASES = (("resnet56-cifar", 1.0), ("mobilenet_v3_large", 1.0))


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


def count_calls(model) -> list[int]:
    counter = [0]
    for b in model.layout.main_plan.sequence():
        model.block(b).register_forward_hook(lambda m, i, o: counter.__setitem__(0, counter[0] + 1))
    return counter


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare(name: str, width_mult: float, args, device: torch.device) -> dict:
    model = make_model(name, width_mult, device)
    plans = ordered_space(model.layout)
    test_loader, calib_loader = loaders(args.calib, args.eval, args.batch_size)
    calls = count_calls(model)
    batches = len(test_loader) + len(calib_loader)

    sync(device)
    start = time.perf_counter()
    reference = [plan_logits_one_by_one(model, p, test_loader, calib_loader, device)[0] for p in plans]
    sync(device)
    one_by_one_s, one_by_one_calls = time.perf_counter() - start, calls[0]

    calls[0] = 0
    start = time.perf_counter()
    evaluator = PlanTreeEvaluator(model, plans, device)
    with own_bn_tensors(model):
        evaluator.calibrate(x for x, _ in calib_loader)
        tree = evaluator.logits(test_loader)
    sync(device)
    tree_s, tree_calls = time.perf_counter() - start, calls[0]
    max_diff = max((tree[i] - reference[i]).abs().max().item() for i in range(len(plans)))
    return {"model": name, "plans": len(plans), "lower_bound": count_block_nodes(plans) * batches,
            "tree_calls": tree_calls, "one_by_one_calls": one_by_one_calls, "one_by_one_s": one_by_one_s,
            "tree_s": tree_s, "max_diff": max_diff}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", type=int, default=64, help="calibration images")
    parser.add_argument("--eval", type=int, default=64, help="evaluation images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-only", action="store_true", help="skip the timing comparison")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, calib {args.calib}, eval {args.eval}, "
          f"batch {args.batch_size}")
    for i, (name, width) in enumerate([] if args.memory_only else CASES):
        if i == 0:
            print(f"{'model':20s} {'plans':>5s} {'blocks run (tree / bound / one-by-one)':>40s} "
                  f"{'one-by-one s':>12s} {'tree s':>8s} {'speed-up':>8s} {'max |dlogit|':>12s}")
        r = compare(name, width, args, device)
        blocks = f"{r['tree_calls']} / {r['lower_bound']} / {r['one_by_one_calls']}"
        print(f"{r['model']:20s} {r['plans']:5d} {blocks:>40s} {r['one_by_one_s']:12.2f} {r['tree_s']:8.2f} "
              f"{r['one_by_one_s'] / r['tree_s']:7.1f}x {r['max_diff']:12.2e}", flush=True)

    ctx = spawn_context()
    for name, width in CASES:
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
