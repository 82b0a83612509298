"""c4: class-4 SIP routing for Kamailio. The decision core and its adapters.

Importing this package stays light (no aiohttp, no asyncpg): Kamailio's
embedded interpreter imports it in every worker.
"""

from .core.compiled import RoutingTable
from .core.decision import RequestError, decide, encode, route_json
from .core.document import DocumentError, load_document
from .core.table import compile_table, load_table

# The release, as pyproject.toml says it (tests/test_deploy.py checks they agree); `c4 --version`.
__version__ = "0.1.0"

__all__ = [
    "__version__",
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
