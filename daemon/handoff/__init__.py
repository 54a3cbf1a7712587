"""Hand-off: the files the next program reads without glue (RELION 5, AreTomo3, IMOD, Warp).

* :mod:`daemon.handoff.relion` (pure, no service): a movie's RELION motion STAR
  (``data_general`` + ``data_global_shift``), accumulated motion computed as RELION does, atomic
  STAR writing with teamtomo's ``starfile``, and ``corrected_micrographs.star`` for
  single-particle movies (:func:`~daemon.handoff.relion.write_single_particle_star`, also used
  by ``motionwatch correct``);
* :mod:`daemon.handoff.tomo` (pure): RELION 5's ``corrected_tilt_series.star`` and the per-series
  STAR of a tilt series' tilts in acquisition order;
* :mod:`daemon.handoff.warp` (pure): Warp's ``average/``, ``average/even``, ``average/odd``
  layout and a minimal per-movie ``.xml``;
* :mod:`daemon.handoff.listener`: :class:`~daemon.handoff.listener.RelionListener`, the
  :class:`~daemon.events.ServiceListener` that keeps all of them up to date as movies and series
  finish, with its options (:func:`~daemon.handoff.listener.add_handoff_arguments`,
  :func:`~daemon.handoff.listener.build_handoff_listener`).

Layering: this package sits after :mod:`daemon.feed` and before :mod:`daemon.engine`. It imports
:mod:`daemon.events`, :mod:`daemon.settings`, :mod:`daemon.state` (the ledger, read-only) and
:mod:`daemon.series` (``tilt_record``, the mdoc reader); it does NOT need :mod:`daemon.feed`.
AreTomo3 and IMOD inputs are written by the series assembly itself (:mod:`correction.stack`);
the listener only adds the AreTomo3 names derived from the series mdoc.
"""
