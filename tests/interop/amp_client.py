"""A Twisted AMP client for pb's interop tests: calls a pb server on 127.0.0.1 and checks each answer.

Usage: amp_client.py --port P [--only calculator] [--tls-ca FILE]

Prints `ok <check>` or `FAIL <check>: <why>` per check, then `N passed, M failed`; exits 0 only
when every check passed.
"""

import sys

from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.protocols import amp

import amp_commands as c

results = []


def record(name, ok, why=""):
    results.append(ok)
    print(("ok " + name) if ok else ("FAIL " + name + ": " + why), flush=True)


class Client(amp.AMP):
    def __init__(self):
        super().__init__()
        self.lost = defer.Deferred()

    @c.Sum.responder
    def sum(self, a, b):
        return {"total": a + b}

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)


@defer.inlineCallbacks
def connect(port):
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    proto = yield endpoints.connectProtocol(endpoint, Client())
    return proto


@defer.inlineCallbacks
def expect_error(name, d, exc_type, check=None):
    try:
        yield d
    except exc_type as e:
        if check is not None and not check(e):
            record(name, False, "unexpected error detail: %r" % (e,))
        else:
            record(name, True)
    except Exception as e:
        record(name, False, "wrong error %r" % (e,))
    else:
        record(name, False, "no error")


@defer.inlineCallbacks
def calculator(port):
    p = yield connect(port)
    r = yield p.callRemote(c.Sum, a=13, b=81)
    record("sum", r == {"total": 94}, repr(r))
    r = yield p.callRemote(c.Divide, numerator=1234, denominator=4)
    record("divide", r == {"result": 308.5}, repr(r))
    yield expect_error(
        "divide_by_zero",
        p.callRemote(c.Divide, numerator=1, denominator=0),
        ZeroDivisionError,
    )
    p.transport.loseConnection()


@defer.inlineCallbacks
def full(port, tls_ca):
    yield calculator(port)
    p = yield connect(port)

    r = yield p.callRemote(c.AllTypes, **c.CANONICAL)
    mismatches = r.pop("mismatches")
    record("all_types_decoded_by_pb", mismatches == "", mismatches)
    wrong = c.mismatches(r)
    record("all_types_echoed_by_pb", not wrong, ",".join(wrong))

    yield expect_error(
        "unknown_command",
        p.callRemoteString(b"NoSuchCmd"),
        amp.UnhandledCommand,
        lambda e: "Unhandled Command: b'NoSuchCmd'" in str(e),
    )
    r = yield p.callRemote(c.Sum, a=1, b=2)
    record("connection_stays_after_unknown_command", r == {"total": 3}, repr(r))

    p.callRemote(c.Notify, msg="hi \u2603")
    p.callRemote(c.Notify, msg="again")
    r = yield p.callRemote(c.GetNotified)
    record("no_answer_command", r == {"msgs": ["hi \u2603", "again"]}, repr(r))

    total = 500
    arrived = []

    def arrival(r):
        arrived.append(r["n"])
        return r

    ds = [p.callRemote(c.Hold, n=n, total=total).addCallback(arrival) for n in range(total)]
    rs = yield defer.gatherResults(ds)
    matched = all(r["n"] == n for n, r in enumerate(rs))
    record("500_concurrent_asks_matched", matched, "answers mixed up")
    orders = sorted(r["order"] for r in rs)
    record("500_concurrent_asks_all_answered", orders == list(range(total)), "orders %r" % orders[:5])
    record(
        "500_concurrent_asks_out_of_order",
        arrived != sorted(arrived),
        "answers arrived in ask order",
    )

    big = bytes(range(256)) * 255 + b"x" * 255
    assert len(big) == 65535
    r = yield p.callRemote(c.Echo, s=big)
    record("value_of_65535_bytes", r == {"s": big}, "len %d" % len(r.get("s", b"")))
    try:
        p.callRemote(c.Echo, s=big + b"y")
    except amp.TooLong:
        record("value_of_65536_bytes_refused_locally", True)
    else:
        record("value_of_65536_bytes_refused_locally", False, "no TooLong")

    r = yield p.callRemote(c.CallMeBack, a=20, b=22)
    record("pb_calls_back_the_twisted_client", r == {"total": 42}, repr(r))

    if tls_ca is not None:
        from twisted.internet import ssl

        with open(tls_ca) as f:
            ca = ssl.Certificate.loadPEM(f.read())
        yield p.callRemote(amp.StartTLS, tls_verifyAuthorities=[ca])
        r = yield p.callRemote(c.Sum, a=40, b=2)
        record("sum_after_starttls", r == {"total": 42}, repr(r))
        record("transport_is_tls", p.transport.getPeerCertificate() is not None, "no peer certificate")

    p.transport.loseConnection()

    q = yield connect(port)
    yield expect_error(
        "fatal_error",
        q.callRemote(c.Fatal),
        c.FatalThing,
        lambda e: str(e) == "fatal thing",
    )
    yield q.lost
    record("fatal_error_closes_the_connection", True)

    q = yield connect(port)
    yield expect_error(
        "bad_argument_gives_unknown",
        q.callRemoteString(b"Sum", a=b"x", b=b"1"),
        amp.RemoteAmpError,
        lambda e: e.errorCode == b"UNKNOWN" and e.description == "Unknown Error",
    )
    yield q.lost
    record("unknown_error_closes_the_connection", True)


def main():
    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    only = args[args.index("--only") + 1] if "--only" in args else None
    tls_ca = args[args.index("--tls-ca") + 1] if "--tls-ca" in args else None

    @defer.inlineCallbacks
    def run(reactor):
        try:
            if only == "calculator":
                yield calculator(port)
            else:
                yield full(port, tls_ca)
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
