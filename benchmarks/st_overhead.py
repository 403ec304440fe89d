"""Cost of stimulative training vs. common training, measured in one run on the same model and data.

Per optimization step (forward, backward, SGD update) of CT, ST with the simple two-pass step, and
ST with the shared-prefix step: median wall time over interleaved rounds, and the peak memory of
each (each in a fresh process: CUDA peak allocated, or peak resident memory above a warmed-up start).

    python benchmarks/st_overhead.py [--model mobilenet_v3_large --width-mult 0.5] [--steps 20 --rounds 5]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import resource
import statistics
import time

import torch

from loafing.data import load_digits_splits, make_loader
from loafing.models import create_model
from loafing.plans import sample_ordered_plan
from loafing.train import StepContext, ct_step, st_step_shared, st_step_simple

STEPS = {"ct": ct_step, "st-simple": st_step_simple, "st-shared": st_step_shared}


def setup(args):
    torch.manual_seed(0)
    device = torch.device(args.device)
    data = load_digits_splits()
    model = create_model(args.model, data.num_classes, args.width_mult).to(device).train()
    model.set_normalization(data.mean, data.std)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-5)
    batches = [(x.to(device), y.to(device)) for x, y in make_loader(data.train, args.batch_size, shuffle=True,
                                                                    drop_last=True)]
    rng = random.Random(0)
    ctx = StepContext(1.0, lambda: sample_ordered_plan(model.layout, rng))
    return device, model, optimizer, batches, ctx


def run_steps(name, n, device, model, optimizer, batches, ctx) -> float:
    """Seconds per step over n steps."""
    step = STEPS[name]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(n):
        x, y = batches[i % len(batches)]
        loss = step(model, x, y, ctx).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_memory(name, args, queue) -> None:
    """In a fresh process: peak memory of `name`'s steps above the state after one warm-up CT step."""
    device, model, optimizer, batches, ctx = setup(args)
    run_steps("ct", 1, device, model, optimizer, batches, ctx)  # allocates gradients and momentum buffers
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_steps(name, args.steps, device, model, optimizer, batches, ctx)
        queue.put((torch.cuda.max_memory_allocated() - base) / 2**20)
    else:
        base = rss_mib()
        run_steps(name, args.steps, device, model, optimizer, batches, ctx)
        queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v3_large")
    parser.add_argument("--width-mult", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device, model, optimizer, batches, ctx = setup(args)
    print(f"{args.model} x{args.width_mult}, digits, batch {args.batch_size}, device {device}, "
          f"torch threads {torch.get_num_threads()}, {args.rounds} rounds x {args.steps} steps")
    for name in STEPS:  # warm-up
        run_steps(name, 3, device, model, optimizer, batches, ctx)
    times = {name: [] for name in STEPS}
    for _ in range(args.rounds):  # interleaved, so drift hits every step alike
        for name in STEPS:
            times[name].append(run_steps(name, args.steps, device, model, optimizer, batches, ctx))

    ctx_mp = mp.get_context("spawn")
    memory = {}
    for name in STEPS:
        queue = ctx_mp.Queue()
        proc = ctx_mp.Process(target=peak_memory, args=(name, args, queue))
        proc.start()
        memory[name] = queue.get()
        proc.join()

    ct_time, ct_mem = statistics.median(times["ct"]), memory["ct"]
    kind = "CUDA peak allocated" if device.type == "cuda" else "peak RSS above warm start"
    print(f"{'step':10s} {'ms/step':>8s} {'vs CT':>6s} {kind + ' MiB':>32s} {'vs CT':>6s}")
    for name in STEPS:
        t = statistics.median(times[name])
        print(f"{name:10s} {t * 1000:8.1f} {t / ct_time:6.2f} {memory[name]:32.1f} {memory[name] / ct_mem:6.2f}")


if __name__ == "__main__":
    main()
