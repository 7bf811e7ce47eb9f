// The pacers a connection's rooms share (spec §5.8: rates are per connection): document
// updates under limits.updates_per_second, publishes under limits.events_per_second, and presence, cursors and typing under
// limits.frames_per_second, each at 80 % with a burst of half a second (pacing.js). They are
// made afresh for each welcome (a new connection starts with full buckets on the server too).
import { Pacer } from "./pacing.js";

/** Share of frames_per_second left to ephemeral frames: pings, joins and leaves need some. */
const EPHEMERAL_SHARE = 0.75;

/** @type {WeakMap<object, { welcome: unknown, updates: Pacer, events: Pacer, frames: Pacer }>} */
const byClient = new WeakMap();

/** @param {any} client a PlaitClient @returns {{ updates: Pacer, events: Pacer, frames: Pacer }} */
export function connectionPacers(client) {
  const welcome = client._welcome ?? null;
  let p = byClient.get(client);
  if (!p || p.welcome !== welcome) {
    const limits = welcome?.limits ?? {};
    const now = performance.now() / 1000;
    p = {
      welcome,
      updates: new Pacer(limits.updates_per_second ?? 0, now),
      events: new Pacer(limits.events_per_second ?? 0, now),
      frames: new Pacer((limits.frames_per_second ?? 0) * EPHEMERAL_SHARE, now),
    };
    byClient.set(client, p);
  }
  return p;
}

/** Counts a frame the server's bucket counts but that cannot wait (a sync_step2 answering
 *  sync_step1): the pacer's tokens may go below zero, and what follows waits the longer.
 *  @param {Pacer | null} pacer @param {number} now seconds */
export function spend(pacer, now) {
  if (!pacer || pacer.rate <= 0) return;
  pacer._refill(now);
  pacer.tokens -= 1;
}
