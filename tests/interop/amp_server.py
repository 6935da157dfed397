"""A Twisted AMP server for pb's interop tests: prints `PORT <n>` once listening on 127.0.0.1.

Usage: amp_server.py [--tls-pem FILE]   (FILE holds the key and certificate for StartTLS)
"""

import sys

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.protocols import amp

import amp_commands as c


class Hold:
    def __init__(self):
        self.waiting = []

    def add(self, n, total):
        d = defer.Deferred()
        self.waiting.append((n, d))
        if len(self.waiting) >= total:
            waiting, self.waiting = self.waiting, []
            for order, (m, dd) in enumerate(reversed(waiting)):
                dd.callback({"n": m, "order": order})
        return d


HOLD = Hold()


class Server(amp.AMP):
    tls_pem = None

    def __init__(self):
        super().__init__()
        self.notified = []

    @c.Sum.responder
    def sum(self, a, b):
        return {"total": a + b}

    @c.Divide.responder
    def divide(self, numerator, denominator):
        return {"result": float(numerator) / denominator}

    @c.AllTypes.responder
    def all_types(self, **kw):
        out = dict(kw)
        out["mismatches"] = ",".join(c.mismatches(kw))
        return out

    @c.Notify.responder
    def notify(self, msg):
        self.notified.append(msg)
        return {}

    @c.GetNotified.responder
    def get_notified(self):
        return {"msgs": self.notified}

    @c.Hold.responder
    def hold(self, n, total):
        return HOLD.add(n, total)

    @c.FloatReprs.responder
    def float_reprs(self, fs):
        return {"reprs": [repr(f) for f in fs]}

    @c.DecimalStrs.responder
    def decimal_strs(self, texts):
        import decimal

        return {"strs": [str(decimal.Decimal(t)) for t in texts]}

    @c.EchoDecimal.responder
    def echo_decimal(self, d):
        return {"d": d}

    @c.DecimalsAccepted.responder
    def decimals_accepted(self, texts):
        import decimal

        def accepted(text):
            try:
                decimal.Decimal(text)
                return True
            except decimal.InvalidOperation:
                return False

        return {"accepted": [accepted(t) for t in texts]}

    @c.Echo.responder
    def echo(self, s):
        return {"s": s}

    @c.Fatal.responder
    def fatal(self):
        raise c.FatalThing("fatal thing")

    @c.Broken.responder
    def broken(self):
        raise RuntimeError("not declared")

    @c.CallMeBack.responder
    def call_me_back(self, a, b):
        return self.callRemote(c.Sum, a=a, b=b)

    @amp.StartTLS.responder
    def start_tls(self):
        from twisted.internet import ssl

        with open(self.tls_pem) as f:
            cert = ssl.PrivateCertificate.loadPEM(f.read())
        return {"tls_localCertificate": cert}


def main():
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    args = sys.argv[1:]
    if args[:1] == ["--tls-pem"]:
        Server.tls_pem = args[1]
    factory = protocol.Factory.forProtocol(Server)
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")

    def listening(port):
        print("PORT", port.getHost().port, flush=True)

    def failed(f):
        print("LISTEN FAILED", f.getErrorMessage(), flush=True)
        reactor.stop()

    endpoint.listen(factory).addCallbacks(listening, failed)
    reactor.run()


if __name__ == "__main__":
    main()
