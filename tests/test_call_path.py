"""One call path: both modes run the same native blocks; a mode only says how it gets the decision.

The end-to-end suites (tests/e2e) run every call case in both modes; this
keeps the structure that makes them agree by construction: the SIP side of
a call (request_route, branch, failure and event routes, limits, records)
is defined in the shared files only, and the mode configs define nothing
but their way to the decision (route[DECIDE] and what it needs).
"""

from __future__ import annotations

import re
from pathlib import Path

KAMAILIO = Path(__file__).resolve().parents[1] / "kamailio"
SHARED = ("kamailio-base.cfg", "kamailio-call.cfg", "kamailio-cdr.cfg", "kamailio-health.cfg")
BLOCK = re.compile(r"^(request_route|(?:route|branch_route|failure_route|onreply_route|event_route)\[([^\]]+)\])\s*\{", re.M)
# What each mode may define: how it gets the decision, nothing of the call itself.
MODE_BLOCKS = {
    "kamailio-kemi.cfg": {"route[DECIDE]", "route[CANCEL_PENDING]"},
    "kamailio-http.cfg": {"route[DECIDE]", "route[CANCEL_PENDING]", "route[QUERY]", "route[QUERY_BY_MEMBER]",
                          "route[RELEASE_SLOT]", "route[RELAY_API_RESPONSE]"},
}


def blocks(name: str) -> list[str]:
    return [match.group(1) for match in BLOCK.finditer((KAMAILIO / name).read_text())]


def test_each_mode_imports_the_shared_call_path():
    for mode in MODE_BLOCKS:
        imports = re.findall(r'^import_file "([^"]+)"', (KAMAILIO / mode).read_text(), re.M)
        assert imports == list(SHARED), f"{mode} imports {imports}"


def test_a_mode_defines_only_its_way_to_the_decision():
    for mode, allowed in MODE_BLOCKS.items():
        extra = set(blocks(mode)) - allowed
        assert not extra, f"{mode} defines {sorted(extra)}: the SIP side of a call belongs in {', '.join(SHARED)}"


def test_every_route_is_defined_once_and_every_route_called_exists():
    shared = [block for name in SHARED for block in blocks(name)]
    assert len(shared) == len(set(shared)), "a block is defined twice in the shared files"
    for mode in MODE_BLOCKS:
        defined = set(shared) | set(blocks(mode))
        text = "".join((KAMAILIO / name).read_text() for name in (*SHARED, mode))
        called = {f"route[{name}]" for name in re.findall(r"\broute\(([A-Z_]+)\)", text)}
        armed = {f"branch_route[{n}]" for n in re.findall(r't_on_branch\("([A-Z_]+)"\)', text)}
        armed |= {f"failure_route[{n}]" for n in re.findall(r't_on_failure\("([A-Z_]+)"\)', text)}
        missing = (called | armed) - defined
        assert not missing, f"{mode}: called but defined nowhere: {sorted(missing)}"
        assert {"request_route", "route[DECIDED]", "branch_route[MANAGE_BRANCH]",
                "failure_route[MANAGE_FAILURE]"} <= set(shared)


def test_python_is_called_once_per_new_invite_in_kemi_mode():
    text = "".join((KAMAILIO / name).read_text() for name in (*SHARED, "kamailio-kemi.cfg"))
    assert re.findall(r'python_exec\("([a-z_]+)"', text) == ["ksr_route_decide"]
