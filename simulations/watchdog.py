"""Leave nothing behind: a small process that starts beside a simulation and, as soon as the
simulation's main process is gone, kills every process that run started (Ray's GCS, raylet,
agents and ``ClientAppActor`` workers), whether the main process returned, raised, was stopped
by a timeout's SIGTERM or by ``kill -9``.

Without it, workers of a killed run kept training and writing ledger entries, and agents that
ignore SIGTERM stayed. The run's processes are found by a marker in their environment
(``FEDSHIELD_RUN=<token>``), which every process Ray starts inherits from the main process,
so reparenting to init does not hide them. The watchdog learns that the main process is gone
from a pipe whose write end only the main process holds: end of file means it closed it or
died. Processes that drop the marker (Ray starts some agents with an environment of their own)
are caught by the second net: every half second the watchdog notes the main process's
descendants, and kills those too. The watchdog runs in its own session, so a signal to the
run's process group (Ctrl-C, a shell's timeout) does not reach it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import subprocess
import sys
from collections.abc import Iterator

import psutil

MARKER = "FEDSHIELD_RUN"


def marked(token: str, *, spare: set[int] = frozenset()) -> list[psutil.Process]:
    """This user's processes whose environment carries ``MARKER=token`` (except ``spare``)."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid in spare or proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(MARKER) == token:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def reap(token: str, *, spare: set[int] = frozenset(), seen: dict[int, psutil.Process] | None = None) -> int:
    """SIGKILL every marked process and every process in ``seen`` still running (psutil checks
    that a pid was not reused), twice over, for any started while the first were dying;
    returns how many there were."""
    killed = 0
    for _ in range(2):
        procs = marked(token, spare=spare)
        procs += [p for pid, p in (seen or {}).items() if pid not in spare and p not in procs and p.is_running()]
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)
        killed += len(procs)
    return killed


@contextlib.contextmanager
def leave_nothing_behind() -> Iterator[str]:
    """Mark the processes started inside the block, and make sure none outlives this process
    (nor the block: on leaving it, stragglers are killed too). Yields the run's token."""
    token = secrets.token_hex(8)
    read_end, write_end = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != MARKER}
    # Processes this one started before the block (a Ray cluster a caller runs the simulation
    # on, say) are not the run's: spared.
    before = [str(p.pid) for p in psutil.Process().children(recursive=True)]
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "simulations.watchdog", token, str(os.getpid()), *before],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    os.close(read_end)
    previous = os.environ.get(MARKER)
    os.environ[MARKER] = token
    try:
        yield token
    finally:
        if previous is None:
            os.environ.pop(MARKER, None)
        else:
            os.environ[MARKER] = previous
        os.close(write_end)  # the watchdog reaps what is left, then exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(timeout=30)


def main(argv: list[str]) -> int:
    token, parent = argv[0], int(argv[1])
    existing = {int(pid) for pid in argv[2:]}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seen: dict[int, psutil.Process] = {}
    try:
        main_process = psutil.Process(parent)
    except psutil.NoSuchProcess:
        main_process = None
    while True:  # until the main process closes its end of the pipe or dies
        ready, _, _ = select.select([sys.stdin], [], [], 0.5)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
        if main_process is not None:
            with contextlib.suppress(psutil.Error):
                for child in main_process.children(recursive=True):
                    if child.pid not in existing:
                        seen.setdefault(child.pid, child)
    # a main process still alive (a normal end) is not ours to kill
    reap(token, spare={parent, os.getpid(), *existing}, seen=seen)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
