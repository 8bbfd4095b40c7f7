// Peer: Socket.IO 4.8 on node 20, WebSocket transport only, no compression.
//
//   NODE_PATH=benchmarks/peers/node/node_modules node benchmarks/peers/socketio_node/server.js \
//       --host 127.0.0.1 --port 8005
//
// - Socket.IO (Engine.IO v4) at /socket.io/; the `channel` query parameter of the handshake
//   URL puts the socket in that room (before the namespace connect is answered, "40{...}");
// - POST /publish?channel=C: the body (text) is the payload: io.to(C).emit("m", payload)
//   (the packet is encoded once for the whole room), answered 204; GET /healthz: 200.
// socket.io is installed by benchmarks/peers/install.sh into benchmarks/peers/node/.
"use strict";
const http = require("http");
const path = require("path");

let Server;
try {
  ({ Server } = require("socket.io"));
} catch (e) {
  ({ Server } = require(path.join(__dirname, "..", "node", "node_modules", "socket.io")));
}

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const host = arg("--host", "127.0.0.1");
const port = parseInt(arg("--port", "8005"), 10);

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (req.method === "POST" && url.pathname === "/publish") {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const payload = Buffer.concat(chunks).toString();
      const channel = url.searchParams.get("channel");
      (channel ? io.to(channel) : io).emit("m", payload);
      res.writeHead(204);
      res.end();
    });
    return;
  }
  if (url.pathname === "/healthz") {
    res.writeHead(200, { "Content-Length": "2" });
    res.end("ok");
    return;
  }
  // /socket.io/ requests are handled by engine.io's own listener
  if (!url.pathname.startsWith("/socket.io/")) {
    res.writeHead(404);
    res.end();
  }
});
server.keepAliveTimeout = 120000;

const io = new Server(server, {
  transports: ["websocket"],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  cors: { origin: "*" },
});
io.on("connection", (socket) => {
  const channel = socket.handshake.query.channel;
  if (channel) socket.join(channel);
});

server.listen(port, host);
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    io.close();
    server.close();
    setTimeout(() => process.exit(0), 500).unref();
  });
}
