#!/usr/bin/env bun
/**
 * Replay loader: a fresh socket subscribes to `channel` with since=0 and counts the replayed event
 * frames until the `expected`-th arrives; `runs` times, one after another.
 */
import { connectRaw, frameText, isFrameOfType, type RawWs } from '../lib/raw-ws'
import { clock, median } from '../lib/stats'
import { config, cpuMs, emit, main, waitUntil } from './common'

interface ReplayConfig {
  host: string
  port: number
  channel: string
  /** Events of the channel stored before the server started. */
  expected: number
  /** The event type every replayed frame has. */
  eventType: string
  runs: number
  timeoutMs: number
}

main(async () => {
  const cfg = config<ReplayConfig>()
  const runs = []
  for (let run = 0; run < cfg.runs; run++) {
    let count = 0
    let firstAt = 0
    let lastAt = 0
    let subscribed = false
    let bytes = 0
    const unexpected: string[] = []
    let closedCode = 0
    const conn = await connectRaw(
      cfg.host,
      cfg.port,
      '/ws',
      run,
      {
        onText(_c, buf, start, end, at) {
          if (isFrameOfType(buf, start, end, cfg.eventType)) {
            if (count++ === 0) firstAt = at
            lastAt = at
            bytes += end - start
          } else if (isFrameOfType(buf, start, end, 'subscribed')) subscribed = true
          else if (unexpected.length < 10) unexpected.push(frameText(buf, start, end))
        },
        onClose(c: RawWs) {
          closedCode = c.closeCode
        },
      },
      clock,
    )
    emit({ mark: 'run:start' })
    const cpuStart = cpuMs()
    const sentAt = clock()
    conn.sendText(JSON.stringify({ type: 'subscribe', channelId: cfg.channel, since: 0 }))
    await waitUntil(() => count >= cfg.expected || closedCode !== 0, cfg.timeoutMs, `${cfg.expected} replayed events (got ${count})`, 2)
    emit({ mark: 'run:end' })
    conn.end()
    if (count < cfg.expected) throw new Error(`replay stopped after ${count} of ${cfg.expected} events: socket closed with ${closedCode}`)
    const seconds = (lastAt - sentAt) / 1000
    runs.push({
      events: count,
      seconds: Math.round(seconds * 1000) / 1000,
      eventsPerSec: Math.round(count / seconds),
      firstEventMs: Math.round((firstAt - sentAt) * 1000) / 1000,
      megabytesPerSec: Math.round((bytes / seconds / 1e6) * 10) / 10,
      loaderCpuPct: Math.round(((cpuMs() - cpuStart) / (seconds * 1000)) * 1000) / 10,
      subscribed,
      unexpectedFrames: unexpected,
    })
  }
  emit({
    result: {
      expected: cfg.expected,
      eventsPerSec: Math.round(median(runs.map((r) => r.eventsPerSec))),
      firstEventMs: median(runs.map((r) => r.firstEventMs)),
      runs,
    },
  })
})
