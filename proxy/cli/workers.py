"""`tokenproxy serve` with several workers: one supervisor, N processes on one port.

Each worker is a whole proxy (`tokenproxy serve --worker I`) binding the API and ops
addresses with SO_REUSEPORT, so the kernel spreads connections over them and no process
hands sockets to another. The supervisor serves nothing itself:

* it applies migrations once, then starts the workers and waits until each says it serves
  (a byte on a pipe); a worker that dies during start-up stops the whole start, since
  the next one would die the same way (bad key ring, unreachable vault);
* afterwards a worker that exits is started again under the same index, after a pause
  that doubles while it keeps dying young (at most MAX_RESTART_DELAY seconds);
* SIGTERM or SIGINT drains every worker (each finishes its in-flight requests within
  TOKENPROXY_SHUTDOWN_GRACE), SIGKILL after that grace and a margin; SIGHUP is passed on
  (each worker re-reads the clients file);
* workers keep their metric values in a private directory (prometheus-client's
  multiprocess mode), so any worker's /metrics shows the sums over all of them;
* only worker 0 runs the once-per-deployment jobs (retention sweep, idempotency purge).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import structlog
from prometheus_client.multiprocess import mark_process_dead

_log = structlog.get_logger("tokenproxy.supervisor")

# A worker that lived this long before dying is restarted at once; one dying younger
# waits 1, 2, 4 … seconds, so a crash loop neither spins the CPU nor floods the logs.
HEALTHY_LIFETIME = 10.0
MAX_RESTART_DELAY = 30.0
# How long the supervisor waits past the shutdown grace before it kills a worker.
KILL_MARGIN = 5.0
_POLL = 0.2


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    started_at: float = 0.0
    young_deaths: int = 0
    restart_at: float = 0.0
    pids: list[int] = field(default_factory=list)


class StartupFailed(Exception):
    """A worker exited before it served: the deployment cannot start."""


class Supervisor:
    """Starts, watches, restarts and drains the worker processes."""

    def __init__(self, count: int, *, grace: float, base_env: dict[str, str]) -> None:
        self.count = count
        self.grace = grace
        self.base_env = base_env
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="tokenproxy-metrics-"))
        self.workers = [_Worker(i) for i in range(count)]
        self._stopping = False

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 after a clean drain, 1 if start-up failed."""
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            try:
                self._start_all()
            except StartupFailed as exc:
                print(f"tokenproxy: {exc}", file=sys.stderr)
                return 1
            _log.info("workers_serving", workers=self.count, pid=os.getpid())
            while not self._stopping:
                self._watch()
                time.sleep(_POLL)
            return 0
        finally:
            self._drain()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            for worker in self.workers:
                if worker.process is not None and worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGHUP)
            return
        self._stopping = True

    def _spawn(self, worker: _Worker) -> None:
        read_fd, write_fd = os.pipe()
        env = {**self.base_env, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        argv = [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--worker",
            str(worker.index),
            "--ready-fd",
            str(write_fd),
        ]
        try:
            worker.process = subprocess.Popen(argv, env=env, pass_fds=(write_fd,))  # noqa: S603 - our own interpreter and module
        finally:
            os.close(write_fd)
        worker.ready_fd = read_fd
        worker.started_at = time.monotonic()
        worker.pids.append(worker.process.pid)
        _log.info("worker_started", worker=worker.index, pid=worker.process.pid)

    def _start_all(self) -> None:
        for worker in self.workers:
            self._spawn(worker)
        waiting = {w.ready_fd: w for w in self.workers if w.ready_fd is not None}
        while waiting:
            if self._stopping:
                raise StartupFailed("stopped during start-up")
            ready, _, _ = select.select(list(waiting), [], [], _POLL)
            for fd in ready:
                worker = waiting.pop(fd)
                said = os.read(fd, 1)
                os.close(fd)
                worker.ready_fd = None
                if not said:  # the pipe closed without a byte: the worker died starting
                    raise StartupFailed(self._died_starting(worker))
            for fd, worker in list(waiting.items()):
                if worker.process is not None and worker.process.poll() is not None:
                    os.close(fd)
                    del waiting[fd]
                    raise StartupFailed(self._died_starting(worker))

    def _died_starting(self, worker: _Worker) -> str:
        assert worker.process is not None  # noqa: S101 - spawned just before
        code = worker.process.wait()
        return f"worker {worker.index} exited during start-up (code {code}); see its log above"

    def _watch(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is not None and process.poll() is not None:
                self._buried(worker, process, now)
            if worker.process is None and now >= worker.restart_at and not self._stopping:
                self._spawn(worker)
            if worker.ready_fd is not None:
                ready, _, _ = select.select([worker.ready_fd], [], [], 0)
                if ready:
                    os.close(worker.ready_fd)
                    worker.ready_fd = None

    def _buried(self, worker: _Worker, process: subprocess.Popen[bytes], now: float) -> None:
        """Account for a dead worker and schedule its restart."""
        # Its live gauges leave the sums; its counters stay (they only ever grew).
        mark_process_dead(process.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
            worker.ready_fd = None
        lived = now - worker.started_at
        worker.young_deaths = 0 if lived >= HEALTHY_LIFETIME else worker.young_deaths + 1
        delay = (
            min(MAX_RESTART_DELAY, 2.0 ** (worker.young_deaths - 1)) if worker.young_deaths else 0.0
        )
        worker.restart_at = now + delay
        worker.process = None
        _log.warning(
            "worker_exited",
            worker=worker.index,
            pid=process.pid,
            exit_code=process.returncode,
            restart_in_seconds=delay,
        )

    def _drain(self) -> None:
        live = [w.process for w in self.workers if w.process is not None]
        for process in live:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + KILL_MARGIN
        for process in live:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log.warning("worker_killed", pid=process.pid)
                process.kill()
                process.wait()
        for worker in self.workers:
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
                worker.ready_fd = None
        _log.info("workers_stopped")


def tell_supervisor(fd: int) -> None:
    """From a worker: one byte on the pipe says it serves."""
    with contextlib.suppress(OSError):
        os.write(fd, b"1")
        os.close(fd)
