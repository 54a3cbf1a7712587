"""Feed: the live ZeroMQ feed for dashboards. ``messages`` (the schema and the message bodies),
``endpoint`` (where it is published, local unless allowed), ``publisher`` (the XPUB socket owned
by one thread), ``subscriber`` (a SUB socket for the views and tests), ``listener`` (the service
listener that feeds it, and the feed options), ``monitor`` (the terminal view). Imports
:mod:`daemon.events`, ``settings``, ``series`` (the per-tilt record schema) and ``state`` (the
late joiners' state, read from the state database at start-up).
"""
