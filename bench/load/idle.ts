#!/usr/bin/env bun
/**
 * Idle-latency loader: one subscriber, one event at a time. Each round trip POSTs one event and waits
 * for both its frame on the socket and the HTTP answer before the next; latency is frame arrival −
 * send time (one process, one clock). Warmup round trips are not counted.
 */
import { connectRaw, frameText, isFrameOfType, type RawWs, sentAtOf } from '../lib/raw-ws'
import { clock, Histogram } from '../lib/stats'
import { config, emit, main, postJson, stamp, tickEvent, waitUntil } from './common'

interface IdleConfig {
  host: string
  port: number
  publishUrl: string
  channel: string
  roundTrips: number
  warmup: number
  padBytes: number
  timeoutMs: number
}

main(async () => {
  const cfg = config<IdleConfig>()
  const pad = 'x'.repeat(cfg.padBytes)
  let subscribed = false
  let arrival: { resolve(at: number): void } | null = null
  const unexpected: string[] = []
  let closed: RawWs | null = null

  const conn = await connectRaw(
    cfg.host,
    cfg.port,
    '/ws',
    0,
    {
      onText(_conn, bytes, start, end, at) {
        const sentAt = sentAtOf(bytes, start, end)
        if (sentAt >= 0) {
          arrival?.resolve(at)
          arrival = null
        } else if (isFrameOfType(bytes, start, end, 'subscribed')) subscribed = true
        else if (unexpected.length < 10) unexpected.push(frameText(bytes, start, end))
      },
      onClose(c) {
        closed = c
      },
    },
    clock,
  )
  conn.sendText(JSON.stringify({ type: 'subscribe', channelId: cfg.channel }))
  await waitUntil(() => subscribed, cfg.timeoutMs, 'subscribed')

  const frameLatency = new Histogram()
  const answerLatency = new Histogram()
  emit({ mark: 'measure:start' })
  const started = performance.now()
  for (let n = 0; n < cfg.warmup + cfg.roundTrips; n++) {
    if (closed) throw new Error(`subscriber closed by the server (code ${(closed as RawWs).closeCode})`)
    const framePromise = new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`event ${n} did not arrive within ${cfg.timeoutMs} ms`)), cfg.timeoutMs)
      arrival = { resolve: (at) => (clearTimeout(timer), resolve(at)) }
    })
    const sentAt = stamp()
    const answer = postJson(cfg.publishUrl, tickEvent(crypto.randomUUID(), cfg.channel, n, pad, sentAt)).then(() => clock())
    const [frameAt, answerAt] = await Promise.all([framePromise, answer])
    if (n >= cfg.warmup) {
      frameLatency.record((frameAt - sentAt) * 1000)
      answerLatency.record((answerAt - sentAt) * 1000)
    }
  }
  const seconds = (performance.now() - started) / 1000
  emit({ mark: 'measure:end' })
  conn.end()
  emit({
    result: {
      roundTrips: cfg.roundTrips,
      latencyMs: frameLatency.summary(),
      httpAnswerMs: answerLatency.summary(),
      roundTripsPerSec: Math.round((cfg.warmup + cfg.roundTrips) / seconds),
      unexpectedFrames: unexpected,
    },
  })
})
