export interface BackoffOptions {
  /** Delay before the first retry. */
  baseMs: number
  /** No delay is longer than this. */
  maxMs: number
  /** Each delay moves by a random amount in [-jitterMs, +jitterMs], so clients never retry in step. */
  jitterMs: number
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 1000, maxMs: 30_000, jitterMs: 1000 }

/**
 * The delay before retry number `attempt` (0 for the first): base · 2^attempt, capped, plus jitter,
 * never below 0 nor above the cap. `random` returns a number in [0, 1).
 */
export function backoffDelay(attempt: number, options: BackoffOptions, random: () => number): number {
  const exponential = Math.min(options.baseMs * 2 ** Math.min(attempt, 30), options.maxMs)
  const jitter = (random() * 2 - 1) * options.jitterMs
  return Math.round(Math.min(options.maxMs, Math.max(0, exponential + jitter)))
}
