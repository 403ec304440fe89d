"""Several processes, one run: the process group torchrun describes, and what the ranks agree on.

`torchrun --nproc_per_node N $(which loafing) ...` starts N copies of a command with RANK, WORLD_SIZE and
LOCAL_RANK in their environments. Each copy joins one process group (gloo on the CPU, NCCL on GPUs);
rank 0 is the one that writes files and shows progress. Without torchrun the world is one process and
nothing here starts a process group.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from loafing.errors import AgreedError, LoafingError

T = TypeVar("T")
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one command."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes the files and shows the progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there are other processes to talk to."""
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise LoafingError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def current_world() -> World:
    """The world this process was started into (RANK / WORLD_SIZE / LOCAL_RANK from torchrun; else one process)."""
    return World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))


def process_device(world: World, device: torch.device) -> torch.device:
    """The device this rank computes on: for CUDA, the GPU of its local rank (one GPU per process)."""
    if device.type != "cuda" or not world.distributed:
        return device
    if device.index not in (None, 0):
        raise LoafingError(f"under torchrun each process takes the GPU of its local rank; pass --device cuda, "
                           f"not {device}")
    if world.local_rank >= torch.cuda.device_count():
        raise LoafingError(f"local rank {world.local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                           "start at most that many processes per node")
    return torch.device("cuda", world.local_rank)


def join(world: World, device: torch.device) -> None:
    """Join the process group of a multi-process command (no-op for one process or if already joined)."""
    if not world.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # A rank may wait at a collective while another finishes a longer share of an epoch's evaluation (or rank 0
    # writes a checkpoint): NCCL's default 10 minutes could end a healthy run. A dead rank is caught by torchrun.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size,
                            timeout=COLLECTIVE_TIMEOUT)


def leave() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Inside: this process belongs to the command's process group; it is left on exit, however."""
    joined = world.distributed and not dist.is_initialized()
    join(world, device)
    try:
        yield
    finally:
        if joined:
            leave()


def agree(world: World, check: Callable[[], T]) -> T:
    """Run `check` on rank 0 and hand its result to every rank; whatever it raises stops every rank (rank 0 raises
    it, the others an AgreedError saying it).

    For what only one process may do (lock the run folder) or should decide (is there a run to resume):
    other ranks would otherwise wait forever for a rank that stopped.
    """
    if not world.distributed:
        return check()
    outcome: list[Any] = [None]
    failure: BaseException | None = None
    if world.is_main:
        try:
            outcome = [("ok", check())]
        except BaseException as err:  # whatever stops rank 0 must stop the others too, not leave them waiting
            failure = err
            message = str(err) if isinstance(err, LoafingError) else f"rank 0 failed: {type(err).__name__}: {err}"
            outcome = [("error", message)]
    dist.broadcast_object_list(outcome, src=0)
    if failure is not None:
        raise failure
    kind, value = outcome[0]
    if kind == "error":
        raise AgreedError(value)
    return value


def shared_error(world: World, message: str) -> LoafingError:
    """The error every rank meets alike, to raise: rank 0's is printed, the others' stop their processes quietly."""
    return LoafingError(message) if world.is_main else AgreedError(message)


def require_one_process(what: str) -> None:
    """Refuse to run `what` under torchrun (each rank would do all of it); rank 0 says so, the others stop quietly."""
    world = current_world()
    if world.distributed:
        raise shared_error(world, f"{what} runs in one process; under torchrun run `loafing train`, `loafing measure` "
                           "or `loafing destruct`")


def gather_objects(world: World, obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def shared_tasks(world: World, tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Every task's result on every rank, task i computed by rank i % world.size (all of them by one process)."""
    mine = {i: task() for i, task in enumerate(tasks) if i % world.size == world.rank}
    results: dict[int, T] = {}
    for part in gather_objects(world, mine):
        results.update(part)
    return [results[i] for i in range(len(tasks))]


def all_reduce_sum(world: World, tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over the ranks (in place)."""
    if world.distributed:
        dist.all_reduce(tensor)
    return tensor


def barrier(world: World) -> None:
    """Wait until every rank gets here."""
    if world.distributed:
        dist.barrier()
