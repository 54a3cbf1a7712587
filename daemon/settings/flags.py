"""Messages in the terms a user typed: the flag, not the field of a parameter class."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["in_flag_terms"]


def in_flag_terms(message: str, flag_of_field: Mapping[str, str]) -> str:
    """``message`` with its first word, when it is a field named in ``flag_of_field``, replaced
    by the flag that sets it (``dose_per_frame_e_A2 must be > 0`` -> ``--dose-per-frame must
    be > 0``); other messages unchanged. The TOML keys of a config file are the flags' long
    names, so the flag names the key too."""
    field, _, rest = message.partition(" ")
    flag = flag_of_field.get(field)
    return f"{flag} {rest}" if flag is not None and rest else message
