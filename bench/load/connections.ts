#!/usr/bin/env bun
/**
 * Connections loader: opens `count` WebSocket connections, each subscribed to its own channel
 * (`<prefix><offset + i>`), at most `concurrency` opening at once. Protocol on stdio:
 *   stdout {"loaded":true}           → waits for "go" on stdin (so several loaders start together)
 *   stdout {"ready":…, "result":…}   → every connection is subscribed; holds them, idle
 *   stdin  "close"                    → closes them all, prints {"closed":true}, exits
 * Connect time of one connection: TCP connect → upgrade → subscribe → `subscribed` received.
 */
import { connectRaw, frameText, isFrameOfType, type RawWs } from '../lib/raw-ws'
import { clock, Histogram } from '../lib/stats'
import { config, emit, main, pool, stdinLines } from './common'

interface ConnectionsConfig {
  host: string
  port: number
  count: number
  offset: number
  channelPrefix: string
  concurrency: number
  /** How long to hold the connections at most, waiting for "close". */
  holdMs: number
  timeoutMs: number
}

main(async () => {
  const cfg = config<ConnectionsConfig>()
  const stdin = stdinLines()
  emit({ loaded: true, pid: process.pid })
  const go = await stdin.next(cfg.timeoutMs)
  if (go !== 'go') throw new Error(`expected "go" on stdin, got ${JSON.stringify(go)}`)

  const conns: RawWs[] = []
  const subscribedAt = new Float64Array(cfg.count)
  const wake: Array<(() => void) | undefined> = []
  const unexpected: string[] = []
  let closedEarly = 0
  const closeCodes: Record<number, number> = {}
  let ending = false
  const handlers = {
    onText(conn: RawWs, bytes: Uint8Array, start: number, end: number, at: number) {
      if (isFrameOfType(bytes, start, end, 'subscribed')) {
        subscribedAt[conn.id] = at
        wake[conn.id]?.()
      } else if (unexpected.length < 10) unexpected.push(frameText(bytes, start, end))
    },
    onClose(conn: RawWs) {
      wake[conn.id]?.()
      if (ending) return
      closedEarly++
      closeCodes[conn.closeCode] = (closeCodes[conn.closeCode] ?? 0) + 1
    },
  }

  const connectTime = new Histogram()
  const failures: string[] = []
  const started = clock()
  const deadline = performance.now() + cfg.timeoutMs
  await pool(cfg.count, cfg.concurrency, async (i) => {
    if (performance.now() > deadline) throw new Error(`could not open ${cfg.count} connections within ${cfg.timeoutMs} ms`)
    const t0 = clock()
    try {
      const conn = await connectRaw(cfg.host, cfg.port, '/ws', i, handlers, clock)
      conns[i] = conn
      conn.sendText(JSON.stringify({ type: 'subscribe', channelId: `${cfg.channelPrefix}${cfg.offset + i}` }))
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`connection ${i} not subscribed within ${cfg.timeoutMs} ms`)), cfg.timeoutMs)
        wake[i] = () => (clearTimeout(timer), resolve())
        if (subscribedAt[i]! > 0) wake[i]!()
      })
      wake[i] = undefined
      if (conn.closed) throw new Error(`closed by the server with ${conn.closeCode}`)
      connectTime.record((subscribedAt[i]! - t0) * 1000)
    } catch (error) {
      if (failures.length < 5) failures.push(String(error))
    }
  })
  const elapsedMs = clock() - started
  const opened = subscribedAt.reduce((n, t) => n + (t > 0 ? 1 : 0), 0)
  emit({
    ready: true,
    result: {
      count: cfg.count,
      opened,
      failed: cfg.count - opened,
      elapsedMs: Math.round(elapsedMs),
      startedAt: started,
      finishedAt: started + elapsedMs,
      connectMs: connectTime.summary(),
      histogram: connectTime.toJSON(),
      failures: failures.slice(0, 5),
      unexpectedFrames: unexpected,
    },
  })

  const command = await stdin.next(cfg.holdMs)
  ending = true
  const stillOpen = conns.filter((c) => c && !c.closed).length
  for (const conn of conns) conn?.end()
  emit({ closed: true, command, stillOpen, closedEarly, closeCodes })
})
