"""Dashboard: the live web page of a session. ``state`` (feed messages folded into what the page
shows), ``server`` (stdlib HTTP server: the page and its script and style from ``static/``,
server-sent events, pictures from the output folder only). Imports ``feed`` (the
:class:`~daemon.feed.subscriber.Subscriber` and :mod:`daemon.feed.messages`) and, from the library,
:mod:`correction.quicklook` (picture names).
"""
