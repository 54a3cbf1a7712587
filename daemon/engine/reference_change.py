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



#: the newest corrected movies whose records are read at start (movies corrected side by side
#: finish out of order: the newest may hold the content read before a rewrite)
NEWEST_RECORDS = 8


def rewritten_references(rows: Sequence[Any], gain_params: Any) -> list[str]:
    """The configured reference files (``gain_params``: their paths) whose content is not the
    one any of the :data:`NEWEST_RECORDS` newest done movies (``rows``: the ledger's) was
    corrected with, each as ``"gain /path"``; empty when none is, or nothing says (no done
    movie, their records unreadable, a file out of reach)."""
    if gain_params is None:
        return []
    done = sorted((r for r in rows if r.status == "done"), key=lambda r: r.updated,
                  reverse=True)[:NEWEST_RECORDS]
    used = [_references(r.outputs.get("motion")) for r in done]
    rewritten = []
    for kind, path in gain_params.files():
        absolute = str(Path(path).absolute())
        noted = {one.get("sha256") for refs in used if isinstance(one := refs.get(kind), dict)
                 and one.get("path") == absolute and one.get("sha256")}
        if not noted:  # another file: a setting changed (parameters_changed says so)
            continue
        try:
            now = file_sha256(path)
        except OSError:
            continue
        if now not in noted:
            rewritten.append(f"{kind} {absolute}")
    return rewritten


def _references(motion: Any) -> dict[str, Any]:
    """The ``references`` of a motion record; empty when it has none or cannot be read."""
    if not motion:
        return {}
    try:
        used = json.loads(Path(motion).read_text()).get("references") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return used if isinstance(used, dict) else {}
