#!/usr/bin/env bun
/**
 * Snapshot loader: how long a channel's state takes to arrive, over a socket and over HTTP.
 *
 * - WebSocket: a fresh socket per run sends `subscribe {snapshot: true}`; measured from just before
 *   the send to the arrival of the `snapshot` part with `done: true` (and to `caught_up`, which
 *   follows once the replay after the snapshot's seq, empty here, is done).
 * - HTTP: `GET /api/channels/<channel>/state`, measured until the whole body is read.
 *
 * The first `warmup` runs of each are not measured (the first one is reported as `coldMs`: a
 * freshly started server's caches); their answers are parsed and checked against `expected`
 * entities (after the clock stopped), as every HTTP answer is. Runs go one after another.
 */
import { connectRaw, frameText, isFrameOfType, type RawWs } from '../lib/raw-ws'
import { clock, Histogram } from '../lib/stats'
import { config, emit, main, waitUntil } from './common'

interface SnapshotConfig {
  host: string
  port: number
  /** http://host:port */
  url: string
  channel: string
  /** Live entities the channel's state has (from the fill). */
  expected: number
  warmup: number
  runs: number
  timeoutMs: number
}

const encoder = new TextEncoder()
const DONE_TAIL = encoder.encode(',"done":true}')

/** True when the frame ends with `,"done":true}` (the last part of a snapshot). */
function endsDone(bytes: Uint8Array, start: number, end: number): boolean {
  if (end - start < DONE_TAIL.length) return false
  const from = end - DONE_TAIL.length
  for (let i = 0; i < DONE_TAIL.length; i++) if (bytes[from + i] !== DONE_TAIL[i]) return false
  return true
}

const round3 = (ms: number) => Math.round(ms * 1000) / 1000

main(async () => {
  const cfg = config<SnapshotConfig>()
  const unexpected: string[] = []

  // --- WebSocket -----------------------------------------------------------------------------
  const wsDone = new Histogram()
  const wsCaughtUp = new Histogram()
  const wsFirstPart = new Histogram()
  const wsRuns: Array<{ doneMs: number; caughtUpMs: number; firstPartMs: number; parts: number; bytes: number }> = []
  let wsCold: (typeof wsRuns)[number] | undefined
  let checkedParts = 0
  for (let run = 0; run < cfg.warmup + cfg.runs; run++) {
    const check = run < cfg.warmup
    let subscribed = false
    let parts = 0
    let bytes = 0
    const kept: Uint8Array[] = []
    let firstPartAt = 0
    let doneAt = 0
    let caughtUpAt = 0
    let closedCode = 0
    const conn = await connectRaw(
      cfg.host,
      cfg.port,
      '/ws',
      run,
      {
        onText(_c, buf, start, end, at) {
          if (isFrameOfType(buf, start, end, 'snapshot')) {
            if (parts++ === 0) firstPartAt = at
            bytes += end - start
            if (check) kept.push(buf.slice(start, end)) // parsed after the run, off the clock
            if (endsDone(buf, start, end)) doneAt = at
          } else if (isFrameOfType(buf, start, end, 'caught_up')) caughtUpAt = at
          else if (isFrameOfType(buf, start, end, 'subscribed')) subscribed = true
          else if (unexpected.length < 10) unexpected.push(frameText(buf, start, end).slice(0, 300))
        },
        onClose(c: RawWs) {
          closedCode = c.closeCode
        },
      },
      clock,
    )
    if (run === cfg.warmup) emit({ mark: 'ws:start' })
    const sentAt = clock()
    conn.sendText(JSON.stringify({ type: 'subscribe', channelId: cfg.channel, snapshot: true }))
    await waitUntil(() => caughtUpAt > 0 || closedCode !== 0, cfg.timeoutMs, `the snapshot and caught_up (run ${run}: ${parts} parts so far)`, 1)
    if (caughtUpAt === 0) throw new Error(`socket closed with ${closedCode} during snapshot run ${run}`)
    conn.end()
    if (!subscribed || doneAt === 0) throw new Error(`run ${run}: caught_up without ${subscribed ? 'a done snapshot part' : 'subscribed'}`)
    if (check) {
      let entities = 0
      let snapshotSeq = -1
      for (const frame of kept) {
        const part = JSON.parse(frameText(frame, 0, frame.length)) as { seq: number; entities: unknown[] }
        entities += part.entities.length
        snapshotSeq = part.seq
      }
      if (entities !== cfg.expected) throw new Error(`the snapshot has ${entities} entities, expected ${cfg.expected}`)
      if (!(snapshotSeq > 0)) throw new Error(`the snapshot's seq is ${snapshotSeq}`)
      checkedParts = parts
    } else if (parts !== checkedParts) throw new Error(`run ${run}: ${parts} snapshot parts, the checked run had ${checkedParts}`)
    const result = {
      doneMs: round3(doneAt - sentAt),
      caughtUpMs: round3(caughtUpAt - sentAt),
      firstPartMs: round3(firstPartAt - sentAt),
      parts,
      bytes,
    }
    if (run === 0) wsCold = result
    if (check) continue
    wsRuns.push(result)
    wsDone.record(result.doneMs * 1000)
    wsCaughtUp.record(result.caughtUpMs * 1000)
    wsFirstPart.record(result.firstPartMs * 1000)
  }
  emit({ mark: 'ws:end' })

  // --- HTTP ----------------------------------------------------------------------------------
  const httpTime = new Histogram()
  const httpRuns: Array<{ ms: number; bytes: number }> = []
  let httpCold: (typeof httpRuns)[number] | undefined
  const stateUrl = `${cfg.url}/api/channels/${encodeURIComponent(cfg.channel)}/state`
  for (let run = 0; run < cfg.warmup + cfg.runs; run++) {
    if (run === cfg.warmup) emit({ mark: 'http:start' })
    const sentAt = clock()
    const response = await fetch(stateUrl, { signal: AbortSignal.timeout(cfg.timeoutMs) })
    const text = await response.text()
    const ms = round3(clock() - sentAt)
    if (!response.ok) throw new Error(`GET ${stateUrl} → ${response.status} ${text.slice(0, 300)}`)
    const body = JSON.parse(text) as { entities: unknown[]; seq: number }
    if (body.entities.length !== cfg.expected) throw new Error(`GET state: ${body.entities.length} entities, expected ${cfg.expected}`)
    const result = { ms, bytes: text.length }
    if (run === 0) httpCold = result
    if (run < cfg.warmup) continue
    httpRuns.push(result)
    httpTime.record(ms * 1000)
  }
  emit({ mark: 'http:end' })

  emit({
    result: {
      channel: cfg.channel,
      entities: cfg.expected,
      runs: cfg.runs,
      warmup: cfg.warmup,
      ws: {
        doneMs: wsDone.summary(),
        caughtUpMs: wsCaughtUp.summary(),
        firstPartMs: wsFirstPart.summary(),
        parts: checkedParts,
        bytes: wsRuns[0]?.bytes ?? 0,
        coldMs: wsCold?.doneMs ?? null,
        runs: wsRuns.map((r) => r.doneMs),
      },
      http: {
        ms: httpTime.summary(),
        bytes: httpRuns[0]?.bytes ?? 0,
        coldMs: httpCold?.ms ?? null,
        runs: httpRuns.map((r) => r.ms),
      },
      unexpectedFrames: unexpected,
    },
  })
})
