"""Work: where movies are corrected. ``workers`` runs :func:`correction.pipeline.prepare_movie` in
worker processes with timeouts and crash isolation (each movie's outputs written while the next
is corrected); ``executor`` is the interface the engine uses (local worker processes by
default, or ``dask_executor``: a Dask distributed cluster, also through dask-jobqueue on
SLURM/PBS/SGE/LSF); ``jobs`` runs short background jobs (series assembly) in a process of their
own. Imports :mod:`daemon.events` and lower parts.
"""
