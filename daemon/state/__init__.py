"""State: the SQLite ledger of every movie, mdoc and series (``ledger``, the only module that writes
SQL) and the (de)serialisers of what a movie row stores (``codec``). Imports only
:mod:`daemon.events` (and ``correction.params`` for the dose it stores).
"""
