"""Tilt series: SerialEM mdocs read as they grow (``mdoc``, ``mdoc_watch``), the pure resolution of
series, acquisition order and dose (``resolution``), when a movie is redone and a series complete
or re-opened (``lifecycle``), the per-tilt record schema (``tilt_record``), the service adapter
(``resolver``: the :class:`~daemon.events.MetadataResolver`, given a narrow
:class:`~daemon.events.ResolverContext`), stack assembly jobs (``assembly``) and the options
(``options``). Imports :mod:`daemon.events`, ``settings`` and lower parts; never ``engine``.
"""
