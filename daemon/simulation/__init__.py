"""Simulation: acquisitions written the way detectors and SerialEM write them (movies frame by frame,
a growing series mdoc), for the demo, the tests and the benchmarks. Imports :mod:`daemon.events`,
``series`` and :mod:`correction` (the synthetic renderers).
"""
