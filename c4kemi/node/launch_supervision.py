"""Running a launch plan: the helpers first and ready, then Kamailio in the foreground, then all stopped.

Kamailio runs as a child; SIGINT, SIGTERM and SIGHUP are forwarded to it,
and if the launcher dies, Kamailio and the helpers get SIGTERM too
(``PR_SET_PDEATHSIG``). The table's writers run with the lowest CPU
priority (``SCHED_IDLE``). The exit status says how Kamailio ended.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

from .launch_plan import Helper, LaunchError

__all__ = ["API_START_TIMEOUT", "exit_status", "idle_child", "start_helper", "stop_helper", "supervise"]

API_START_TIMEOUT = 20.0  # seconds for a helper to be ready (c4 serve to answer /health)


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


def start_helper(helper: Helper) -> subprocess.Popen:
    """Start a helper and wait until it is ready."""
    proc = subprocess.Popen(helper.argv, stdin=subprocess.DEVNULL, env={**os.environ, **helper.env},
                            preexec_fn=idle_child if helper.idle else _die_with_parent)
    deadline = time.monotonic() + API_START_TIMEOUT
    while not helper.ready():
        code = proc.poll()
        if code is not None:
            raise LaunchError(f"{helper.what} exited with code {code} before it was ready; Kamailio not started")
        if time.monotonic() > deadline:
            stop_helper(proc)
            raise LaunchError(f"{helper.what} was not ready within {API_START_TIMEOUT:.0f}s; Kamailio not started")
        time.sleep(0.1)
    if proc.poll() is not None:  # something else answered in its place
        raise LaunchError(f"{helper.what} exited with code {proc.returncode}; is its port already taken?")
    print(f"c4 kamailio: {helper.what} is up (pid {proc.pid})", flush=True)
    return proc


def stop_helper(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def supervise(command: list[str], env: dict[str, str]) -> int:
    proc = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
    stopping = []

    def forward(signum, _frame):
        stopping.append(signum)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except InterruptedError:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping:
        print(f"c4 kamailio: stopped (signal {signal.Signals(stopping[0]).name}), Kamailio exit code {code}", file=sys.stderr)
        return 0 if code in (0, -signal.SIGTERM) else exit_status(code)
    if code != 0:
        print(f"c4 kamailio: Kamailio exited with code {code}", file=sys.stderr)
    return exit_status(code)


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it: 128 + N when killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode
