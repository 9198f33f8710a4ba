import type { Logger } from './log'
import type { Metrics } from './metrics'
import type { EventStore } from './store/event-store'

/** Rows deleted per transaction: small enough that a prune never holds the event loop for long. */
export const PRUNE_CHUNK = 1000

/**
 * Deletes events older than the retention window, at startup and then every interval, one chunk
 * per turn of the event loop so ingest and delivery keep flowing while it runs.
 */
export class RetentionJob {
  private timer: ReturnType<typeof setInterval> | undefined
  private running: Promise<number> | undefined
  private stopped = false

  constructor(
    private readonly store: EventStore,
    private readonly retentionMs: number,
    private readonly intervalMs: number,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
    private readonly metrics?: Metrics,
  ) {}

  /** Prunes once now (resolving when done), then keeps pruning on the interval until stop(). */
  async start(): Promise<void> {
    await this.run()
    if (this.stopped) return
    this.timer = setInterval(() => void this.run(), this.intervalMs)
    this.timer.unref?.()
  }

  /** One full prune; concurrent calls share the run in progress. Resolves to the events removed. */
  run(): Promise<number> {
    this.running ??= this.prune().finally(() => {
      this.running = undefined
    })
    return this.running
  }

  async stop(): Promise<void> {
    this.stopped = true
    clearInterval(this.timer)
    await this.running
  }

  private async prune(): Promise<number> {
    const cutoff = this.now() - this.retentionMs
    const started = performance.now()
    let total = 0
    for (let after = 0; !this.stopped; ) {
      const { pruned, next } = this.store.pruneBefore(cutoff, after, PRUNE_CHUNK)
      total += pruned
      if (next === null) break
      after = next
      await new Promise((resolve) => setImmediate(resolve))
    }
    this.metrics?.pruned.inc(total)
    if (total > 0) {
      this.log.info('events_pruned', { pruned: total, cutoff, ms: Math.round(performance.now() - started) })
    }
    return total
  }
}
