"""The routes tpx.exchange.hot_routes serves past the router are the router's own routes."""

from __future__ import annotations

from tpx.exchange.app import HOT_ROUTES, routes


def test_every_hot_route_is_also_a_route_with_the_same_handler():
    """So the OpenAPI document, 405 answers (Allow) and the latency metric's route label stay true for them."""
    served = {(method, route.path): route.endpoint for route in routes() for method in (route.methods or ())}
    for key, handler in HOT_ROUTES.items():
        assert served.get(key) is handler, key
