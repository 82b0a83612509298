"""Fixtures for the end-to-end tests (real Kamailio through ``c4 kamailio``, real sipp).

- ``router``: a ``RouterFactory`` for one mode; parametrised over
  ``ROUTER_MODES`` so every test runs against every mode. Call
  ``router.start(document)`` to get a running ``Router`` (``.target`` is the
  host:port callers send to, ``.update_table(doc)`` rewrites its table).
- ``sipp``: a ``SippFactory``: ``sipp.uas(scenario, address, **placeholders)``
  starts a callee on a free port of ADDRESS (``.port``, ``.uri``);
  ``sipp.uac(scenario, router.target, address, called=..., ...)`` runs a caller
  and waits for it.
- ``http_router``: a ``RouterFactory`` for HTTP mode only, for the tests of
  what only HTTP mode has (the API down or slow, admission control).
- Processes are per test and killed (by process group) at teardown; on a
  failure the router log tail and every sipp message flow are printed.

To add a mode: append it to ``ROUTER_MODES`` and teach
``RouterFactory.start`` (harness.py) to start what it needs.
"""

from __future__ import annotations

import shutil

import pytest

from .harness import Processes, RouterFactory, SippFactory

ROUTER_MODES = ["kemi", "http"]


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session", autouse=True)
def _e2e_tools():
    missing = [tool for tool in ("sipp",) if shutil.which(tool) is None]
    if shutil.which("kamailio") is None and shutil.which("kamailio", path="/usr/sbin:/sbin") is None:
        missing.append("kamailio")
    if missing:  # a failure, not a skip: the suite must run where CI runs it
        pytest.fail(f"end-to-end tests need {', '.join(missing)} (make setup)")


@pytest.fixture(scope="session", autouse=True)
def _state_dir(tmp_path_factory):
    """Every router of the run keeps its deployment secret in a temporary state dir, not /var/lib/c4."""
    import os

    path = tmp_path_factory.mktemp("c4-state")
    previous = os.environ.get("C4_STATE_DIR")
    os.environ["C4_STATE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("C4_STATE_DIR", None)
    else:
        os.environ["C4_STATE_DIR"] = previous


@pytest.fixture
def processes(request):
    procs = Processes()
    yield procs
    procs.stop_all()


@pytest.fixture
def sipp(processes, tmp_path):
    workdir = tmp_path / "sipp"
    workdir.mkdir()
    return SippFactory(processes, workdir)


def _router_factory(mode, request, processes, sipp, tmp_path):
    """A RouterFactory whose routers' logs are printed when the test fails."""
    factory = RouterFactory(mode, processes, tmp_path)
    yield factory
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for running in factory.routers:
            print(f"=== router {running.mode} on {running.target} log tail:\n{running.log_text()[-6000:]}")
        print(sipp.describe_all())


@pytest.fixture(params=ROUTER_MODES)
def router(request, processes, sipp, tmp_path):
    yield from _router_factory(request.param, request, processes, sipp, tmp_path)


@pytest.fixture
def http_router(request, processes, sipp, tmp_path):
    yield from _router_factory("http", request, processes, sipp, tmp_path)


@pytest.fixture
def kemi_router(request, processes, sipp, tmp_path):
    yield from _router_factory("kemi", request, processes, sipp, tmp_path)
