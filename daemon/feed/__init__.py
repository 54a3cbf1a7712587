"""Feed: the live ZeroMQ feed for dashboards. ``publisher`` (XPUB socket owned by one thread,
message schema, :class:`Subscriber`), ``listener`` (the service listener that feeds it, and the feed
options), ``monitor`` (the terminal view). Imports :mod:`daemon.events`, ``settings`` and ``series``
(the per-tilt record schema).
"""
