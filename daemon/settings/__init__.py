"""Settings: the daemon's configuration (``config``: a frozen Config from TOML, then flags, every
problem reported at once), the correction options shared with ``motionwatch correct``
(``correction_options``) and the microscope optics recorded with each movie (``optics``: Cs and
amplitude contrast). Imports :mod:`daemon.events` and ``intake`` (the default file patterns).
"""
