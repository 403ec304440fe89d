"""Stopping a process and its worker processes together: SIGTERM and SIGHUP (what a cluster scheduler, `timeout` or
a closed terminal sends) end the work as Ctrl-C does, workers included, so that the same command resumes it."""
from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
import time
from typing import TYPE_CHECKING, Collection, Iterator

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.synchronize import Event

STOPPING = (signal.SIGTERM, signal.SIGHUP)
WORKER_GRACE_S = 20.0  # a worker's cleanup (a checkpoint half-written is removed) before it is killed


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: the work unwinds as on Ctrl-C (whose handling it shares)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    for number in STOPPING:  # a second signal must not cut the cleanup short
        signal.signal(number, signal.SIG_IGN)
    raise Stopped(signum)


def _handled(numbers: tuple[int, ...]) -> tuple[int, ...]:
    """The signals of `numbers` this process does not ignore (`nohup` ignores SIGHUP, and so must we then)."""
    return tuple(number for number in numbers if signal.getsignal(number) is not signal.SIG_IGN)


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGHUP raise `Stopped` in the main thread (elsewhere, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {number: signal.signal(number, _raise_stopped) for number in _handled(STOPPING)}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def _worker_stops(signum: int, frame: object) -> None:
    for number in (signal.SIGINT, *STOPPING):  # the first signal stops it; its cleanup then runs undisturbed
        signal.signal(number, signal.SIG_IGN)
    # SystemExit, not KeyboardInterrupt: a worker waiting for work then ends quietly, without a traceback.
    raise SystemExit(128 + signum)


_stopping: Event | None = None  # in a worker process: set by its parent when the work stops


def worker_signals(stopping: Event) -> None:
    """A worker process's initializer: its first Ctrl-C, SIGTERM or SIGHUP ends it, its cleanup (`finally`) run;
    once its parent sets `stopping`, it starts no more work (`unless_stopping`)."""
    global _stopping
    _stopping = stopping
    for number in _handled((signal.SIGINT, *STOPPING)):
        signal.signal(number, _worker_stops)


def unless_stopping() -> None:
    """In a worker process, before a piece of work: end quietly if the parent is stopping the work (a worker started
    after the others were stopped must not take up what was queued)."""
    if _stopping is not None and _stopping.is_set():
        raise SystemExit(128 + signal.SIGTERM)


def stop_children(stopping: Event, spared: Collection[BaseProcess] = (), grace_s: float = WORKER_GRACE_S) -> None:
    """Set `stopping` and end every child process of this one but the `spared`: SIGTERM, then SIGKILL for any still
    running after `grace_s` seconds."""
    stopping.set()
    children = [child for child in multiprocessing.active_children() if child not in spared]
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join()
