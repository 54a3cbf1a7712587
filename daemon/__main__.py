"""``python -m daemon`` runs the motionwatch command line."""

import sys

from daemon.commands.cli import main

sys.exit(main())
