"""A minimal Gatan DM4 writer for tests, made from the published description of the format.

DM4 layout: a big-endian header (version 4 as uint32, root length as uint64, byte order 1 =
little-endian data as uint32), then the root tag group. A group is ``sorted`` and ``open``
bytes and a uint64 tag count, then its entries. An entry is a type byte (20 group, 21 data),
a uint16 name length and the name (empty for list items), a uint64 byte size of the rest, then
either a group, or ``%%%%``, a uint64 count of type descriptors, the descriptors (uint64
each) and the value in little-endian. Descriptors: 3 int32, 5 uint32, 6 float32, 7 float64;
an array is (20, element type, length). Images live in ``ImageList``: each item has
``ImageData`` with ``Calibrations.Dimension`` (Origin, Scale, Units per axis), ``Data``,
``DataType`` (2 float32, 6 uint8, 10 uint16, 23 RGB), ``Dimensions`` (nx, ny) and
``PixelDepth``. Gatan software puts a small RGB thumbnail first.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

__all__ = ["write_dm4"]

_IMAGE_TYPES = {np.dtype("float32"): 2, np.dtype("uint8"): 6, np.dtype("uint16"): 10,
                np.dtype("int16"): 1, np.dtype("uint32"): 23}
_TAG_ARRAY_TYPES = {np.dtype("float32"): 6, np.dtype("uint8"): 10, np.dtype("uint16"): 4,
                    np.dtype("int16"): 2, np.dtype("uint32"): 5}


def _data(infos: list[int], payload: bytes) -> tuple[int, bytes]:
    body = b"%%%%" + struct.pack(">Q", len(infos)) + b"".join(struct.pack(">Q", i)
                                                             for i in infos) + payload
    return 21, body


def _long(value: int):
    return _data([3], struct.pack("<i", value))


def _float(value: float):
    return _data([6], struct.pack("<f", value))


def _string(text: str):
    return _data([20, 4, len(text)], np.array([ord(c) for c in text], "<u2").tobytes())


def _array(values: np.ndarray):
    values = np.ascontiguousarray(values)
    return _data([20, _TAG_ARRAY_TYPES[values.dtype], values.size],
                 values.astype(values.dtype.newbyteorder("<")).tobytes())


def _group(entries: list[tuple[str, tuple[int, bytes]]]):
    body = bytes([0, 1]) + struct.pack(">Q", len(entries))
    for name, (kind, content) in entries:
        raw_name = name.encode("ascii")
        body += bytes([kind]) + struct.pack(">H", len(raw_name)) + raw_name
        body += struct.pack(">Q", len(content)) + content
    return 20, body


def _image(data: np.ndarray, scale: float, unit: str):
    ny, nx = data.shape
    dim = _group([("Origin", _float(0.0)), ("Scale", _float(scale)), ("Units", _string(unit))])
    image_data = _group([
        ("Calibrations", _group([("Dimension", _group([("", dim), ("", dim)]))])),
        ("Data", _array(data.ravel())),
        ("DataType", _long(_IMAGE_TYPES[data.dtype])),
        ("Dimensions", _group([("", _long(nx)), ("", _long(ny))])),
        ("PixelDepth", _long(data.dtype.itemsize)),
    ])
    return _group([("ImageData", image_data), ("ImageTags", _group([]))])


def write_dm4(path: str | Path, image: np.ndarray, *, scale: float = 1.0, unit: str = "",
              thumbnail: bool = True) -> Path:
    """Write a 2-D image as a DM4 file (with a 2x2 RGB thumbnail first, as GMS does).

    Parameters
    ----------
    path : str or Path
    image : ndarray, shape (ny, nx), float32, uint8, uint16 or int16
    scale, unit : float, str
        Pixel calibration stored for both axes.
    thumbnail : bool
        Put a small RGB thumbnail before the image.
    """
    path = Path(path)
    items = []
    if thumbnail:
        items.append(("", _image(np.zeros((2, 2), np.uint32), 1.0, "")))
    items.append(("", _image(np.asarray(image), scale, unit)))
    _, root = _group([("ImageList", _group(items))])
    header = struct.pack(">IQI", 4, len(root) + 8, 1)
    path.write_bytes(header + root + b"\x00" * 8)
    return path
