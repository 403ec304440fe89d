"""Cost of stimulative training vs. common training, measured in one run on the same model and data.

Per optimization step (forward, backward, SGD update) of CT, ST with the simple two-pass step, and
ST with the shared step: wall time over interleaved rounds, and the peak memory of each (each in a
fresh process: CUDA peak allocated, or peak resident memory above a warmed-up start).

ST's cost depends on the sampled sub-network, so the ST steps do not sample: they cycle through
every ordered plan in a fixed shuffled order (each plan equally often, which is exactly the
distribution of ST's sampler), and both ST steps see the same plans in every round. Each round
runs every step kind back to back; the ratios are of the mean time per step over all rounds, with
the spread of the per-round ratios to show the machine's noise.

    python benchmarks/st_overhead.py [--model mobilenet_v3_large --width-mult 0.5] [--channels-last]
                                     [--steps 48 --rounds 6]
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch

from loafing.data import load_digits_splits, make_loader
from loafing.methods import ct_loss, st_loss_shared, st_loss_simple
from loafing.models import create_model
from loafing.plans import ordered_space

from cpu_memory import peak_rss_mib, rss_mib, spawn_context

STEPS = {"ct": lambda model, x, y, plan: ct_loss(model, x, y),
         "st-simple": lambda model, x, y, plan: st_loss_simple(model, x, y, plan, 1.0),
         "st-shared": lambda model, x, y, plan: st_loss_shared(model, x, y, plan, 1.0)}


def setup(args):
    torch.manual_seed(0)
    device = torch.device(args.device)
    data = load_digits_splits()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = create_model(args.model, data.num_classes, args.width_mult).to(device, memory_format=memory_format)
    model.train().set_normalization(data.mean, data.std)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-5)
    batches = [(x.to(device, memory_format=memory_format), y.to(device))
               for x, y in make_loader(data.train, args.batch_size, shuffle=True, drop_last=True)]
    plans = ordered_space(model.layout)
    random.Random(0).shuffle(plans)
    return device, model, optimizer, batches, plans


def run_steps(name, start, n, device, model, optimizer, batches, plans) -> float:
    """Seconds per step over steps start..start+n-1 (batch and, for ST, plan chosen by the step number)."""
    step = STEPS[name]
    if device.type == "cuda":
        torch.cuda.synchronize()
    begin = time.perf_counter()
    for i in range(start, start + n):
        x, y = batches[i % len(batches)]
        loss = step(model, x, y, plans[i % len(plans)]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - begin) / n


def peak_memory(name, args, queue) -> None:
    """In a fresh process: peak memory of `name`'s steps above the state after one warm-up CT step."""
    device, model, optimizer, batches, plans = setup(args)
    run_steps("ct", 0, 1, device, model, optimizer, batches, plans)  # allocates gradients and momentum buffers
    n = len(plans)  # every plan once
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_steps(name, 0, n, device, model, optimizer, batches, plans)
        queue.put((torch.cuda.max_memory_allocated() - base) / 2**20)
    else:
        base = rss_mib()
        run_steps(name, 0, n, device, model, optimizer, batches, plans)
        queue.put(peak_rss_mib() - base)


def check_same_losses(model, batches, plans, checked: int = 8) -> float:
    """Both ST steps on the same batch and plan (same dropout masks): the largest loss difference, checked <= 1e-5."""
    largest = 0.0
    for i in range(checked):
        x, y = batches[i % len(batches)]
        losses = []
        for name in ("st-simple", "st-shared"):
            torch.manual_seed(i)
            losses.append(STEPS[name](copy.deepcopy(model), x, y, plans[i]).loss.item())
        largest = max(largest, abs(losses[0] - losses[1]))
    if largest > 1e-5:
        raise AssertionError(f"the two ST steps give losses {largest:.2e} apart on the same batch and plan")
    return largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v3_large")
    parser.add_argument("--width-mult", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=48, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels-last", action="store_true", help="NHWC activations, as `train --channels-last`")
    args = parser.parse_args()

    device, model, optimizer, batches, plans = setup(args)
    same = check_same_losses(model, batches, plans)
    layout = "channels-last" if args.channels_last else "NCHW"
    print(f"{args.model} x{args.width_mult}, digits, batch {args.batch_size}, {layout}, device {device}, "
          f"torch threads {torch.get_num_threads()}, {args.rounds} rounds x {args.steps} steps, "
          f"{len(plans)} ordered plans cycled; the ST steps' losses on the same batches and plans agree within "
          f"{same:.1e} (checked <= 1e-5)")
    for name in STEPS:  # warm-up
        run_steps(name, 0, 3, device, model, optimizer, batches, plans)
    times = {name: [] for name in STEPS}
    for r in range(args.rounds):  # interleaved, so drift hits every step alike
        for name in STEPS:
            times[name].append(run_steps(name, r * args.steps, args.steps, device, model, optimizer, batches, plans))

    ctx_mp = spawn_context()
    memory = {}
    for name in STEPS:
        queue = ctx_mp.Queue()
        proc = ctx_mp.Process(target=peak_memory, args=(name, args, queue))
        proc.start()
        memory[name] = queue.get()
        proc.join()

    ct_time, ct_mem = statistics.mean(times["ct"]), memory["ct"]
    kind = "CUDA peak allocated" if device.type == "cuda" else "peak RSS above warm start"
    print(f"{'step':10s} {'ms/step':>8s} {'vs CT':>6s} {'per-round vs CT':>16s} {kind + ' MiB':>32s} {'vs CT':>6s}")
    for name in STEPS:
        t = statistics.mean(times[name])
        per_round = [a / b for a, b in zip(times[name], times["ct"])]
        spread = f"{min(per_round):.2f}-{max(per_round):.2f}"
        print(f"{name:10s} {t * 1000:8.1f} {t / ct_time:6.2f} {spread:>16s} {memory[name]:32.1f} "
              f"{memory[name] / ct_mem:6.2f}")


if __name__ == "__main__":
    main()
