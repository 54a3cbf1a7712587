"""``python -m daemon`` runs the motionwatch command line."""

import sys

from .cli import main

sys.exit(main())
