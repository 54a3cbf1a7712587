"""Work: where movies are corrected. ``workers`` runs :func:`correction.pipeline.correct_movie` in
worker processes with timeouts and crash isolation; ``jobs`` runs short background jobs (series
assembly) in a process of their own. Imports :mod:`daemon.events` and lower parts.
"""
