#!/usr/bin/env bun
/**
 * RPC loader: both ends of a call in this one process, each on its own raw WebSocket to the same
 * server (`none` mode: both are the local user, so either may call the other).
 *
 * - `desk` says `hello` with the method `echo` and answers every `call` it gets with a `result`
 *   whose data is the call's payload.
 * - The caller sends `calls` calls one after another (`target: "desk"`, method `echo`, a payload of
 *   `padBytes`), each after the previous one's `result` arrived: round trip = send → `result`
 *   (caller → server → desk → server → caller). `warmup` calls first, not measured.
 * - For scale: `pings` sequential `ping` → `pong` round trips on the caller's socket (one hop
 *   there and back, through the same message path), after the calls.
 */
import { connectRaw, frameText, isFrameOfType, type RawWs } from '../lib/raw-ws'
import { clock, Histogram } from '../lib/stats'
import { config, emit, main, waitUntil } from './common'

interface RpcConfig {
  host: string
  port: number
  calls: number
  warmup: number
  pings: number
  padBytes: number
  timeoutMs: number
}

main(async () => {
  const cfg = config<RpcConfig>()
  const pad = 'x'.repeat(cfg.padBytes)
  const unexpected: string[] = []
  let closed: RawWs | null = null
  const onClose = (c: RawWs) => {
    closed ??= c
  }

  // The answering end.
  let welcomed = false
  let answered = 0
  const desk = await connectRaw(
    cfg.host,
    cfg.port,
    '/ws',
    0,
    {
      onText(conn, buf, start, end) {
        if (isFrameOfType(buf, start, end, 'call')) {
          const call = JSON.parse(frameText(buf, start, end)) as { id: string; payload: unknown }
          conn.sendText(JSON.stringify({ type: 'result', id: call.id, success: true, data: call.payload }))
          answered++
        } else if (isFrameOfType(buf, start, end, 'welcome')) welcomed = true
        else if (unexpected.length < 10) unexpected.push(`desk: ${frameText(buf, start, end).slice(0, 300)}`)
      },
      onClose,
    },
    clock,
  )
  desk.sendText(JSON.stringify({ type: 'hello', clientId: 'desk', methods: ['echo'] }))
  await waitUntil(() => welcomed || closed !== null, cfg.timeoutMs, 'welcome')
  if (closed) throw new Error(`desk closed by the server (code ${(closed as RawWs).closeCode})`)

  // The calling end: one frame awaited at a time.
  let arrival: { type: string; resolve(frame: { at: number; text: string }): void } | null = null
  const caller = await connectRaw(
    cfg.host,
    cfg.port,
    '/ws',
    1,
    {
      onText(_conn, buf, start, end, at) {
        if (arrival && isFrameOfType(buf, start, end, arrival.type)) {
          const waiting = arrival
          arrival = null
          waiting.resolve({ at, text: frameText(buf, start, end) })
        } else if (unexpected.length < 10) unexpected.push(`caller: ${frameText(buf, start, end).slice(0, 300)}`)
      },
      onClose,
    },
    clock,
  )
  const roundTrip = async (type: string, frame: string, what: string) => {
    if (closed) throw new Error(`socket ${(closed as RawWs).id} closed by the server (code ${(closed as RawWs).closeCode})`)
    const reply = new Promise<{ at: number; text: string }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${type} for ${what} within ${cfg.timeoutMs} ms`)), cfg.timeoutMs)
      arrival = { type, resolve: (r) => (clearTimeout(timer), resolve(r)) }
    })
    const sentAt = clock()
    caller.sendText(frame)
    const { at, text } = await reply
    return { ms: at - sentAt, text }
  }

  const rtt = new Histogram()
  let failed = 0
  let firstFailure: string | undefined
  const started = performance.now()
  for (let n = 0; n < cfg.warmup + cfg.calls; n++) {
    if (n === cfg.warmup) emit({ mark: 'measure:start' })
    const id = `k${n}`
    const { ms, text } = await roundTrip(
      'result',
      `{"type":"call","id":"${id}","target":"desk","method":"echo","payload":{"n":${n},"pad":"${pad}"}}`,
      `call ${id}`,
    )
    const result = JSON.parse(text) as { id: string; success: boolean; data?: { n?: number } }
    if (result.id !== id || !result.success || result.data?.n !== n) {
      failed++
      firstFailure ??= text.slice(0, 300)
    }
    if (n >= cfg.warmup) rtt.record(ms * 1000)
  }
  const callSeconds = (performance.now() - started) / 1000
  emit({ mark: 'measure:end' })
  if (failed > 0) throw new Error(`${failed} calls did not come back as sent; first: ${firstFailure}`)

  const ping = new Histogram()
  for (let n = 0; n < cfg.pings; n++) {
    const { ms } = await roundTrip('pong', '{"type":"ping"}', `ping ${n}`)
    if (n >= Math.min(cfg.warmup, cfg.pings >> 1)) ping.record(ms * 1000)
  }

  caller.end()
  desk.end()
  emit({
    result: {
      calls: cfg.calls,
      warmup: cfg.warmup,
      answered,
      roundTripMs: rtt.summary(),
      callsPerSec: Math.round((cfg.warmup + cfg.calls) / callSeconds),
      pingMs: ping.summary(),
      unexpectedFrames: unexpected,
    },
  })
})
