"""Where the tests' SerialEM mdocs are (imported by name: see ``tests/conftest.py``).

``DATA``: the permissively licensed mdocs copied into ``tests/data/mdoc`` (see PROVENANCE.md
there). ``CRYOCAT``: the GPL-3 cryoCAT mdocs, not copied (licence), read next to the checkout
when present; tests that need them are marked ``needs_cryocat`` and skipped otherwise.
"""

from pathlib import Path

import pytest

__all__ = ["DATA", "CRYOCAT", "needs_cryocat"]

DATA = Path(__file__).resolve().parents[1] / "data" / "mdoc"
CRYOCAT = Path(__file__).resolve().parents[3] / "shared" / "data" / "mdoc" / "cryocat"
needs_cryocat = pytest.mark.skipif(
    not CRYOCAT.is_dir(), reason=f"GPL-3 cryoCAT mdocs not found at {CRYOCAT} (not copied: licence)")
