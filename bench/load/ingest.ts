#!/usr/bin/env bun
/**
 * Ingest loader: `senders` concurrent loops, each POSTing `requestsPerSender` requests of
 * `batchSize` events (every id new, so the server's dedup check runs on every event and never
 * hits). Bodies are built before the clock starts. Realistic catalogue events (`agent.completed`,
 * channels derived: org, agent and task), so validation and channel derivation are measured too.
 *
 * `kind` picks other events for the state-cost scenario; all three have the same payload and the
 * same derived channels (org:local and one of 16 agent channels), and differ only in state work:
 * - `state`: `agent.status` about one of 1,000 agents (`agentId` rotating): each event sets its
 *   entity in channel_state on both channels (an upsert per channel);
 * - `nostate`: the same payload as `bench.status`, a type outside the catalogue, no key: no state
 *   work (and no catalogue schema check);
 * - `key`: `bench.status` with an explicit `key` (`agent:<agentId>`): state work without the
 *   catalogue schema check, to tell the two apart.
 */
import { Histogram } from '../lib/stats'
import { config, cpuMs, emit, main, postJson } from './common'

interface IngestConfig {
  url: string
  senders: number
  batchSize: number
  requestsPerSender: number
  warmupRequests: number
  timeoutMs: number
  /** The events sent: agent.completed (the default), or a state-cost variant (above). */
  kind?: 'completed' | 'state' | 'nostate' | 'key'
}

main(async () => {
  const cfg = config<IngestConfig>()
  const now = Date.now()
  let n = 0
  const completed = () => {
    const i = n++
    return `{"id":"${crypto.randomUUID()}","type":"agent.completed","orgId":"local","userId":"bench","timestamp":${now + (i % 1000)},"payload":{"agentId":"a${i % 16}","agentName":"bench-agent-${i % 16}","taskId":"t${i % 64}","result":{"ok":true,"files":${i % 7}},"duration":${i % 5000}}}`
  }
  const status = (type: string, withKey: boolean) => () => {
    const i = n++
    const key = withKey ? `"key":"agent:a${i % 1000}",` : ''
    return `{"id":"${crypto.randomUUID()}","type":"${type}","orgId":"local","userId":"bench","timestamp":${now + (i % 1000)},${key}"payload":{"agentId":"a${i % 1000}","agentName":"bench-agent-${i % 16}","status":"running","message":"step ${i % 5000} of the state benchmark"}}`
  }
  const event = { completed, state: status('agent.status', false), nostate: status('bench.status', false), key: status('bench.status', true) }[cfg.kind ?? 'completed']
  const body = () => {
    if (cfg.batchSize === 1) return event()
    const events: string[] = []
    for (let i = 0; i < cfg.batchSize; i++) events.push(event())
    return `{"events":[${events.join(',')}]}`
  }
  const bodies = Array.from({ length: cfg.senders }, () => Array.from({ length: cfg.requestsPerSender }, body))
  const warmup = Array.from({ length: cfg.warmupRequests }, body)

  for (const b of warmup) await postJson(cfg.url, b)

  const latency = new Histogram()
  let stored = 0
  let duplicates = 0
  const deadline = performance.now() + cfg.timeoutMs
  emit({ mark: 'measure:start' })
  const cpuStart = cpuMs()
  const started = performance.now()
  await Promise.all(
    bodies.map(async (mine) => {
      for (const b of mine) {
        if (performance.now() > deadline) throw new Error(`ingest did not finish within ${cfg.timeoutMs} ms`)
        const sent = performance.now()
        const answer = await postJson(cfg.url, b)
        latency.record((performance.now() - sent) * 1000)
        stored += answer.stored
        duplicates += answer.duplicates
      }
    }),
  )
  const seconds = (performance.now() - started) / 1000
  emit({ mark: 'measure:end' })
  const requests = cfg.senders * cfg.requestsPerSender
  emit({
    result: {
      senders: cfg.senders,
      batchSize: cfg.batchSize,
      requests,
      events: requests * cfg.batchSize,
      stored,
      duplicates,
      seconds: Math.round(seconds * 1000) / 1000,
      eventsPerSec: Math.round(stored / seconds),
      requestsPerSec: Math.round(requests / seconds),
      requestLatencyMs: latency.summary(),
      loaderCpuPct: Math.round(((cpuMs() - cpuStart) / (seconds * 1000)) * 1000) / 10,
    },
  })
})
