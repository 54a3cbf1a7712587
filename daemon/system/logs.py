"""structlog set-up for the daemon: JSON lines for machines, console output for people.

:func:`configure_logging` renders JSON lines when the stream is not a terminal and structlog's
console renderer when it is. Under systemd (``$JOURNAL_STREAM`` set) each line starts with a
journald priority prefix ``<N>`` (3 = error, 4 = warning, 6 = info, 7 = debug) so that journald
files it at the right level. Nothing happens at import: the service calls
:func:`configure_logging` once. Movie events bind the movie's path (``log.bind(movie=...)``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "get_logger", "JOURNAL_PRIORITY", "running_under_journald",
           "capture_library_logs"]

JOURNAL_PRIORITY: Mapping[str, int] = {
    "critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7,
}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


def running_under_journald(environ: Mapping[str, str] | None = None,
                           streams: tuple[int, ...] = (1, 2)) -> bool:
    """True when stdout or stderr is the stream journald reads: systemd sets
    ``$JOURNAL_STREAM`` to its ``device:inode`` (``systemd.exec(5)``); a shell that inherited the
    variable (a terminal of a user service) writes elsewhere."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    for fd in streams:
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (int(device), int(inode)):
            return True
    return False


def _event_first(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Put ``timestamp``, ``level`` and ``event`` first so JSON lines read well."""
    head = {k: event_dict.pop(k) for k in ("timestamp", "level", "event") if k in event_dict}
    head.update(event_dict)
    return head


class _Render:
    """Final processor: render with the inner renderer, then prefix ``<N>`` for journald."""

    def __init__(self, inner: Any, journald: bool) -> None:
        self._inner = inner
        self._journald = journald

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> str:
        level = str(event_dict.get("level", method)).lower()
        text = self._inner(logger, method, event_dict)
        if self._journald:
            prefix = f"<{JOURNAL_PRIORITY.get(level, 6)}>"
            text = "\n".join(prefix + line for line in str(text).splitlines() or [""])
        return text


class _CurrentStdout:
    """Writes to whatever ``sys.stdout`` is at the time of writing.

    Binding the stream object at configuration time would keep a stream that may since have
    been replaced and closed (a test harness capturing output, a daemon redirecting stdout).
    """

    def write(self, text: str) -> int:
        try:
            return sys.stdout.write(text)
        except UnicodeEncodeError:  # a file name that is not UTF-8: shown with \udcXX escapes
            encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
            return sys.stdout.write(text.encode(encoding, "backslashreplace").decode(encoding))

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return hasattr(sys.stdout, "isatty") and sys.stdout.isatty()


def quiet_reader_logs() -> None:
    """Keep tifffile's own log lines off stderr in this process.

    tifffile logs a warning (raw, with no handler) each time a TIFF still being written or cut
    short is opened; the completeness check and the readers report those states themselves as
    one-line errors naming the file.
    """
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def quiet_correction_warnings() -> None:
    """Keep the correction library's own warnings off a worker's stderr: each is in the
    movie's record (``alignment.advice`` and ``note``, ``dose.counted``, ``replaced_pixels``,
    ``detector_pattern``), from which the daemon logs it as a JSON event (once per run and kind,
    or for each movie not aligned). Raw on stderr they reached the journal at info, one per
    movie, two lines each, not JSON. Other libraries' warnings still show."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"correction(\.|$)")


def configure_logging(*, level: str = "info", stream: TextIO | None = None,
                      json_lines: bool | None = None, journald: bool | None = None) -> None:
    """Configure structlog for this process.

    Parameters
    ----------
    level : {"debug", "info", "warning", "error"}
        Lowest level emitted.
    stream : text stream, optional
        Where lines go (stdout by default).
    json_lines : bool, optional
        Force JSON (True) or console (False); default: JSON unless ``stream`` is a terminal.
    journald : bool, optional
        Force the ``<N>`` prefix on or off; default: on when ``$JOURNAL_STREAM`` is set.
    """
    quiet_reader_logs()
    if stream is None:
        stream = _CurrentStdout()
    if json_lines is None:
        json_lines = not (hasattr(stream, "isatty") and stream.isatty())
    if journald is None:
        journald = running_under_journald()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_lines:
        processors += [structlog.processors.dict_tracebacks, _event_first,
                       _Render(structlog.processors.JSONRenderer(sort_keys=False), journald)]
    else:
        processors.append(_Render(structlog.dev.ConsoleRenderer(colors=False if journald else None),
                                  journald))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``bound`` context (e.g. ``movie=str(path)``)."""
    return structlog.get_logger("motionwatch").bind(**bound)


class _LibraryLogHandler(logging.Handler):
    """A library's stdlib log record as one event of the daemon's log (``library_log``, with
    the library's ``logger`` and ``message``, an exception as one ``error`` line): Dask's
    client logged a multi-line traceback, its own format, among the JSON lines when the
    scheduler went away (a log shipper takes each line for an event)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name,
                                      "message": " ".join(record.getMessage().split())}
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                fields["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())
            log = get_logger()
            method = {logging.DEBUG: log.debug, logging.INFO: log.info,
                      logging.WARNING: log.warning}.get(record.levelno, log.error)
            method("library_log", **fields)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def capture_library_logs(*names: str, level: int = logging.WARNING) -> None:
    """Send the stdlib loggers ``names`` (and their children) through the daemon's log at
    ``level`` and above, and nowhere else (their own handlers removed)."""
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers = [_LibraryLogHandler()]
        logger.propagate = False
        logger.setLevel(level)
