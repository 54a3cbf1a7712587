"""Commands: the ``motionwatch`` command line. ``cli`` dispatches to one module per subcommand
(``correct``, ``watch``, ``status``, ``demo``, ...), each with ``add_arguments(parser)`` and
``run(args) -> int``. The top of the house: may import every part; nothing imports it.
"""
