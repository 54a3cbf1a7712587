"""Whether a reference file was rewritten in place since movies were corrected with it.

The settings name the gain, dark and defect files by path: a file written anew under the same
name (another gain reference saved over ``gain.mrc``) changes no setting, so the movies done
with the old content are not corrected again. Each motion record keeps the SHA-256 of the
references it was corrected with (``references``: :func:`correction.report.reference_record`);
at start the newest done movie's are compared with the files as they are now.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from correction.report import file_sha256

__all__ = ["rewritten_references"]

_KINDS = (("gain", "gain_path"), ("dark", "dark_path"), ("defects", "defects_path"))


def rewritten_references(rows: Sequence[Any], gain_params: Any) -> list[str]:
    """The configured reference files (``gain_params``: their paths) whose content is not the
    one the newest done movie (``rows``: the ledger's) was corrected with, each as ``"gain
    /path"``; empty when none is, or nothing says (no done movie, its record unreadable, a
    file out of reach)."""
    if gain_params is None:
        return []
    newest = max((r for r in rows if r.status == "done"), key=lambda r: r.updated, default=None)
    motion = None if newest is None else newest.outputs.get("motion")
    if not motion:
        return []
    try:
        record = json.loads(Path(motion).read_text())
        used = record.get("references") or {}
    except (OSError, ValueError, AttributeError):
        return []
    rewritten = []
    for kind, attribute in _KINDS:
        path = getattr(gain_params, attribute, None)
        noted = used.get(kind) if isinstance(used, dict) else None
        if path is None or not isinstance(noted, dict):
            continue
        if noted.get("path") != str(Path(path).absolute()) or not noted.get("sha256"):
            continue  # another file: a setting changed (parameters_changed says so)
        try:
            now = file_sha256(path)
        except OSError:
            continue
        if now != noted["sha256"]:
            rewritten.append(f"{kind} {Path(path).absolute()}")
    return rewritten
