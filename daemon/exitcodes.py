"""Named exit statuses of the motionwatch command (sysexits-style where one applies)."""

OK = 0
SOME_FAILED = 1  # some movies failed; the others were written
USAGE = 2  # bad command line (argparse's own status)
RESTART = 75  # EX_TEMPFAIL: drained after SIGHUP; the supervisor restarts it (re-reading config)
UNAVAILABLE = 69  # EX_UNAVAILABLE: a folder or file the configuration names is missing or out
# of reach at start-up (a share not mounted yet, or gone for a while): systemd restarts it
SOFTWARE = 70  # EX_SOFTWARE: the service crashed (an internal error); systemd restarts it
CONFIG = 78  # EX_CONFIG: configuration error; systemd must not restart on it
INTERRUPTED = 130  # stopped by Ctrl-C before finishing
TERMINATED = 143  # `correct` stopped by SIGTERM before finishing (128 + 15, as a shell reports it)
