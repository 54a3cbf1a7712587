"""motionwatch's service side: the watch daemon and the command line. It never does pixel math; it
calls :mod:`correction` for that.

A movie's path through the parts, in the order the data flows (each part may import only
:mod:`daemon.events` - the contract - and the parts before it; ``tests/daemon/test_house.py``
checks this on every import, also those inside functions):

``intake`` (discover, settle, validate) -> ``settings`` (the configuration) -> ``system`` (logs,
systemd notify) -> ``state`` (the SQLite ledger) -> ``series`` (mdoc, tilt series, dose ledger) ->
``work`` (worker processes) -> ``feed`` (ZeroMQ publisher, monitor) -> ``handoff`` (files for
RELION, AreTomo3, IMOD, Warp) -> ``dashboard`` (web page) -> ``engine`` (the service: wires the
parts, runs the loop) -> ``simulation`` (simulated acquisitions) -> ``commands`` (the CLI).
"""

__version__ = "0.2.0"
