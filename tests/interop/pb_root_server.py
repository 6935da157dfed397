"""A Twisted PB server for pb's interop tests (tests/twisted_pb_interop.rs): the contract's root.

Usage: pb_root_server.py --port P [--portal] [--wrong]

Listens on 127.0.0.1:P (0 picks a free port), prints the port number alone on the first line
of stdout and serves until killed. Then it prints `called <method>` as each call to the root
arrives and `exported <n>` as it answers exported(), so that a test can tell which methods a
client called. With --wrong, add(a, b) answers a + b + 1: a client that checks must fail.

Without --portal the root, named `root`, answers:

- echo(x): x, as Twisted's jelly brings it back (types, sharing and cycles kept);
- add(a, b): a + b;
- fail(message): fails with pb.Error(message), sent without a traceback;
- call_back(ref, x): ref.callRemote("ping", x);
- give_back(ref): ref, which reaches the caller as its own object (answered before the
  argument is released);
- counter(start): a new Referenceable with increment() and value();
- point(x, y): a Copyable tagged `pbtest.Point` with state {"x": x, "y": y};
- sum_point(p): p.x + p.y for a `pbtest.Point` copy;
- cache(): the process's one Cacheable, tagged `pbtest.Counter`, state {"count": n};
- bump(): adds 1 to that count, tells every observer `set(n)`, waits for them, returns n;
- exported(): how many Referenceables and Cacheables this connection's broker exports now,
  the root not counted.

Beside the contract, for tests that drive pb's client directly:

- give_back_now_with_counter(ref): (ref, a new counter), answered at once: Twisted releases
  the argument before it writes the answer, so the caller finds `["local", luid]` naming an
  object it no longer exports, beside the counter's `["remote", luid]`;
- bump_with_ref(): tells every observer of cache() `add(<a new counter>)`, waits for them,
  returns how many were told.

With --portal the root is a cred portal instead: users alice/secret and bob/hunter2 (bytes)
and anonymous access. Each login gets an avatar answering whoami() with its user name
("anonymous" for an anonymous login) and call_mind(x) with the mind's ping(x).
"""

import sys

from twisted.cred import checkers, portal
from twisted.internet import defer, reactor
from twisted.spread import pb
from zope.interface import implementer


class Point(pb.Copyable, pb.RemoteCopy):
    """Both sides of `pbtest.Point`: sent by point(), received by sum_point()."""

    def __init__(self, x=0, y=0):
        self.x = x
        self.y = y

    def getTypeToCopy(self):
        return b"pbtest.Point"

    def getStateToCopy(self):
        return {"x": self.x, "y": self.y}


pb.setUnjellyableForClass("pbtest.Point", Point)


class Counter(pb.Cacheable):
    """The one `pbtest.Counter` of the process, observed by every connection that holds it."""

    def __init__(self):
        self.count = 0
        self.observers = []

    def getTypeToCopy(self):
        return b"pbtest.Counter"

    def getStateToCacheAndObserveFor(self, perspective, observer):
        self.observers.append(observer)
        return {"count": self.count}

    def stoppedObserving(self, perspective, observer):
        # Twisted passes an observer equal to (not the same as) the one it gave before.
        if observer in self.observers:
            self.observers.remove(observer)

    def bump(self):
        self.count += 1
        n = self.count
        told = []
        for observer in list(self.observers):
            try:
                told.append(observer.callRemote("set", n))
            except pb.DeadReferenceError:
                pass
        # Every observer has its `set(n)` (or has failed) before the answer goes out.
        return defer.DeferredList(told, consumeErrors=True).addCallback(lambda _: n)


    def bump_with_ref(self):
        told = []
        for observer in list(self.observers):
            try:
                told.append(observer.callRemote("add", CounterRef(7)))
            except pb.DeadReferenceError:
                pass
        return defer.DeferredList(told, consumeErrors=True).addCallback(len)


COUNTER = Counter()

# add() answers one too many with --wrong.
ADD_ERROR = 0


class CounterRef(pb.Referenceable):
    def __init__(self, start):
        self.n = start

    def remote_increment(self):
        self.n += 1
        return self.n

    def remote_value(self):
        return self.n


class Root(pb.Root):
    """The factory's root: hands each connection a root of its own that knows its broker."""

    def rootObject(self, broker):
        return ConnectionRoot(broker)


class ConnectionRoot(pb.Referenceable):
    def __init__(self, broker):
        self.broker = broker

    def remoteMessageReceived(self, broker, message, args, kw):
        name = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        print("called", name, flush=True)
        return super().remoteMessageReceived(broker, message, args, kw)

    def remote_echo(self, x):
        return x

    def remote_add(self, a, b):
        return a + b + ADD_ERROR

    def remote_fail(self, message):
        raise pb.Error(message)

    def remote_call_back(self, ref, x):
        return ref.callRemote("ping", x)

    def remote_give_back(self, ref):
        # Answering at once would release the argument first: Twisted jellies the answer,
        # drops the arguments (sending `decref`) and only then writes the answer, so the
        # caller would find its object gone and unjelly `["local", luid]` as None. Answering
        # on the next turn keeps `ref` alive until the answer is written.
        answer = defer.Deferred()
        reactor.callLater(0, answer.callback, ref)
        return answer

    def remote_give_back_now_with_counter(self, ref):
        return (ref, CounterRef(1))

    def remote_bump_with_ref(self):
        return COUNTER.bump_with_ref()

    def remote_counter(self, start):
        return CounterRef(start)

    def remote_point(self, x, y):
        return Point(x, y)

    def remote_sum_point(self, p):
        return p.x + p.y

    def remote_cache(self):
        return COUNTER

    def remote_bump(self):
        return COUNTER.bump()

    def remote_exported(self):
        # Numeric luids are exported Referenceables; bytes keys are named objects (the root).
        refs = sum(1 for luid in self.broker.localObjects if isinstance(luid, int))
        n = refs + len(self.broker.remotelyCachedObjects)
        print("exported", n, flush=True)
        return n


class User(pb.Avatar):
    def __init__(self, name, mind):
        self.name = name
        self.mind = mind

    def perspective_whoami(self):
        return self.name

    def perspective_call_mind(self, x):
        return self.mind.callRemote("ping", x)


@implementer(portal.IRealm)
class Realm:
    def requestAvatar(self, avatar_id, mind, *interfaces):
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("only IPerspective")
        if avatar_id == checkers.ANONYMOUS:
            name = "anonymous"
        else:
            name = avatar_id.decode("utf-8")
        return pb.IPerspective, User(name, mind), lambda: None


def portal_root():
    users = checkers.InMemoryUsernamePasswordDatabaseDontUse()
    users.addUser(b"alice", b"secret")
    users.addUser(b"bob", b"hunter2")
    return portal.Portal(Realm(), [users, checkers.AllowAnonymousAccess()])


def main():
    global ADD_ERROR
    args = sys.argv[1:]
    if "--wrong" in args:
        ADD_ERROR = 1
    port = int(args[args.index("--port") + 1]) if "--port" in args else 0
    root = portal_root() if "--portal" in args else Root()
    listening = reactor.listenTCP(port, pb.PBServerFactory(root), interface="127.0.0.1")
    print(listening.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
