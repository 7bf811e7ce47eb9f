// A TCP proxy for tests: forwards 127.0.0.1:port to a server, and can cut every connection,
// refuse new ones for a while, or refuse WebSocket upgrades (HTTP 403) as some proxies do.
import net from "node:net";

export async function startProxy(/** @type {number} */ targetPort) {
  /** @type {Set<net.Socket>} */
  const sockets = new Set();
  const state = { refusing: false, refuseUpgrades: false, upgradesRefused: 0, cutUpgraded: false, upgradesCut: 0, connections: 0, target: targetPort };
  const server = net.createServer((client) => {
    state.connections += 1;
    if (state.refusing) { client.destroy(); return; }
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.on("error", () => {});
    client.once("data", (first) => {
      if (state.refuseUpgrades && /\r\nupgrade:\s*websocket/i.test(first.toString("latin1"))) {
        state.upgradesRefused += 1;
        client.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
      }
      const upstream = net.connect(state.target, "127.0.0.1");
      sockets.add(upstream);
      if (state.cutUpgraded && /\r\nupgrade:\s*websocket/i.test(first.toString("latin1"))) {
        // Passes the upgrade and what follows it at once (the welcome), then drops it: a
        // proxy that kills WebSockets it does not understand after a moment.
        upstream.once("data", () => setTimeout(() => { state.upgradesCut += 1; client.destroy(); upstream.destroy(); }, 50));
      }
      upstream.on("close", () => { sockets.delete(upstream); client.destroy(); });
      upstream.on("error", () => client.destroy());
      client.on("close", () => upstream.destroy());
      upstream.write(first);
      client.pipe(upstream);
      upstream.pipe(client);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(undefined)));
  const port = /** @type {net.AddressInfo} */ (server.address()).port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    state,
    /** Drops every open connection at once (no close frame: a network failure). */
    cut() { for (const s of sockets) s.destroy(); sockets.clear(); },
    /** Refuses (resets) new connections while on. */
    refuse(/** @type {boolean} */ on) { state.refusing = on; },
    refuseUpgrades(/** @type {boolean} */ on) { state.refuseUpgrades = on; },
    /** Lets WebSocket upgrades through, then cuts each one right after the server's first bytes. */
    cutUpgraded(/** @type {boolean} */ on) { state.cutUpgraded = on; },
    close() { this.cut(); return new Promise((r) => server.close(() => r(undefined))); },
  };
}
