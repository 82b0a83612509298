"""c4http: the routing decision as an aiohttp service for Kamailio's http_async_client."""
