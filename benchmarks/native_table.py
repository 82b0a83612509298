"""A c4 routing document as Kamailio's own modules read it: the tables of the native baseline.

    from native_table import write_tables
    tables = write_tables(document, directory)   # db_text files in DIRECTORY

benchmarks/kamailio-native.cfg routes with ``permissions`` (who sent the
call), ``dialplan`` (numbers to and from E.164), ``htable`` (DIDs) and
``drouting`` (routes by longest prefix, and the gateways to try in order).
This module writes their db_text tables from the same document the c4
setups load, so both route the same table. What each table holds:

- ``address`` (permissions): one row per IPBX or trunk source. The tag is
  the sender: ``kind|name|tenant|route group|to_e164 dialplan id`` (kind
  ``i`` for an IPBX, ``t`` for a trunk; tenant empty for a trunk of a
  shared carrier, route group 0 for a trunk). A host (/32, /128) goes to
  permissions' hash table, looked up first; a network's group is 129 minus
  its prefix length, so permissions' subnet scan (in group order) finds
  the most specific network first, as c4's rule 1 does.
- ``dialplan``: per normalization profile, one dialplan id reading numbers
  into E.164 (``2 i + 2``: the profile's ``to_e164`` rules, then ``+``,
  ``intl_prefix``, ``ld_prefix``, as docs/routing.md rule 2 orders them)
  and one writing them out (``2 i + 3``: ``from_e164``, then ``always_plus``);
  ids 0 and 1 are for a peer without a profile.
- ``c4did`` (htable): DID prefix -> ``tenant|drouting group of its IPBX``.
  The config probes it once per prefix length, longest first, from the
  longest DID to the shortest (``did_lengths``), skipping DIDs outside the
  sender's scope: c4's rule 3 and on-net lookup, one hash probe per length
  as c4's own index does. (drouting's prefix tree took about 2 KB of
  shared memory per 12-digit DID here, 200 MiB for 100k: see the config.)
- ``dr_gateways`` (drouting): one gateway per IPBX target and per trunk;
  attrs ``kind|name|tenant|from_e164 dialplan id``.
- ``dr_rules`` (drouting): per IPBX, a default (no prefix) rule in the
  IPBX's own group (``T + 1 + j``, T tenants) with its targets, one
  drouting group each so they keep their order; per route, a rule in its
  tenant's route group (``1 + i``), its trunks by priority, a priority's
  trunks in one drouting group (``;``-separated: the config's
  ``sort_order`` 1 shuffles within a group), weight-0 trunks one by one
  after the weighted ones.

Not carried over (the config's header says what that changes): weights
(drouting shuffles a priority evenly), a DID's ``match``, per-destination
timers, branch flags, trunk credentials, channel and call-rate limits.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

NO_PROFILE_TO, NO_PROFILE_FROM = 0, 1  # dialplan ids of a peer without a normalization profile
TABLE_VERSIONS = {"address": 6, "dialplan": 2, "dr_gateways": 3, "dr_rules": 3, "dr_groups": 2, "dr_gw_lists": 1}
HEADERS = {
    "version": "id(int,auto) table_name(string) table_version(int)",
    "address": "id(int,auto) grp(int) ip_addr(string) mask(int) port(int) tag(string,null)",
    "dialplan": "id(int,auto) dpid(int) pr(int) match_op(int) match_exp(string) match_len(int) "
                "subst_exp(string) repl_exp(string) attrs(string)",
    "dr_gateways": "gwid(int,auto) type(int) address(string) strip(int) pri_prefix(string,null) attrs(string,null) "
                   "description(string)",
    "dr_rules": "ruleid(int,auto) groupid(string) prefix(string) timerec(string) priority(int) routeid(string) "
                "gwlist(string) description(string)",
    "dr_groups": "id(int,auto) username(string) domain(string) groupid(int) description(string)",
    "dr_gw_lists": "id(int,auto) gwlist(string) description(string)",
    "c4did": "key_name(string) key_value(string)",  # the config's htable names these two columns
}
GW_IPBX, GW_TRUNK = 1, 2  # drouting gateway types
DIALPLAN_REGEX = 1  # dialplan match_op: a regular expression
TEMPLATE_REF = re.compile(r"\\(?:g<([^>]+)>|(\d{1,2}))")


@dataclass(frozen=True)
class NativeTables:
    """What the config needs to know about the tables it loads (its -A defines)."""

    directory: Path
    rows: dict[str, int]  # table name -> rows written
    subnets: int  # address rows that are networks (permissions' max_subnets must hold them)
    did_lengths: tuple[int, int]  # shortest and longest DID prefix (1, 0 without DIDs)

    @property
    def db_url(self) -> str:
        return f"text://{self.directory}"

    @property
    def max_rows(self) -> int:
        """db_text's max_result_rows: the longest table, plus one (db_text refuses a table that reaches it)."""
        return max(self.rows.values()) + 1


def route_group(tenant_index: int) -> int:
    """drouting group of a tenant's routes."""
    return 1 + tenant_index


def ipbx_group(tenants: int, ipbx_index: int) -> int:
    """drouting group of one IPBX: its targets, for the DIDs that reach it."""
    return tenants + 1 + ipbx_index


def dbtext(value) -> str:
    """One db_text field: backslash, the ':' separator and line ends escaped."""
    text = str(value)
    return (text.replace("\\", "\\\\").replace(":", "\\:").replace("\n", "\\n").replace("\r", "\\r")
            .replace("\t", "\\t"))


def clean(name: str | None) -> str:
    """A name inside a '|'-separated tag."""
    return (name or "").replace("|", "/")


def write_table(directory: Path, name: str, rows: list[tuple]) -> int:
    lines = [HEADERS[name]] + [":".join(dbtext(v) for v in row) for row in rows]
    (directory / name).write_text("\n".join(lines) + "\n")
    return len(rows)


def dialplan_rule(match: str, replace: str, plus: bool = False) -> tuple[str, str]:
    """A c4 rule ({"match", "replace"}: re.match, then re.sub count=1) as dialplan's (subst_exp, repl_exp).

    dialplan's result is the replacement alone, where re.sub keeps what
    follows the match: unless the pattern is anchored at the end, the rest
    is captured in one more group and put back. PLUS: '+' in front (always_plus).
    """
    compiled = re.compile(match)

    def reference(m: re.Match) -> str:
        name, number = m.groups()
        if number is not None:
            return "\\" + number
        index = int(name) if name.isdigit() else compiled.groupindex[name]
        return f"\\{index}"

    repl = ("+" if plus else "") + TEMPLATE_REF.sub(reference, replace)
    body = match[1:] if match.startswith("^") else match
    if match.endswith("$") and not match.endswith("\\$") and "|" not in match:
        subst = "^" + body  # nothing follows the match
    else:
        subst = f"^(?:{body})(.*)$"
        repl += f"\\{compiled.groups + 1}"
    if compiled.groups + 1 > 9:
        raise ValueError(f"rule {match!r}: dialplan takes back-references \\1 to \\9 only")
    return subst, repl


def to_e164_rules(profile: dict | None) -> list[tuple[str, str]]:
    """docs/routing.md rule 2, in order: the profile's rules, '+', intl_prefix, ld_prefix, as it is."""
    rules = [dialplan_rule(r["match"], r["replace"]) for r in (profile or {}).get("to_e164", [])]
    rules.append(("^\\+(.*)$", "\\1"))
    if profile and profile.get("intl_prefix"):
        rules.append((f"^{profile['intl_prefix']}(.*)$", "\\1"))
    if profile and profile.get("ld_prefix"):
        rules.append((f"^{profile['ld_prefix']}(.*)$", profile.get("country_code", "") + "\\1"))
    rules.append(("^(.*)$", "\\1"))
    return rules


def from_e164_rules(profile: dict | None) -> list[tuple[str, str]]:
    """docs/routing.md rule 5: the first from_e164 rule that matches, else as it is; '+' with always_plus."""
    plus = bool(profile and profile.get("always_plus"))
    rules = [dialplan_rule(r["match"], r["replace"], plus) for r in (profile or {}).get("from_e164", [])]
    rules.append(("^(.*)$", ("+" if plus else "") + "\\1"))
    return rules


def source_rows(sources: list[str], tag: str) -> list[tuple[int, str, int, str]]:
    """(grp, ip, mask, tag) per source: hosts in group 1, networks by specificity (see the module's doc)."""
    rows = []
    for source in sources:
        network = ipaddress.ip_network(source, strict=False)
        parts = [network] if network.prefixlen else list(network.subnets(prefixlen_diff=1))  # mask 0 means a host
        for net in parts:
            host = net.prefixlen == net.max_prefixlen
            rows.append((1 if host else 129 - net.prefixlen, str(net.network_address), net.prefixlen, tag))
    return rows


def target_address(uri: str) -> str:
    """A c4 target (sip:host[:port][;params]) as a drouting gateway address: what follows the scheme."""
    return uri.split(":", 1)[1]


def write_tables(document: dict, directory: Path) -> NativeTables:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tenants = document.get("tenants", [])
    tenant_index = {t["name"]: i for i, t in enumerate(tenants)}
    profiles = {p["name"]: i for i, p in enumerate(document.get("normalization_profiles", []))}

    def dpids(profile: str | None) -> tuple[int, int]:
        if profile is None:
            return NO_PROFILE_TO, NO_PROFILE_FROM
        return 2 * profiles[profile] + 2, 2 * profiles[profile] + 3

    dialplan = []
    for profile in [None, *document.get("normalization_profiles", [])]:
        to_id, from_id = dpids(profile and profile["name"])
        for dpid, rules in ((to_id, to_e164_rules(profile)), (from_id, from_e164_rules(profile))):
            for priority, (subst, repl) in enumerate(rules):
                dialplan.append((len(dialplan) + 1, dpid, priority, DIALPLAN_REGEX, subst, 0, subst, repl, ""))

    gateways, address, rules, ipbx_groups = [], [], [], {}
    for j, ipbx in enumerate(document.get("ipbxs", [])):
        tenant, (to_id, from_id) = ipbx["tenant"], dpids(ipbx.get("normalization"))
        gwids = []
        for target in ipbx["targets"]:
            gwids.append(len(gateways) + 1)
            gateways.append((gwids[-1], GW_IPBX, target_address(target), 0, "",
                             f"i|{clean(ipbx['name'])}|{clean(tenant)}|{from_id}", ipbx["name"]))
        ipbx_groups[ipbx["name"]] = ipbx_group(len(tenants), j)
        # No prefix: the rule every number matches; one drouting group per target keeps their order.
        rules.append((len(rules) + 1, str(ipbx_groups[ipbx["name"]]), "", "", 0, "0", ";".join(map(str, gwids)), ""))
        tag = f"i|{clean(ipbx['name'])}|{clean(tenant)}|{route_group(tenant_index[tenant])}|{to_id}"
        address += source_rows(ipbx.get("sources", []), tag)
    carrier_tenant = {c["name"]: c.get("tenant") for c in document.get("carriers", [])}
    trunk_gw = {}
    for trunk in document.get("trunks", []):
        tenant, (to_id, from_id) = carrier_tenant.get(trunk["carrier"]), dpids(trunk.get("normalization"))
        trunk_gw[trunk["name"]] = len(gateways) + 1
        gateways.append((trunk_gw[trunk["name"]], GW_TRUNK, target_address(trunk["target"]), 0, "",
                         f"t|{clean(trunk['name'])}|{clean(tenant)}|{from_id}", trunk["name"]))
        address += source_rows(trunk.get("sources", []), f"t|{clean(trunk['name'])}|{clean(tenant)}|0|{to_id}")
    for route in document.get("routes", []):
        rules.append((len(rules) + 1, str(route_group(tenant_index[route["tenant"]])), route["prefix"], "", 0, "0",
                      route_gwlist(route["trunks"], trunk_gw), ""))
    dids = [(did["prefix"], f"{clean(did['tenant'])}|{ipbx_groups[did['ipbx']]}") for did in document.get("dids", [])]
    lengths = [len(prefix) for prefix, _ in dids]

    rows = {
        "address": write_table(directory, "address",
                               [(i + 1, grp, ip, mask, 0, tag) for i, (grp, ip, mask, tag) in enumerate(address)]),
        "dialplan": write_table(directory, "dialplan", dialplan),
        "c4did": write_table(directory, "c4did", dids),
        "dr_gateways": write_table(directory, "dr_gateways", gateways),
        "dr_rules": write_table(directory, "dr_rules", rules),
        "dr_groups": write_table(directory, "dr_groups", []),
        "dr_gw_lists": write_table(directory, "dr_gw_lists", []),
    }
    write_table(directory, "version", [(0, name, version) for name, version in TABLE_VERSIONS.items()])
    return NativeTables(directory, rows, sum(1 for grp, *_ in address if grp != 1),
                        (min(lengths), max(lengths)) if lengths else (1, 0))


def route_gwlist(entries: list, trunk_gw: dict[str, int]) -> str:
    """A route's trunks as a drouting gateway list: priorities in order, ';' between drouting groups."""
    trunks = []
    for position, entry in enumerate(entries):
        entry = {"trunk": entry} if isinstance(entry, str) else entry
        trunks.append((entry.get("priority", position), position, entry["trunk"], entry.get("weight", 1)))
    groups = []
    for priority in sorted({t[0] for t in trunks}):
        level = sorted(t for t in trunks if t[0] == priority)
        weighted = [str(trunk_gw[name]) for _, _, name, weight in level if weight > 0]
        if weighted:
            groups.append(",".join(weighted))
        groups += [str(trunk_gw[name]) for _, _, name, weight in level if weight == 0]
    return ";".join(groups)
