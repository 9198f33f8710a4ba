#!/usr/bin/env bun
/**
 * Fan-out loader: `subscribers` raw WebSocket clients on one channel and a publisher POSTing batches
 * of `batchSize` events, all in this one process (one clock for send and arrival times).
 *
 * Phases, each starting once everything before it has been delivered:
 * - warmup: a few batches, not measured;
 * - paced: batches at `paced.batchesPerSecond` (the scenario's default rate), latency measured;
 * - saturated: batches as fast as deliveries allow, with at most `saturated.window` batches not yet
 *   delivered to every subscriber (closed loop, so no server queue grows without bound): delivered
 *   events/s across all subscribers, and latency under that load.
 * Latency is (arrival of the TCP chunk holding the frame) − (send time in the payload, taken just
 * before the POST).
 *
 * `transport: "sse"` (Switchboard only) makes every subscriber a Server-Sent Events stream
 * (`GET /api/events/stream?channel=…`, read by lib/raw-sse.ts) instead of a WebSocket; it counts
 * as subscribed once its `ready` event arrived. Everything else is the same.
 */
import { connectSse, type RawSse } from '../lib/raw-sse'
import { connectRaw, frameText, isFrameOfType, type RawWs, sentAtOf } from '../lib/raw-ws'
import { clock, Histogram } from '../lib/stats'
import { config, cpuMs, emit, main, pool, postJson, progress, stamp, tickEvent, waitUntil } from './common'

interface FanoutConfig {
  host: string
  port: number
  publishUrl: string
  channel: string
  subscribers: number
  batchSize: number
  padBytes: number
  warmupBatches: number
  paced: { batchesPerSecond: number; batches: number }
  saturated: { batches: number; window: number }
  connectConcurrency: number
  timeoutMs: number
  /** How subscribers read: WebSocket (the default) or Server-Sent Events. */
  transport?: 'ws' | 'sse'
}

main(async () => {
  const cfg = config<FanoutConfig>()
  const totalBatches = cfg.warmupBatches + cfg.paced.batches + cfg.saturated.batches
  const received = new Int32Array(cfg.subscribers)
  const subscribed = new Uint8Array(cfg.subscribers)
  const complete = new Int32Array(totalBatches)
  const waiters = new Map<number, { resolve(): void; reject(error: Error): void }>()
  const errors: string[] = []
  let failure: Error | null = null
  let hist: Histogram | null = null
  let lastArrival = 0
  let ending = false
  const pad = 'x'.repeat(cfg.padBytes)

  const fail = (error: Error) => {
    if (failure) return
    failure = error
    for (const waiter of waiters.values()) waiter.reject(error)
    waiters.clear()
  }

  const handlers = {
    onText(conn: RawWs | RawSse, bytes: Uint8Array, start: number, end: number, at: number) {
      const sentAt = sentAtOf(bytes, start, end)
      if (sentAt < 0) {
        if (isFrameOfType(bytes, start, end, 'subscribed')) subscribed[conn.id] = 1
        else if (errors.length < 10) errors.push(frameText(bytes, start, end))
        return
      }
      const count = ++received[conn.id]!
      lastArrival = at
      hist?.record((at - sentAt) * 1000)
      if (count % cfg.batchSize === 0) {
        const batch = count / cfg.batchSize - 1
        if (++complete[batch]! === cfg.subscribers) {
          waiters.get(batch)?.resolve()
          waiters.delete(batch)
        }
      }
    },
    onReady(conn: RawSse) {
      subscribed[conn.id] = 1
    },
    onClose(conn: RawWs | RawSse) {
      if (!ending) fail(new Error(`subscriber ${conn.id} was closed by the server (code ${conn.closeCode})`))
    },
  }

  /** Resolves once every subscriber has received batch `batch` (and so every batch before it). */
  const delivered = (batch: number): Promise<void> => {
    if (failure) return Promise.reject(failure)
    if (batch < 0 || complete[batch] === cfg.subscribers) return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.delete(batch)
        const behind = received.reduce((n, r) => n + (r < (batch + 1) * cfg.batchSize ? 1 : 0), 0)
        reject(new Error(`batch ${batch} not delivered to ${behind} of ${cfg.subscribers} subscribers within ${cfg.timeoutMs} ms`))
      }, cfg.timeoutMs)
      waiters.set(batch, {
        resolve: () => (clearTimeout(timer), resolve()),
        reject: (error) => (clearTimeout(timer), reject(error)),
      })
    })
  }

  // Subscribers.
  const conns: Array<RawWs | RawSse> = []
  const connectStarted = performance.now()
  await pool(cfg.subscribers, cfg.connectConcurrency, async (i) => {
    if (cfg.transport === 'sse') {
      conns[i] = await connectSse(cfg.host, cfg.port, `/api/events/stream?channel=${encodeURIComponent(cfg.channel)}`, i, handlers, clock)
      return
    }
    const conn = await connectRaw(cfg.host, cfg.port, '/ws', i, handlers, clock)
    conns[i] = conn
    conn.sendText(JSON.stringify({ type: 'subscribe', channelId: cfg.channel }))
  })
  await waitUntil(() => subscribed.every((s) => s === 1) || failure !== null, cfg.timeoutMs, 'every subscriber to be subscribed')
  if (failure) throw failure
  const connectMs = performance.now() - connectStarted
  progress(`fanout: ${cfg.subscribers} subscribers in ${connectMs.toFixed(0)} ms`)

  // Publisher.
  let nextBatch = 0
  let storedMismatch = 0
  const publish = async (batch: number) => {
    const sentAt = stamp()
    const events: string[] = []
    for (let i = 0; i < cfg.batchSize; i++) events.push(tickEvent(crypto.randomUUID(), cfg.channel, batch * cfg.batchSize + i, pad, sentAt))
    const answer = await postJson(cfg.publishUrl, `{"events":[${events.join(',')}]}`)
    if (answer.stored !== cfg.batchSize) storedMismatch++
  }

  const phase = async (name: string, batches: number, window: number, batchesPerSecond: number | null) => {
    emit({ mark: `${name}:start` })
    hist = new Histogram()
    const first = nextBatch
    const started = clock()
    const cpuStart = cpuMs()
    const requests: Promise<void>[] = []
    let behindSchedule = 0
    for (let b = 0; b < batches; b++) {
      const batch = nextBatch++
      if (batchesPerSecond) {
        const due = started + (b * 1000) / batchesPerSecond
        const wait = due - clock()
        if (wait > 0) await Bun.sleep(wait)
        else if (wait < -5) behindSchedule++
      }
      await delivered(batch - window)
      requests.push(publish(batch).catch((error) => fail(error)))
    }
    await delivered(first + batches - 1)
    await Promise.all(requests)
    if (failure) throw failure
    emit({ mark: `${name}:end` })
    const seconds = (lastArrival - started) / 1000
    const deliveries = batches * cfg.batchSize * cfg.subscribers
    const loaderCpuMs = cpuMs() - cpuStart
    return {
      batches,
      events: batches * cfg.batchSize,
      deliveries,
      seconds: round(seconds, 3),
      deliveredPerSec: Math.round(deliveries / seconds),
      publishedPerSec: Math.round((batches * cfg.batchSize) / seconds),
      latencyMs: hist.summary(),
      loaderCpuPct: round((loaderCpuMs / (seconds * 1000)) * 100, 1),
      ...(batchesPerSecond ? { batchesPerSecond, behindSchedule } : { window }),
    }
  }

  await phase('warmup', cfg.warmupBatches, 1, null)
  progress('fanout: warmup done')
  const paced = await phase('paced', cfg.paced.batches, cfg.saturated.window, cfg.paced.batchesPerSecond)
  progress(`fanout: paced ${JSON.stringify(paced)}`)
  const saturated = await phase('saturated', cfg.saturated.batches, cfg.saturated.window, null)
  progress(`fanout: saturated ${JSON.stringify(saturated)}`)

  ending = true
  for (const conn of conns) conn?.end()
  emit({
    result: {
      subscribers: cfg.subscribers,
      batchSize: cfg.batchSize,
      connectMs: Math.round(connectMs),
      paced,
      saturated,
      storedMismatch,
      unexpectedFrames: errors,
    },
  })
})

function round(value: number, digits: number): number {
  const f = 10 ** digits
  return Math.round(value * f) / f
}
