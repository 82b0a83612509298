"""c4: class-4 SIP routing for Kamailio. The decision core and its adapters.

Importing this package stays light (no aiohttp, no asyncpg): Kamailio's
embedded interpreter imports it in every worker.
"""

from .core.compiled import RoutingTable
from .core.decision import RequestError, decide, encode, route_json
from .core.document import DocumentError, load_document
from .core.table import compile_table, load_table

__all__ = [
    "DocumentError",
    "RequestError",
    "RoutingTable",
    "compile_table",
    "decide",
    "encode",
    "load_document",
    "load_table",
    "route_json",
]
