"""System: structured logs (``logs``), the systemd notify protocol (``sdnotify``) and the service
listener that speaks it (``notify_listener``: READY, STATUS, WATCHDOG while healthy, STOPPING)
and the pace of Python's garbage collector in the daemon process (``collector``).
Imports :mod:`daemon.events` and ``settings``.
"""
