#!/usr/bin/env bun
/**
 * Pre-fills a Switchboard database for the replay scenario, through the project's own
 * SqliteEventStore.append (so seqs, the channel index and counters are exactly what the server
 * would have written), in a separate process, before the server starts.
 *
 * `total` events, of which `target` are on `channel` (spread evenly through the log, so a replay of
 * the channel has to skip the others); the rest are spread over 1,000 other channels. Every event is
 * also on org:<org>, as derived channels always are. Prints one JSON line: {"result":{…}}.
 *
 *   bun bench/setup/fill-db.ts '{"db":"/tmp/x/realtime.db","total":1000000,"target":100000,"channel":"bench:replay"}'
 */
import { openDatabase } from '../../src/db/client'
import type { NewEvent } from '../../src/store/event-store'
import { SqliteEventStore } from '../../src/store/sqlite-event-store'

interface FillConfig {
  db: string
  total: number
  target: number
  channel: string
  orgId?: string
  batch?: number
}

const cfg = JSON.parse(process.argv[2] ?? '{}') as FillConfig
if (!cfg.db || !(cfg.total > 0) || !(cfg.target > 0) || cfg.target > cfg.total || !cfg.channel) {
  console.error('usage: bun bench/setup/fill-db.ts \'{"db":…,"total":n,"target":n,"channel":"kind:name"}\'')
  process.exit(2)
}
const orgId = cfg.orgId ?? 'local'
const batchSize = cfg.batch ?? 10_000
const started = performance.now()
const database = openDatabase(cfg.db)
// Only this process writes, and a crash just means re-running the setup: skip the fsyncs.
database.sqlite.run('PRAGMA synchronous = OFF')
database.sqlite.run('PRAGMA cache_size = -262144')
const store = new SqliteEventStore(database)
const now = Date.now()
// Event i is on the target channel when it is the first to cross a multiple of total/target.
const isTarget = (i: number) => Math.floor(((i + 1) * cfg.target) / cfg.total) > Math.floor((i * cfg.target) / cfg.total)

let stored = 0
let onTarget = 0
for (let from = 0; from < cfg.total; from += batchSize) {
  const batch: NewEvent[] = []
  for (let i = from; i < Math.min(cfg.total, from + batchSize); i++) {
    const target = isTarget(i)
    if (target) onTarget++
    const agentName = target ? 'bench-replay' : `bench-other-${i % 1000}`
    batch.push({
      id: crypto.randomUUID(),
      type: 'agent.status',
      orgId,
      userId: 'bench',
      timestamp: now - cfg.total + i, // within retention, in log order
      receivedAt: now,
      payload: JSON.stringify({ agentId: `a${i % 1000}`, agentName, status: 'running', message: `step ${i} of the replay benchmark` }),
      channels: [`org:${orgId}`, target ? cfg.channel : `bench:other-${i % 1000}`],
    })
  }
  for (const result of store.append(batch)) if (result !== 'duplicate') stored++
}
database.sqlite.run('PRAGMA wal_checkpoint(TRUNCATE)')
const lastSeq = store.lastSeq()
store.close()
console.log(JSON.stringify({ result: { stored, target: onTarget, lastSeq, ms: Math.round(performance.now() - started) } }))
