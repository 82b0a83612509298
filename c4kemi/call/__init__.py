"""What runs with calls, inside or beside Kamailio.

- kemi.py: the KEMI entry point app_python3 loads (through kamailio/c4_kemi.py);
- channels.py: live channel counts per tenant and trunk, read from Kamailio over its RPC;
- cdr.py: a finished call's event from Kamailio made into one call record;
- cdr_collector.py: ``c4 cdr``, collecting those events and writing the records.

Nothing is imported or re-exported here: Kamailio's workers import
c4kemi.call.kemi, which must stay free of aiohttp, asyncpg and c4http.
"""
