"""What AreTomo3 requires of an mdoc it is given (``DataUtil/CReadMdoc.cpp``, ``DoIt``).

Imported by name (``from aretomo3_rules import ...``): ``tests/conftest.py`` puts this folder on
``sys.path``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MDOC_KEYS", "mdoc_key_counts"]

#: Keys AreTomo3 needs once per tilt: it skips an mdoc ("faulty mdoc file found, skip it!")
#: unless each is found in as many lines as ``TiltAngle`` is.
MDOC_KEYS = ("TiltAngle", "ExposureDose", "SubFramePath", "ExposureTime", "DateTime")


def mdoc_key_counts(path: Path) -> dict[str, int]:
    """How many lines of the mdoc hold each of :data:`MDOC_KEYS` anywhere (as ``strstr`` finds
    it)."""
    lines = Path(path).read_text().splitlines()
    return {key: sum(key in line for line in lines) for key in MDOC_KEYS}
