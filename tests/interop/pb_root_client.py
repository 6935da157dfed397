"""A Twisted PB client for pb's interop tests (tests/twisted_pb_interop.rs): checks a PB server.

Usage: pb_root_client.py --port P [--portal | --anonymous-refused]

The server on 127.0.0.1:P serves either the contract's root under the name `root` (the rows
of tests/interop/pb_root_server.py), or with --portal a cred portal with the users alice/secret
and bob/hunter2 and anonymous access, whose avatars answer whoami() and call_mind(x), or with
--anonymous-refused a cred portal without anonymous access (an anonymous login is refused).

Prints `ok <check>` or `FAIL <check>: <why>` per check, then `N passed, M failed`; exits 0 only
when every check passed. Without --portal it also speaks raw bytes to the server to check that
Banana's limits close the offending connection and only that one.
"""

import gc
import math
import socket
import sys
from decimal import Decimal

from twisted.cred import credentials
from twisted.cred.error import LoginFailed, UnauthorizedLogin, UnhandledCredentials
from twisted.internet import defer, reactor, task
from twisted.spread import pb

results = []

# How long one call may take before its check fails; only a broken server gets near it.
CALL_PATIENCE = 30


def record(name, ok, why=""):
    results.append(ok)
    print(("ok " + name) if ok else ("FAIL " + name + ": " + why), flush=True)


def check_failure_is_complete(name, f):
    """A failure received works as Twisted's own CopiedFailure does (a failure sent without
    Twisted's full state breaks these with AttributeError)."""
    try:
        f.getTracebackObject()
        f.frames
        f.cleanFailure()
        record(name, True)
    except Exception as e:
        record(name, False, "%s: %s" % (type(e).__name__, e))


class Point(pb.Copyable, pb.RemoteCopy):
    """Both sides of `pbtest.Point`: received from point(), sent to sum_point()."""

    def __init__(self, x=0, y=0):
        self.x = x
        self.y = y

    def getTypeToCopy(self):
        return b"pbtest.Point"

    def getStateToCopy(self):
        return {"x": self.x, "y": self.y}


pb.setUnjellyableForClass("pbtest.Point", Point)

# Every count the server's Counter told this process's cache copies, in arrival order.
observed = []


class CounterCache(pb.RemoteCache):
    """The local copy of the server's `pbtest.Counter`."""

    def setCopyableState(self, state):
        self.count = state["count"]

    def observe_set(self, n):
        observed.append(n)
        self.count = n


pb.setUnjellyableForClass("pbtest.Counter", CounterCache)


class Pinger(pb.Referenceable):
    """A client object the server calls back: ping(x) answers x."""

    def __init__(self):
        self.pings = []

    def remote_ping(self, x):
        self.pings.append(x)
        return x


class CheckingBroker(pb.Broker):
    """A broker that notes answers and errors to requests it never made or asked no answer for.

    Twisted's own broker drops the connection on such an answer; noting it instead lets the
    no-answer check say what arrived.
    """

    def connectionMade(self):
        super().connectionMade()
        self.stray = []

    def proto_answer(self, requestID, netResult):
        if requestID not in self.waitingForAnswers:
            self.stray.append(("answer", requestID))
            return
        super().proto_answer(requestID, netResult)

    def proto_error(self, requestID, fail):
        if requestID not in self.waitingForAnswers:
            self.stray.append(("error", requestID))
            return
        super().proto_error(requestID, fail)


def outcome(d):
    """Fires with ("ok", value) or ("err", failure), or ("err", timeout) if no answer comes."""
    d.addTimeout(CALL_PATIENCE, reactor)
    return d.addCallbacks(lambda v: ("ok", v), lambda f: ("err", f))


def describe(o):
    kind, v = o
    if kind == "err":
        return "error %s: %s" % (getattr(v, "type", "?"), v.getErrorMessage())
    return "answer %r" % (v,)


@defer.inlineCallbacks
def connect(port):
    factory = pb.PBClientFactory()
    factory.protocol = CheckingBroker
    reactor.connectTCP("127.0.0.1", port, factory, timeout=CALL_PATIENCE)
    root = yield factory.getRootObject()
    return factory, root


def same(a, b):
    """Deep equality that also requires equal types, float signs, NaNs and decimal digits."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        for k, v in a.items():
            match = [k2 for k2 in b if same(k, k2)]
            if len(match) != 1 or not same(v, b[match[0]]):
                return False
        return True
    if isinstance(a, (set, frozenset)):
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    return a == b


ECHO_VALUES = [
    ("int", 42),
    ("int_zero", 0),
    ("int_2_31_minus_1", 2**31 - 1),
    ("int_2_31", 2**31),
    ("int_minus_2_31", -(2**31)),
    ("int_minus_2_31_minus_1", -(2**31) - 1),
    ("int_2_63", 2**63),
    ("int_2_64_plus_1", 2**64 + 1),
    ("int_negative", -5),
    ("int_minus_2_100", -(2**100)),
    ("int_2_447", 2**447),
    ("int_largest", 2**448 - 1),
    ("int_smallest", -(2**448) + 1),
    ("float", 1.5),
    ("float_tenth", 0.1),
    ("float_minus_zero", -0.0),
    ("float_inf", math.inf),
    ("float_minus_inf", -math.inf),
    ("float_nan", math.nan),
    ("float_subnormal", 5e-324),
    ("bytes", b"\x00\xffbytes\x80"),
    ("bytes_empty", b""),
    ("bytes_vocabulary_word", b"list"),
    ("bytes_640_kib", b"x" * (640 * 1024)),
    ("str", "h\xe9llo \u2603 \U0001f600"),
    ("str_empty", ""),
    ("none", None),
    ("true", True),
    ("false", False),
    ("list", [1, "a", b"b", None]),
    ("list_empty", []),
    ("tuple", (1, "a", b"b")),
    ("tuple_empty", ()),
    ("dict", {1: "int key", (1, "t"): "tuple key", "k": None, b"b": 2.5}),
    ("dict_empty", {}),
    ("set", {1, "a", (2, 3)}),
    ("frozenset", frozenset({1, b"x"})),
    ("decimal", Decimal("1.10")),
    ("decimal_negative", Decimal("-123.456")),
    ("decimal_exponent", Decimal("1E+5")),
    (
        "nested",
        {"a": [1, (2, {3, frozenset({4})}), {"d": [None, True]}], "b": ((), [[[]]])},
    ),
]


@defer.inlineCallbacks
def check_echo(root):
    for name, value in ECHO_VALUES:
        o = yield outcome(root.callRemote("echo", value))
        shown = repr(value) if len(repr(value)) < 200 else "%d chars" % len(repr(value))
        record("echo_" + name, o[0] == "ok" and same(o[1], value), "sent %s, got %s" % (shown, describe(o)[:300]))

    shared = [1, 2]
    o = yield outcome(root.callRemote("echo", [shared, shared]))
    r = o[1]
    record(
        "echo_shared_list",
        o[0] == "ok" and type(r) is list and len(r) == 2 and r[0] == [1, 2] and r[0] is r[1],
        describe(o),
    )
    o = yield outcome(root.callRemote("echo", {"a": shared, "b": (shared,)}))
    r = o[1]
    record(
        "echo_shared_in_dict",
        o[0] == "ok" and type(r) is dict and r.get("a") == [1, 2] and r["a"] is r["b"][0],
        describe(o),
    )
    t = (1, "t")
    o = yield outcome(root.callRemote("echo", [t, t]))
    r = o[1]
    record(
        "echo_shared_tuple",
        o[0] == "ok" and type(r) is list and r[0] == (1, "t") and r[0] is r[1],
        describe(o),
    )
    cyclic = [0]
    cyclic.append(cyclic)
    o = yield outcome(root.callRemote("echo", cyclic))
    r = o[1]
    record(
        "echo_cyclic_list",
        o[0] == "ok" and type(r) is list and len(r) == 2 and r[0] == 0 and r[1] is r,
        describe(o)[:300],
    )
    me = {"n": 1}
    me["me"] = me
    o = yield outcome(root.callRemote("echo", me))
    r = o[1]
    record(
        "echo_cyclic_dict",
        o[0] == "ok" and type(r) is dict and r.get("n") == 1 and r.get("me") is r,
        describe(o)[:300],
    )
    del shared, t, cyclic, me, r, o


@defer.inlineCallbacks
def check_calls(root, broker):
    o = yield outcome(root.callRemote("add", 2, 3))
    record("add", o == ("ok", 5), describe(o))
    o = yield outcome(root.callRemote("add", -7, 2**40))
    record("add_negative_and_large", o == ("ok", 2**40 - 7), describe(o))

    message = "no luck \u2603"
    o = yield outcome(root.callRemote("fail", message))
    f = o[1]
    is_error = o[0] == "err" and isinstance(f, pb.CopiedFailure)
    record("fail_traps_pb_error", is_error and bool(f.check(pb.Error)), describe(o))
    record("fail_message", is_error and f.getErrorMessage() == message, describe(o))
    tb = getattr(f, "traceback", "") if is_error else ""
    if isinstance(tb, bytes):
        tb = tb.decode("utf-8", "replace")
    record("fail_no_traceback", is_error and "File " not in tb, "traceback %r" % (tb,))
    del f, o

    pinger = Pinger()
    o = yield outcome(root.callRemote("call_back", pinger, 41))
    record("call_back", o == ("ok", 41) and pinger.pings == [41], "%s, pings %r" % (describe(o), pinger.pings))
    o = yield outcome(root.callRemote("give_back", pinger))
    record("give_back_is_same_object", o[0] == "ok" and o[1] is pinger, describe(o))
    del o, pinger

    o = yield outcome(root.callRemote("counter", 10))
    if o[0] == "ok" and isinstance(o[1], pb.RemoteReference):
        counter = o[1]
        a = yield outcome(counter.callRemote("increment"))
        b = yield outcome(counter.callRemote("increment"))
        record("counter_increment", (a, b) == (("ok", 11), ("ok", 12)), "%s, %s" % (describe(a), describe(b)))
        v = yield outcome(counter.callRemote("value"))
        record("counter_value", v == ("ok", 12), describe(v))
        counter.callRemote("increment", pbanswer=False)
        v = yield outcome(counter.callRemote("value"))
        record("no_answer_call_runs", v == ("ok", 13), describe(v))
        del counter
    else:
        record("counter_increment", False, describe(o))
    del o

    o = yield outcome(root.callRemote("point", 3, -4))
    p = o[1]
    record(
        "point_copy",
        o[0] == "ok" and type(p) is Point and same((p.x, p.y), (3, -4)),
        "%s %r" % (describe(o), getattr(p, "__dict__", None)),
    )
    del o, p
    o = yield outcome(root.callRemote("sum_point", Point(20, 22)))
    record("sum_point", o == ("ok", 42), describe(o))

    o = yield outcome(root.callRemote("cache"))
    k = o[1]
    if o[0] == "ok" and isinstance(k, CounterCache) and type(k.count) is int:
        record("cache_state", True)
        o2 = yield outcome(root.callRemote("cache"))
        k2 = o2[1]
        record(
            "cache_second_is_shared_proxy",
            o2[0] == "ok" and isinstance(k2, CounterCache) and k2 is not k and k2.__dict__ is k.__dict__,
            describe(o2),
        )
        before = k.count
        start = len(observed)
        d = root.callRemote("bump")
        # What the cache copy has been told by the very moment bump's answer arrives.
        d.addCallback(lambda n: (n, observed[start:], k.count))
        o3 = yield outcome(d)
        ok = o3[0] == "ok" and o3[1][0] in o3[1][1] and o3[1][2] >= o3[1][0]
        if ok:
            n, told, _ = o3[1]
            # Alone on the server, the count goes up by exactly one; other clients' bumps may
            # interleave when several share it.
            ok = n == before + 1 if told == [n] else n > before
        record("bump_observed_before_answer", ok, "count was %d; (answer, observed, count) = %s" % (before, describe(o3)))
        del k2, o2, o3, d
    else:
        record("cache_state", False, describe(o))
    del k, o

    o = yield outcome(root.callRemote("no_such_method", 1))
    record(
        "unknown_method_is_error",
        o[0] == "err" and isinstance(o[1], pb.CopiedFailure),
        describe(o),
    )
    if o[0] == "err":
        record(
            "unknown_method_text_is_twisteds",
            o[1].getErrorMessage() == "No such method: remote_no_such_method",
            describe(o),
        )
        check_failure_is_complete("unknown_method_failure_is_complete", o[1])
    o = yield outcome(root.callRemote("add", "x", "y"))
    record("bad_arguments_is_error", o[0] == "err", describe(o))
    if o[0] == "err":
        check_failure_is_complete("bad_arguments_failure_is_complete", o[1])
    del o
    o = yield outcome(root.callRemote("add", 1, 2))
    record("connection_stays_after_unknown_method", o == ("ok", 3), describe(o))

    r = [
        root.callRemote("add", 1, 2, pbanswer=False),
        root.callRemote("fail", "quiet", pbanswer=False),
        root.callRemote("no_such_method", pbanswer=False),
    ]
    o = yield outcome(root.callRemote("add", 20, 22))
    # A second round trip gives any late stray answer time to arrive behind the first.
    o2 = yield outcome(root.callRemote("add", 1, 1))
    record(
        "no_answer_call",
        r == [None, None, None] and o == ("ok", 42) and o2 == ("ok", 2) and broker.stray == [],
        "%s; stray answers %r" % (describe(o), broker.stray),
    )


@defer.inlineCallbacks
def round_trip_exported(root):
    gc.collect()
    o = yield outcome(root.callRemote("exported"))
    return o


@defer.inlineCallbacks
def hold_references(root):
    """Takes two counters and the cache twice; returns exported() while they are held."""
    held = []
    for method, args in [("counter", (0,)), ("counter", (5,)), ("cache", ()), ("cache", ())]:
        o = yield outcome(root.callRemote(method, *args))
        held.append(o)
    o = yield outcome(root.callRemote("exported"))
    kinds = [type(h[1]).__name__ for h in held]
    del held
    return o, kinds


@defer.inlineCallbacks
def check_exported(root):
    e0 = yield round_trip_exported(root)
    record("exported_starts_at_zero", e0 == ("ok", 0), describe(e0))
    e1, kinds = yield hold_references(root)
    # Two counters and one Cacheable; the second cache() is the same Cacheable again.
    record("exported_counts_held", e1 == ("ok", 3), "%s holding %s" % (describe(e1), kinds))
    e2 = yield round_trip_exported(root)
    record("exported_falls_to_zero", e2 == ("ok", 0), describe(e2))


HANDSHAKE = b"\x02\x80\x02\x82pb\x04\x82none"
VERSION = b"\x02\x80\x13\x87\x06\x81"
# ["message", 1, "root", "add", 1, ["tuple", 2, 3], ["dictionary"]] in the pb dialect.
ADD_2_3 = b"\x07\x80\x1a\x87\x01\x81\x04\x82root\x03\x82add\x01\x81\x03\x80\x0b\x87\x02\x81\x03\x81\x01\x80\x05\x87"
# ["answer", 1, 5]
ANSWER_5 = b"\x03\x80\x1b\x87\x01\x81\x05\x81"


def b128(n):
    out = bytearray()
    while True:
        out.append(n & 0x7F)
        n >>= 7
        if not n:
            return bytes(out)


def raw_connect(port):
    """A raw connection past the dialect handshake and the version exchange.

    Returns the socket and what the server sent meanwhile. Reading before writing on makes the
    server consume everything it is sent before a close: closing with unread input would reset
    the connection and discard what it had sent.
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=CALL_PATIENCE)
    got = read_exactly(s, len(HANDSHAKE))
    s.sendall(b"\x02\x82pb" + VERSION)
    got += read_exactly(s, len(VERSION))
    return s, got


def read_until_close(s):
    """Reads until the peer closes; returns (closed, bytes read)."""
    got = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return True, got
            got += chunk
    except ConnectionResetError:
        return True, got
    except socket.timeout:
        return False, got


def read_exactly(s, n):
    got = b""
    try:
        while len(got) < n:
            chunk = s.recv(n - len(got))
            if not chunk:
                break
            got += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return got


def check_limits(port):
    bystander, got = raw_connect(port)
    record("handshake_bytes", got == HANDSHAKE + VERSION, "got %r" % got)
    cases = [
        ("limit_string_over_640_kib_closes", b128(640 * 1024 + 1) + b"\x82"),
        ("limit_list_over_640_kib_closes", b128(640 * 1024 + 1) + b"\x80"),
        ("limit_65_prefix_bytes_closes", b"\x01" * 65),
        ("limit_type_byte_0x88_closes", b"\x01\x88"),
        ("limit_type_byte_0xff_closes", b"\xff"),
    ]
    for name, payload in cases:
        s, _ = raw_connect(port)
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed, got = read_until_close(s)
        s.close()
        record(name, closed, "still open after %r" % (got,))
    bystander.sendall(ADD_2_3)
    got = read_exactly(bystander, len(ANSWER_5))
    record("limits_spare_an_open_connection", got == ANSWER_5, "got %r" % got)
    bystander.close()
    fresh, _ = raw_connect(port)
    fresh.sendall(ADD_2_3)
    got = read_exactly(fresh, len(ANSWER_5))
    record("limits_spare_a_new_connection", got == ANSWER_5, "got %r" % got)
    fresh.close()


@defer.inlineCallbacks
def check_root(port):
    factory, root = yield connect(port)
    broker = factory._broker
    yield check_echo(root)
    yield check_calls(root, broker)
    yield check_exported(root)
    # Blocking sockets: nothing else runs meanwhile, and the server is another process.
    check_limits(port)
    o = yield outcome(root.callRemote("add", 4, 5))
    record("limits_spare_the_twisted_connection", o == ("ok", 9), describe(o))
    factory.disconnect()


@defer.inlineCallbacks
def login(port, creds):
    """Logs in on a fresh connection; returns (factory, outcome of login, mind)."""
    factory = pb.PBClientFactory()
    reactor.connectTCP("127.0.0.1", port, factory, timeout=CALL_PATIENCE)
    mind = Pinger()
    o = yield outcome(factory.login(creds, client=mind))
    return factory, o, mind


@defer.inlineCallbacks
def check_user(port, creds, name):
    factory, o, mind = yield login(port, creds)
    record("login_" + name, o[0] == "ok" and isinstance(o[1], pb.RemoteReference), describe(o))
    if o[0] == "ok":
        avatar = o[1]
        w = yield outcome(avatar.callRemote("whoami"))
        record("whoami_" + name, w == ("ok", name), describe(w))
        m = yield outcome(avatar.callRemote("call_mind", 7))
        record("call_mind_" + name, m == ("ok", 7) and mind.pings == [7], "%s, pings %r" % (describe(m), mind.pings))
    factory.disconnect()


@defer.inlineCallbacks
def check_refused(port, creds, name):
    factory, o, _ = yield login(port, creds)
    record(name, o[0] == "err" and bool(o[1].check(UnauthorizedLogin)), describe(o))
    factory.disconnect()


@defer.inlineCallbacks
def check_anonymous_refused(port):
    """Against a portal without anonymous access: refused as cred's UnhandledCredentials."""
    factory, o, _ = yield login(port, credentials.Anonymous())
    record(
        "anonymous_refused_as_unhandled_credentials",
        o[0] == "err"
        and bool(o[1].check(UnhandledCredentials))
        and bool(o[1].check(LoginFailed))
        and not o[1].check(pb.Error),
        describe(o) + (" parents %r" % (o[1].parents,) if o[0] == "err" else ""),
    )
    factory.disconnect()


@defer.inlineCallbacks
def check_portal(port):
    yield check_user(port, credentials.UsernamePassword(b"alice", b"secret"), "alice")
    yield check_user(port, credentials.UsernamePassword(b"bob", b"hunter2"), "bob")
    yield check_refused(port, credentials.UsernamePassword(b"alice", b"wrong"), "wrong_password_refused")
    yield check_refused(port, credentials.UsernamePassword(b"mallory", b"secret"), "unknown_user_refused")
    yield check_user(port, credentials.Anonymous(), "anonymous")


def main():
    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    portal = "--portal" in args
    anonymous_refused = "--anonymous-refused" in args

    @defer.inlineCallbacks
    def run(reactor):
        try:
            if anonymous_refused:
                yield check_anonymous_refused(port)
            elif portal:
                yield check_portal(port)
            else:
                yield check_root(port)
        except Exception as e:
            record("unexpected_exception", False, repr(e))

    task.react(lambda r: run(r))


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        pass
    failed = results.count(False)
    print("%d passed, %d failed" % (results.count(True), failed), flush=True)
    sys.exit(1 if failed or not results else 0)
