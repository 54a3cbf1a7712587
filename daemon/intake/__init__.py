"""Intake: which files are movies, when they have stopped changing, and whether they are complete.

``discover`` (periodic rescans, the truth, plus watchdog events as wake-ups), ``settle`` (size and
mtime held across scans spanning the settle time), ``validate`` (format-level completeness, frame
mdoc), ``frame_gain`` (the gain reference a frame mdoc names). Imports only :mod:`daemon.events`
(and ``correction.io``'s completeness check and titles).
"""
