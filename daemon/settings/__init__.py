"""Settings: the daemon's configuration (``config``: a frozen Config from TOML, then flags, every
problem reported at once) and the correction options shared with ``motionwatch correct``
(``correction_options``). Imports :mod:`daemon.events` and ``intake`` (the default file patterns).
"""
