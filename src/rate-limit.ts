/** A limit of `max` hits per `windowMs`. */
export interface RateLimit {
  max: number
  windowMs: number
}

/** A fixed-window counter for one caller: the WebSocket limit of seed 003 (60 messages / 10 s). */
export class FixedWindow {
  private start = -Infinity
  private count = 0

  constructor(private readonly limit: RateLimit) {}

  /** Counts a hit at `now`; returns 0 when allowed, else the ms until the window resets. */
  hit(now: number): number {
    if (now - this.start >= this.limit.windowMs) {
      this.start = now
      this.count = 0
    }
    return ++this.count <= this.limit.max ? 0 : this.start + this.limit.windowMs - now
  }
}

/** Fixed windows per key (a credential); windows idle for a full period are forgotten. */
export class KeyedRateLimiter {
  private readonly windows = new Map<string, { window: FixedWindow; lastHit: number }>()
  private lastSweep = 0

  constructor(
    private readonly limit: RateLimit,
    private readonly now: () => number = Date.now,
  ) {}

  /** Counts a hit for `key`; returns 0 when allowed, else the ms until it may try again. */
  hit(key: string): number {
    const now = this.now()
    if (now - this.lastSweep >= this.limit.windowMs) this.sweep(now)
    let entry = this.windows.get(key)
    if (!entry) {
      entry = { window: new FixedWindow(this.limit), lastHit: now }
      this.windows.set(key, entry)
    }
    entry.lastHit = now
    return entry.window.hit(now)
  }

  get size(): number {
    return this.windows.size
  }

  private sweep(now: number): void {
    this.lastSweep = now
    for (const [key, entry] of this.windows) {
      if (now - entry.lastHit >= this.limit.windowMs) this.windows.delete(key)
    }
  }
}
