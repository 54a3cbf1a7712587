"""motionwatch's service side: discovery, completeness, state, work, publishing and the CLI.

The daemon never does pixel math; it calls :mod:`correction` for that.
"""

__version__ = "0.1.0"
