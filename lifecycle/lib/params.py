"""Ids and numbers sent by clients, parsed in one place with explicit bounds.

Python's own parsers take more than a client should send: "²".isdigit() is True yet int("²")
fails, int("١٢") is 12, float("1e400") is inf and int(float("1e400")) raises OverflowError.
These take ASCII digits only, refuse NaN, infinities and numbers outside their bounds, and
raise BadParameter (a ValueError) with a message a person can act on. Django-free: the run
configuration uses them as well as the views.
"""
import math
import re

MAX_ID = 2**63 - 1  # PostgreSQL's bigint, the widest primary key
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
MAX_IDS = 100  # ids in one comma-separated list, unless the caller says fewer

_DIGITS = re.compile(r"[0-9]{1,19}")
_INT = re.compile(r"[+-]?[0-9]{1,40}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]{1,400}(?:\.[0-9]{0,400})?|\.[0-9]{1,400})(?:[eE][+-]?[0-9]{1,5})?")


class BadParameter(ValueError):
    """A value a client sent cannot be used; the message says what would be."""


def _shown(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _message(name, rule, value):
    return f"{name + ' ' if name else ''}{rule} (got {_shown(value)})"


def parse_id(value, name=None):
    """A primary key (or any positive count): ASCII digits, 1 to 2**63-1."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise BadParameter(_message(name, "must be a positive whole number", value))
    if not 1 <= number <= MAX_ID:
        raise BadParameter(_message(name, f"must be between 1 and {MAX_ID}", value))
    return number


def parse_optional_id(value, name=None):
    """parse_id, with None or "" meaning "not given"."""
    return None if value is None or value == "" else parse_id(value, name)


def parse_ids(value, name=None, max_count=MAX_IDS):
    """Distinct ids in their order from "1,2,3" or from a list of such strings (?x=1&x=2)."""
    texts = [value] if isinstance(value, str) else list(value)
    parts = [part.strip() for text in texts for part in str(text).split(",") if part.strip()]
    prefix = f"{name}: " if name else ""
    if len(parts) > max_count:
        raise BadParameter(f"{prefix}at most {max_count} ids (got {len(parts)})")
    ids = []
    for part in parts:
        try:
            ids.append(parse_id(part))
        except BadParameter:
            raise BadParameter(f"{prefix}{_shown(part)} is not an id (a whole number from 1 to {MAX_ID})") from None
    return list(dict.fromkeys(ids))


def parse_int(value, name=None, low=INT_MIN, high=INT_MAX):
    """A whole number from an int, an integral float or ASCII text ("12", "-3", "3.0", "1e3")."""
    number = _whole(value, name)
    if not low <= number <= high:
        raise BadParameter(_message(name, f"must be between {low} and {high}", value))
    return number


def _whole(value, name):
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    if isinstance(value, (float, str)) and not isinstance(value, bool):
        number = _finite(value, name, "must be a whole number")
        if number.is_integer():
            return int(number)
    raise BadParameter(_message(name, "must be a whole number", value))


def parse_float(value, name=None, low=None, high=None):
    """A finite number from an int, a float or ASCII text; never NaN or an infinity."""
    number = _finite(value, name, "must be a number")
    if (low is not None and number < low) or (high is not None and number > high):
        raise BadParameter(_message(name, f"must be between {low} and {high}", value))
    return number


def _finite(value, name, rule):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadParameter(_message(name, rule, value))
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("nan", "+nan", "-nan"):
            raise BadParameter(_message(name, f"{rule}, not NaN", value))
        if not _FLOAT.fullmatch(text):
            raise BadParameter(_message(name, rule, value))
        value = text
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        raise BadParameter(_message(name, f"{rule} of a sensible size", value)) from None
    if math.isnan(number):
        raise BadParameter(_message(name, f"{rule}, not NaN", value))
    if math.isinf(number):
        raise BadParameter(_message(name, f"{rule} of a sensible size, not infinite", value))
    return number
