"""Peak resident memory of work run in a fresh process, made to track live memory (shared by the benchmarks)."""
from __future__ import annotations

import multiprocessing as mp
import os
import resource


def spawn_context() -> mp.context.SpawnContext:
    """A spawn context whose processes return freed memory to the system at once.

    glibc keeps freed blocks mapped, so after a warm-up a process's peak RSS says more about the
    allocator's history than about the work measured (runs of the same work differed by 3x). Serving
    every block of 64 KiB or more with mmap unmaps it on free, so peak RSS follows peak live memory.
    """
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # read by glibc when a process starts
    return mp.get_context("spawn")


def rss_mib() -> float:
    """Current resident memory of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
