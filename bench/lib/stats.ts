/**
 * Latency histogram in microseconds: exact below 1,024 µs, then 512 sub-buckets per power of two
 * (better than 0.2 % relative precision) up to ~35 minutes. Fixed size, so recording is O(1) and
 * memory is bounded however many samples a scenario takes; serialisable so results from several
 * loader processes can be merged.
 */
const LINEAR = 1024
const SUB = 512
const SIZE = LINEAR + 22 * SUB

export class Histogram {
  readonly counts = new Float64Array(SIZE)
  total = 0
  max = 0
  min = Number.POSITIVE_INFINITY
  sum = 0

  /** Records one sample, in microseconds (negative values count as 0). */
  record(us: number, times = 1): void {
    const v = us > 0 ? Math.floor(us) : 0
    this.counts[indexOf(v)]! += times
    this.total += times
    this.sum += v * times
    if (v > this.max) this.max = v
    if (v < this.min) this.min = v
  }

  /** The value (µs) at quantile q in [0, 1]. */
  quantile(q: number): number {
    if (this.total === 0) return Number.NaN
    const rank = Math.max(1, Math.ceil(q * this.total))
    let seen = 0
    for (let i = 0; i < SIZE; i++) {
      seen += this.counts[i]!
      if (seen >= rank) return Math.min(valueOf(i), this.max)
    }
    return this.max
  }

  mean(): number {
    return this.total === 0 ? Number.NaN : this.sum / this.total
  }

  merge(other: Histogram): void {
    for (let i = 0; i < SIZE; i++) this.counts[i]! += other.counts[i]!
    this.total += other.total
    this.sum += other.sum
    this.max = Math.max(this.max, other.max)
    this.min = Math.min(this.min, other.min)
  }

  /** Sparse form for JSON: [index, count] pairs plus the exact extremes. */
  toJSON(): SerializedHistogram {
    const buckets: Array<[number, number]> = []
    for (let i = 0; i < SIZE; i++) if (this.counts[i]! > 0) buckets.push([i, this.counts[i]!])
    return { total: this.total, sum: this.sum, min: this.total ? this.min : 0, max: this.max, buckets }
  }

  static from(data: SerializedHistogram): Histogram {
    const h = new Histogram()
    for (const [i, n] of data.buckets) h.counts[i] = n
    h.total = data.total
    h.sum = data.sum
    h.min = data.total ? data.min : Number.POSITIVE_INFINITY
    h.max = data.max
    return h
  }

  /** Percentiles in milliseconds (3 decimals), the form every scenario reports. */
  summary(): LatencySummary {
    const ms = (us: number) => (Number.isFinite(us) ? Math.round(us) / 1000 : null)
    return {
      samples: this.total,
      p50: ms(this.quantile(0.5)),
      p95: ms(this.quantile(0.95)),
      p99: ms(this.quantile(0.99)),
      max: ms(this.total ? this.max : Number.NaN),
      mean: ms(this.mean()),
    }
  }
}

export interface SerializedHistogram {
  total: number
  sum: number
  min: number
  max: number
  buckets: Array<[number, number]>
}

export interface LatencySummary {
  samples: number
  p50: number | null
  p95: number | null
  p99: number | null
  max: number | null
  mean: number | null
}

function indexOf(v: number): number {
  if (v < LINEAR) return v
  const msb = 31 - Math.clz32(Math.min(v, 0x7fffffff))
  const shift = msb - 9
  const sub = Math.min(v, 0x7fffffff) >>> shift // 512..1023
  return LINEAR + (shift - 1) * SUB + (sub - SUB)
}

function valueOf(index: number): number {
  if (index < LINEAR) return index
  const shift = Math.floor((index - LINEAR) / SUB) + 1
  const sub = ((index - LINEAR) % SUB) + SUB
  return (sub << shift) + (1 << (shift - 1)) // bucket midpoint
}

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes on one machine. */
export const clock = (): number => performance.timeOrigin + performance.now()

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}
