"""Serving: engine token deltas become each protocol's responses and events.

``core`` holds what every protocol shares (engine requests, running the ``n``
choices, usage); one module per protocol frames the result. Nothing here knows
HTTP: routes in ``api`` parse requests and wrap what these return.
"""
