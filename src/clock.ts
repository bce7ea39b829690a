/**
 * Time as the code driven by timers and deadlines sees it (CONVENTIONS 16): the system's in production,
 * a manual one in tests, which move it instead of sleeping.
 */
export interface Clock {
  /** Milliseconds since the epoch, as Date.now(). */
  now(): number
  /** Runs `fn` once `ms` have passed; returns the function that cancels it. */
  setTimeout(fn: () => void, ms: number): () => void
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout (fn, ms) {
    const timer = setTimeout(fn, ms)
    // A pending deadline or tick never keeps a process alive that has nothing else to do.
    timer.unref()
    return () => clearTimeout(timer)
  }
}

/** Waits `ms` on `clock`, or rejects with the signal's reason (not a generic AbortError) as soon as it aborts. */
export function sleep (clock: Clock, ms: number, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted()
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      cancel()
      reject(signal.reason)
    }
    const cancel = clock.setTimeout(() => {
      signal.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}
