"""AMP commands shared by the Twisted peers of pb's interop tests, and the canonical values.

The Rust side (tests/amp_interop.rs) declares the same commands with pb's derive and the same
values; each side checks what it decoded against its own copy.
"""

import datetime
import decimal
import math

from twisted.protocols import amp


class Sum(amp.Command):
    arguments = [(b"a", amp.Integer()), (b"b", amp.Integer())]
    response = [(b"total", amp.Integer())]


class Divide(amp.Command):
    arguments = [(b"numerator", amp.Integer()), (b"denominator", amp.Integer())]
    response = [(b"result", amp.Float())]
    errors = {ZeroDivisionError: b"ZERO_DIVISION"}


ALL_TYPES = [
    (b"i", amp.Integer()),
    (b"big", amp.Integer()),
    (b"s", amp.String()),
    (b"u", amp.Unicode()),
    (b"yes", amp.Boolean()),
    (b"no", amp.Boolean()),
    (b"flt", amp.Float()),  # not `f`: Twisted responders break on it
    (b"fs", amp.ListOf(amp.Float())),
    (b"d", amp.Decimal()),
    (b"ds", amp.ListOf(amp.Decimal())),
    (b"dt", amp.DateTime()),
    (b"dts", amp.ListOf(amp.DateTime())),
    (b"li", amp.ListOf(amp.Integer())),
    (b"lu", amp.ListOf(amp.Unicode())),
    (b"ls", amp.ListOf(amp.String())),
    (b"rows", amp.AmpList([(b"x", amp.Integer()), (b"y", amp.Unicode())])),
    (b"opt_absent", amp.Integer(optional=True)),
    (b"opt_present", amp.Unicode(optional=True)),
    (b"dash-name", amp.Integer()),
]


class AllTypes(amp.Command):
    """Echoes every argument; `mismatches` lists those the responder decoded differently."""

    arguments = ALL_TYPES
    response = ALL_TYPES + [(b"mismatches", amp.Unicode())]


class Notify(amp.Command):
    arguments = [(b"msg", amp.Unicode())]
    requiresAnswer = False


class GetNotified(amp.Command):
    response = [(b"msgs", amp.ListOf(amp.Unicode()))]


class Hold(amp.Command):
    """Held until `total` Holds have arrived, then all are answered in reverse order."""

    arguments = [(b"n", amp.Integer()), (b"total", amp.Integer())]
    response = [(b"n", amp.Integer()), (b"order", amp.Integer())]


class Echo(amp.Command):
    arguments = [(b"s", amp.String())]
    response = [(b"s", amp.String())]


class FatalThing(Exception):
    pass


class Fatal(amp.Command):
    fatalErrors = {FatalThing: b"FATAL_THING"}


class Broken(amp.Command):
    """The responder fails in a way it does not declare: UNKNOWN, then the connection closes."""


class CallMeBack(amp.Command):
    """The responder calls `Sum(a, b)` back on the caller and returns its total."""

    arguments = [(b"a", amp.Integer()), (b"b", amp.Integer())]
    response = [(b"total", amp.Integer())]


class FloatReprs(amp.Command):
    """Python's `repr` of each float it decoded, to check pb writes floats exactly as Python does."""

    arguments = [(b"fs", amp.ListOf(amp.Float()))]
    response = [(b"reprs", amp.ListOf(amp.Unicode()))]


class DecimalStrs(amp.Command):
    """`str(Decimal(text))` of each text, to check pb normalizes decimals exactly as Python does."""

    arguments = [(b"texts", amp.ListOf(amp.Unicode()))]
    response = [(b"strs", amp.ListOf(amp.Unicode()))]


class EchoDecimal(amp.Command):
    arguments = [(b"d", amp.Decimal())]
    response = [(b"d", amp.Decimal())]


class DecimalsAccepted(amp.Command):
    """Whether `Decimal(text)` accepts each text, to check pb parses exactly what Python does."""

    arguments = [(b"texts", amp.ListOf(amp.Unicode()))]
    response = [(b"accepted", amp.ListOf(amp.Boolean()))]


def _tz(minutes):
    return datetime.timezone(datetime.timedelta(minutes=minutes))


CANONICAL = {
    "i": -1234567890123,
    "big": 2**200 + 1,
    "s": bytes(range(256)),
    "u": "h\u00e9llo \u2603 \U0001f600",
    "yes": True,
    "no": False,
    "flt": 0.1,
    "fs": [1e16, 1e-07, -0.0, math.inf, -math.inf, math.nan, 1.5, 123456789012345678.0],
    "d": decimal.Decimal("1.10"),
    "ds": [
        decimal.Decimal(x)
        for x in ["1E+2", "-0", "0.00003141", "NaN", "-sNaN", "Infinity", "-1.50E+3"]
    ],
    "dt": datetime.datetime(2012, 1, 23, 12, 34, 56, 54321, tzinfo=amp.utc),
    "dts": [
        datetime.datetime(2010, 12, 25, 0, 0, 0, tzinfo=_tz(330)),
        datetime.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=_tz(-300)),
    ],
    "li": [1, -2, 300, 2**63 - 1],
    "lu": ["", "a", "\u2603"],
    "ls": [b"", b"\x00", b"bytes"],
    "rows": [{"x": 1, "y": "a"}, {"x": 2, "y": "\u2603"}],
    "opt_present": "here",
    "dash_name": 7,
}


def describe(v):
    """A text form that tells apart everything equality would not (precision, NaN, sign, offset)."""
    if isinstance(v, bool):
        return "bool:" + repr(v)
    if isinstance(v, int):
        return "int:" + str(v)
    if isinstance(v, float):
        return "float:" + repr(v)
    if isinstance(v, decimal.Decimal):
        return "decimal:" + str(v)
    if isinstance(v, datetime.datetime):
        return "datetime:" + v.isoformat()
    if isinstance(v, bytes):
        return "bytes:" + v.hex()
    if isinstance(v, str):
        return "str:" + v
    if isinstance(v, list):
        return "[" + ",".join(describe(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(k + "=" + describe(v[k]) for k in sorted(v)) + "}"
    if v is None:
        return "None"
    return "other:" + repr(v)


def mismatches(received):
    """Names of the canonical values that `received` does not hold exactly."""
    wrong = []
    for name in sorted(set(CANONICAL) | set(received) | {"opt_absent"}):
        if describe(received.get(name)) != describe(CANONICAL.get(name)):
            wrong.append(name)
    return wrong
