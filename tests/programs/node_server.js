// A Node.js `http` server for `handover run`: its listener is fd 3 (systemd socket activation),
// and it drains the way a zero-downtime restart needs. Node's own `server.close()` also closes
// idle kept-alive connections at once (Node >= 19), while clients may be sending on them: those
// requests fail. Instead, on SIGTERM: stop accepting, answer every further request with
// `Connection: close`, close a connection only once it has been idle for IDLE_GRACE_MS, and
// exit when none is left.
'use strict';
const http = require('http');

const IDLE_GRACE_MS = 500;
let draining = false;
// socket -> { busy: requests in flight, last: time of the last activity }
const connections = new Map();

const server = http.createServer((req, res) => {
  const state = connections.get(req.socket);
  if (state) {
    state.busy += 1;
    state.last = Date.now();
  }
  res.on('finish', () => {
    if (state) {
      state.busy -= 1;
      state.last = Date.now();
    }
  });
  const body = `hello from pid=${process.pid} node\n`;
  if (draining) res.setHeader('Connection', 'close');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
});
server.keepAliveTimeout = 60000;
server.on('connection', (socket) => {
  connections.set(socket, { busy: 0, last: Date.now() });
  socket.on('close', () => connections.delete(socket));
});

process.on('SIGTERM', () => {
  draining = true;
  // Stop accepting without Node's immediate close of idle connections.
  server.closeIdleConnections = () => {};
  server.close();
  setInterval(() => {
    const now = Date.now();
    for (const [socket, state] of connections) {
      if (state.busy === 0 && now - state.last >= IDLE_GRACE_MS) socket.end();
    }
    if (connections.size === 0) process.exit(0);
  }, 50);
});

server.listen({ fd: 3 });
