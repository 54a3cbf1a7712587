"""Engine: the watch service itself. ``service`` (lifecycle and main loop), ``admission`` (scan ->
settle -> validate -> metadata -> ledger), ``dispatch`` (ledger -> workers -> ledger -> events),
``outputs`` (adoption of outputs on disk, temporaries), ``signals`` (stop signals, wake-up pipe).
Imports the contract and every part below it; nothing imports the engine but ``simulation`` and
``commands``.
"""
