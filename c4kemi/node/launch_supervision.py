"""Running a launch plan: the helpers first and ready, then Kamailio in the foreground, the helpers kept up, then all stopped.

``Node`` runs one launch:

- **Signals**: from the moment it is entered, SIGINT, SIGTERM and SIGHUP
  stop the node: before Kamailio runs, the start is abandoned (``Stopped``);
  while it runs, SIGTERM is forwarded to it. If the launcher dies,
  Kamailio and the helpers get SIGTERM too (``PR_SET_PDEATHSIG``).
- **Helpers** start one after the other, each ready before the next
  (``API_START_TIMEOUT``, or the helper's own bound: c4 db follow waiting
  for PostgreSQL has none, and the launcher says every
  ``WAITING_LOG_INTERVAL`` seconds that it still waits). One that exits
  before it is ready stops the launch. The table's writers run with the
  lowest CPU priority (``SCHED_IDLE``).
- **Supervision**: a helper that exits later (while the others start, or
  while Kamailio runs) is logged with its exit status and started again
  after ``RESTART_FIRST`` seconds, doubling at each exit up to
  ``RESTART_MAX``, back to ``RESTART_FIRST`` once it stayed up
  ``STABLE_AFTER`` seconds. Its restarts are counted in the node's status
  file, ``helpers.json`` in Kamailio's runtime directory, whose path every
  helper has in ``$C4_NODE_STATUS`` (c4 serve serves the count in its
  metrics)::

      {"cdr": {"restarts": 1, "pid": 4242, "since": 1765100000.25, "last_exit": 137}, ...}

  keyed by the helper's name (``Helper.name``: cdr, feed, db-follow, serve,
  health-sync); ``pid`` and ``since`` (Unix time it was started) are null
  while it waits to be started again, ``last_exit`` is its last exit status
  as a shell reports it (128 + N when killed by signal N), null if it never
  exited. Rewritten atomically at each change.
- **Kamailio** runs as a child; the wait for it wakes when it exits (a
  pidfd) or every ``POLL_INTERVAL`` seconds to look at the helpers. Its
  exit stops the node, and the exit status says how it ended.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from .launch_plan import Helper, LaunchError

__all__ = [
    "API_START_TIMEOUT", "STATUS_ENV", "STATUS_FILE", "Node", "Stopped", "describe_exit", "exit_status", "idle_child", "say",
    "stop_helper",
]

API_START_TIMEOUT = 20.0  # seconds for a helper to be ready (c4 serve to answer /health), unless it says otherwise
RESTART_FIRST = 0.5  # seconds before a helper that exited is started again ...
RESTART_MAX = 30.0  # ... doubling at each exit up to this
STABLE_AFTER = 60.0  # seconds up after which its next exit waits RESTART_FIRST again
POLL_INTERVAL = 0.2  # seconds between looks at the helpers while Kamailio runs
WAITING_LOG_INTERVAL = 30.0  # seconds between "still waiting" lines while a helper without a start bound gets ready
STATUS_FILE = "helpers.json"  # in Kamailio's runtime directory
STATUS_ENV = "C4_NODE_STATUS"  # its path, in every helper's environment


class Stopped(Exception):
    """A signal stopped the node before Kamailio ran; the signal number is ``args[0]``."""


def say(message: str) -> None:
    print(f"c4 kamailio: {message}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM if the launcher goes away."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


def idle_child() -> None:
    """In a writer's child before exec: die with the launcher, and run only on CPU time SIP workers leave.

    SCHED_IDLE (docs/scale.md, "The writer's CPU priority"): a Kamailio
    worker woken by a packet preempts it at once, and under contention it
    gets a minimal share (not none: a change still gets through, slowly).
    nice 19 where the policy cannot be set. Inherited across exec.
    """
    _die_with_parent()
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def _spawn(helper: Helper, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(helper.argv, stdin=subprocess.DEVNULL, env={**os.environ, **helper.env, **(env or {})},
                            preexec_fn=idle_child if helper.idle else _die_with_parent)


def stop_helper(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def describe_exit(returncode: int) -> str:
    return f"was killed by {_signal_name(-returncode)}" if returncode < 0 else f"exited with code {returncode}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass
class Supervised:
    """One helper as the node runs it."""

    helper: Helper
    name: str
    proc: subprocess.Popen | None = None
    started: float = 0.0  # monotonic time of its last start
    since: float | None = None  # ... as Unix time, None while it waits to be started again
    restarts: int = 0
    delay: float = RESTART_FIRST  # before its next start, should it exit now
    due: float | None = None  # monotonic time it is started again
    last_exit: int | None = None  # exit status, as a shell reports it

    def status(self) -> dict:
        return {"restarts": self.restarts, "pid": self.proc.pid if self.proc is not None else None,
                "since": self.since, "last_exit": self.last_exit}


class Node:
    """One launch's helpers and Kamailio, and the signal that stops them (a context manager: the signal handlers)."""

    def __init__(self, rundir: Path | None) -> None:
        self.status_path = rundir / STATUS_FILE if rundir is not None else None
        self.helpers: list[Supervised] = []
        self.kamailio: subprocess.Popen | None = None
        self.signum: int | None = None  # the signal that stops the node
        self._forwarded = False  # ... sent on to Kamailio as SIGTERM
        self._previous: dict[int, object] = {}

    # ---------------------------------------------------------------- signals

    def __enter__(self) -> Node:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, _frame) -> None:
        if self.signum is None:
            self.signum = signum
        kamailio = self.kamailio
        if kamailio is not None and kamailio.returncode is None and not self._forwarded:
            self._forwarded = True
            try:
                kamailio.send_signal(signal.SIGTERM)
            except OSError:
                pass

    def check_stop(self) -> None:
        """Stopped, if a signal asked the node to stop."""
        if self.signum is not None:
            raise Stopped(self.signum)

    # ---------------------------------------------------------------- helpers

    def _env(self) -> dict[str, str]:
        return {STATUS_ENV: str(self.status_path)} if self.status_path is not None else {}

    def start(self, helper: Helper, waiting: str | None = None) -> None:
        """Start HELPER and wait until it is ready, supervising those started before it meanwhile.

        Raises LaunchError when it exits before it is ready or is not ready
        in time, Stopped on a signal. WAITING: what to say every
        WAITING_LOG_INTERVAL seconds while it gets ready (default: that the
        launcher still waits for it).
        """
        self.check_stop()
        names = [s.name for s in self.helpers]
        name = helper.name if helper.name not in names else f"{helper.name}-{len(names)}"
        entry = Supervised(helper, name, delay=RESTART_FIRST)
        try:
            entry.proc = _spawn(helper, self._env())
        except OSError as exc:
            raise LaunchError(f"cannot start {helper.what}: {exc}; Kamailio not started") from None
        entry.started, entry.since = time.monotonic(), time.time()
        self.helpers.append(entry)
        self.write_status()
        bound = helper.ready_timeout if helper.ready_timeout is not None else API_START_TIMEOUT
        begun = time.monotonic()
        next_word = begun + WAITING_LOG_INTERVAL
        while not helper.ready():
            code = entry.proc.poll()
            if code is not None:
                self.check_stop()  # the signal that stops the node may have reached it too (its process group)
                raise LaunchError(f"{helper.what} {describe_exit(code)} before it was ready; Kamailio not started")
            now = time.monotonic()
            if now - begun > bound:
                raise LaunchError(f"{helper.what} was not ready within {bound:.0f}s; Kamailio not started")
            if now >= next_word:
                next_word += WAITING_LOG_INTERVAL
                say(f"{waiting or f'still waiting for {helper.what} to be ready'} ({now - begun:.0f} s)")
            self.check_stop()
            self.supervise(skip=entry)
            time.sleep(0.1)
        if entry.proc.poll() is not None:  # something else answered in its place
            raise LaunchError(f"{helper.what} {describe_exit(entry.proc.returncode)}; is its port already taken?")
        print(f"c4 kamailio: {helper.what} is up (pid {entry.proc.pid})", flush=True)

    def supervise(self, skip: Supervised | None = None) -> None:
        """Note the helpers that exited, and start again those whose delay is over."""
        now = time.monotonic()
        changed = False
        for entry in self.helpers:
            if entry is skip:
                continue
            if entry.proc is not None:
                code = entry.proc.poll()
                if code is None:
                    continue
                changed = True
                if now - entry.started >= STABLE_AFTER:
                    entry.delay = RESTART_FIRST
                entry.last_exit = exit_status(code)
                pid, entry.proc, entry.since = entry.proc.pid, None, None
                if not entry.helper.restart:
                    say(f"{entry.helper.what} (pid {pid}) {describe_exit(code)}; not started again (its restart policy)")
                    continue
                if self.signum is not None:  # the node is stopping (the signal may have reached its whole group)
                    say(f"{entry.helper.what} (pid {pid}) {describe_exit(code)}; the node is stopping")
                    continue
                entry.due = now + entry.delay
                say(f"{entry.helper.what} (pid {pid}) {describe_exit(code)}; starting it again in {entry.delay:g} s")
            elif entry.due is not None and now >= entry.due:
                changed = True
                entry.due = None
                entry.delay = min(entry.delay * 2, RESTART_MAX)
                try:
                    entry.proc = _spawn(entry.helper, self._env())
                except OSError as exc:
                    entry.due = now + entry.delay
                    say(f"{entry.helper.what} could not be started again ({exc}); next try in {entry.delay:g} s")
                    continue
                entry.restarts += 1
                entry.started, entry.since = now, time.time()
                say(f"{entry.helper.what} started again (pid {entry.proc.pid}), restart {entry.restarts}")
        if changed:
            self.write_status()

    def write_status(self) -> None:
        """The helpers' restarts and pids, to the status file (write, then rename over the old one)."""
        if self.status_path is None:
            return
        data = orjson.dumps({entry.name: entry.status() for entry in self.helpers})
        tmp = self.status_path.with_name(f".{self.status_path.name}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.status_path)
        except OSError as exc:  # the metrics lag; the node goes on
            say(f"cannot write {self.status_path}: {exc}")

    def stop_helpers(self) -> None:
        for entry in reversed(self.helpers):
            if entry.proc is not None:
                stop_helper(entry.proc)

    # ---------------------------------------------------------------- Kamailio

    def run(self, command: list[str], env: dict[str, str], routing: Callable[[], bool] | None = None,
            on_routing: Callable[[], None] | None = None) -> tuple[int, str]:
        """Run Kamailio until it exits, the helpers supervised: its exit status, and the end of the "stopped" line.

        ROUTING tells (every POLL_INTERVAL) whether Kamailio is up; the first
        time it is, ON_ROUTING is called (the launcher says where it listens).
        """
        self.check_stop()
        try:
            self.kamailio = proc = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
        except OSError as exc:
            raise LaunchError(f"cannot start Kamailio ({command[0]}): {exc}") from None
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pidfd = None
        announced = routing is None
        try:
            while True:
                code = proc.poll()
                if code is not None:
                    break
                if self.signum is not None and not self._forwarded:  # it came while Kamailio was being started
                    self._on_signal(self.signum, None)
                if not announced and routing():
                    announced = True
                    if on_routing is not None:
                        on_routing()
                self.supervise()
                if pidfd is not None:
                    select.select([pidfd], [], [], POLL_INTERVAL)
                else:
                    time.sleep(POLL_INTERVAL)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if self.signum is not None:
            reason = f" (signal {_signal_name(self.signum)}), Kamailio exit code {code}"
            return (0 if code in (0, -signal.SIGTERM) else exit_status(code)), reason
        return exit_status(code), f": Kamailio {describe_exit(code)}"


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it: 128 + N when killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode
