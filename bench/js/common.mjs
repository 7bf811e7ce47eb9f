// What the load-generating processes share (load.mjs, events.mjs).

// CLOCK_MONOTONIC milliseconds: the clock every process on the machine shares.
export const now = () => Number(process.hrtime.bigint()) / 1e6
export const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

// Run `action` on every item, at most `width` at a time: a burst of thousands of SYNs
// overflows a listen backlog and measures the kernel, not the server.
export async function inBatches (items, width, action) {
  let next = 0
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, async () => {
    while (next < items.length) await action(items[next++])
  }))
}

// Until `check()` holds, or `timeoutMs` passed: whether it held.
export async function waitUntil (check, timeoutMs) {
  const deadline = now() + timeoutMs
  while (!check()) {
    if (now() > deadline) return false
    await sleep(5)
  }
  return true
}
