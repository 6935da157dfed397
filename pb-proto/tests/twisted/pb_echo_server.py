"""A Twisted PB server for pb-proto's tests/twisted_jelly.rs: its root answers `echo(x)` with x.

It listens on an ephemeral port of 127.0.0.1, prints the port on a line, and serves until
killed. Twisted unjellies each argument with its default security options and jellies the
answer back, so shared and cyclic containers come back shared as they arrived.
"""

import sys

from twisted.internet import reactor
from twisted.spread import pb


class Root(pb.Root):
    def remote_echo(self, x):
        return x


port = reactor.listenTCP(0, pb.PBServerFactory(Root()), interface="127.0.0.1")
print(port.getHost().port)
sys.stdout.flush()
reactor.run()
