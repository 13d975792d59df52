#!/usr/bin/env python3
"""A plain HTTP/1.1 keep-alive server that is not built on handover, for `handover run` tests.

It takes its listening socket from systemd socket activation (LISTEN_FDS, LISTEN_PID), says
READY=1 on NOTIFY_SOCKET, and drains on SIGTERM: further requests get `Connection: close`,
idle connections are closed after a short grace, then it exits.

PYSERVER_WAIT=poll|select says nothing on NOTIFY_SOCKET and waits for connections in poll (the
standard library's serve_forever) or in a select loop: readiness must be seen from outside.
"""
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

IDLE_GRACE = 0.5
draining = threading.Event()
lock = threading.Lock()
active = 0
last_activity = time.monotonic()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global active, last_activity
        with lock:
            active += 1
        try:
            if self.path.startswith("/sleep"):
                time.sleep(float(self.path.split("ms=")[-1]) / 1000.0)
            body = f"hello from pid={os.getpid()} python\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            if draining.is_set():
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
        finally:
            with lock:
                active -= 1
                last_activity = time.monotonic()

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True


def notify(message):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), path)


def wait_for_drain():
    # With a timeout: Python runs signal handlers in the main thread only, between bytecodes,
    # and a SIGTERM that the kernel hands to another thread does not wake a main thread blocked
    # in an endless lock wait.
    while not draining.wait(0.1):
        pass


def main():
    # The sanity run of an upgrade: `--version` must exit 0 without any socket.
    if "--version" in sys.argv:
        print("pyserver 1.0")
        return
    # PYSERVER_ANY_PID: started by a shell that did not exec it, so LISTEN_PID is the shell's.
    pid_ok = os.environ.get("LISTEN_PID") == str(os.getpid()) or os.environ.get("PYSERVER_ANY_PID")
    if not pid_ok or int(os.environ.get("LISTEN_FDS", "0")) < 1:
        sys.exit("not socket-activated")
    server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=3)
    signal.signal(signal.SIGTERM, lambda *_: draining.set())
    wait = os.environ.get("PYSERVER_WAIT")
    if wait == "select":
        def select_loop():
            while not draining.is_set():
                readable, _, _ = select.select([server.socket], [], [], 0.1)
                if readable:
                    server._handle_request_noblock()
        loop = threading.Thread(target=select_loop, daemon=True)
        loop.start()
        wait_for_drain()
        loop.join()
    else:
        interval = 0.5 if wait == "poll" else 0.05
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": interval}, daemon=True).start()
        if wait is None:
            # PYSERVER_NOTIFY_DELAY: say READY=1 late, after it is seen accepting.
            time.sleep(float(os.environ.get("PYSERVER_NOTIFY_DELAY", "0")))
            notify("READY=1")
        wait_for_drain()
        server.shutdown()
    # Requests still arriving on kept-alive connections are answered with Connection: close;
    # exit once nothing has happened for the idle grace.
    while True:
        with lock:
            quiet = active == 0 and time.monotonic() - last_activity > IDLE_GRACE
        if quiet:
            break
        time.sleep(0.02)
    os._exit(0)


if __name__ == "__main__":
    main()
