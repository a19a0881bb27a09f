"""MapProxy on loopback: ``python -m tests.interop.mapproxy_child SPEC`` (see :class:`~tests.interop.servers.MapProxy`).

Prints ``READY <port>`` once it listens (the protocol of :class:`mapstream.demo._child.ChildServer`),
serves MapProxy's WSGI app with werkzeug's threaded server, and exits when its parent dies.
"""

import json
import os
import socket
import sys

from mapstream.demo._watchdog import exit_when_orphaned


def main(spec_path: str) -> None:
    from mapproxy.wsgiapp import make_wsgi_app
    from werkzeug.serving import make_server

    spec = json.loads(open(spec_path).read())
    app = make_wsgi_app(spec["config"])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(spec.get("port", 0))))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = make_server("127.0.0.1", port, app, threaded=True, fd=sock.fileno())

    exit_when_orphaned(spec["parent"])
    print(f"READY {port}", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1])
