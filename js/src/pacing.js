// Pacing document updates below the server's announced rate (spec §5.8, §7.1 "Pacing"):
// a token bucket at 80 % of welcome.limits.updates_per_second with a burst of half a
// second's worth. What waits for a token is merged into one update when it comes.

export const SUSTAINED_SHARE = 0.8;
export const BURST_SHARE = 0.5;

export class Pacer {
  /** @param {number} rate the server's updates per second (0: no limit) @param {number} now seconds */
  constructor(rate, now) {
    this.rate = rate * SUSTAINED_SHARE;
    this.capacity = Math.max(1, rate * BURST_SHARE);
    this.tokens = this.capacity;
    this.stamp = now;
    this.holdUntil = -Infinity;
  }

  /** @param {number} now */
  _refill(now) {
    if (this.rate > 0) this.tokens = Math.min(this.capacity, this.tokens + (now - this.stamp) * this.rate);
    this.stamp = now;
  }

  /** Spends a token if there is one (and no hold is on). @param {number} now */
  take(now) {
    if (this.rate <= 0) return true;
    if (now < this.holdUntil) return false;
    this._refill(now);
    if (this.tokens >= 1) { this.tokens -= 1; return true; }
    return false;
  }

  /** When take() can next succeed. @param {number} now */
  nextTokenAt(now) {
    if (this.rate <= 0) return now;
    this._refill(now);
    const ready = this.tokens >= 1 ? now : now + (1 - this.tokens) / this.rate;
    return Math.max(ready, this.holdUntil);
  }

  /** The server said RATE_LIMITED: halve the pace and send nothing for `seconds`.
   *  @param {number} now @param {number} seconds */
  hold(now, seconds) {
    this.rate = Math.max(1, this.rate / 2);
    this.capacity = Math.max(1, this.capacity / 2);
    this._refill(now);
    this.tokens = 0;
    this.holdUntil = Math.max(this.holdUntil, now + seconds);
  }
}

/** Full jitter (§7.1): uniform in [0, min(cap, base * 2^attempt)]. */
export const backoffDelay = (/** @type {number} */ attempt, /** @type {number} */ baseMs, /** @type {number} */ capMs) =>
  Math.random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
