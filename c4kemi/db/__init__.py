"""The PostgreSQL store: schema migrations, the routing document as rows,
API tokens, and the sources that follow changes (``LISTEN``/``NOTIFY``).

Everything here uses asyncpg. None of it is imported on the KEMI path:
Kamailio workers read the node's local copy of the table, a file that
``c4 db follow`` keeps up to date.
"""
