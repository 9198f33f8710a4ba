#!/usr/bin/env bun
/**
 * Pre-fills a Switchboard database for the snapshot scenario, through the project's own
 * SqliteEventStore.append with each event's state change from model/state.ts (so channel_state is
 * exactly what the server would have kept), in a separate process, before the server starts.
 *
 * `total` events. A share of them (`share`, default 0.5, spread evenly through the log) are
 * `agent.status` events on `channel` (and, as derivation would put them, `agent:<agentName>`) about
 * `entities` distinct agents; the rest are `task.status_changed` events on 1,000 other channels
 * (`bench:other-<n>`, 50,000 task keys), so the channel's state is a small part of channel_state.
 *
 * Agent k's last event sits at about (k + 1) / entities of the log: the latest events of the
 * channel's entities are spread through all of it, as they are once agents come and go (a
 * snapshot cannot read them from the last few pages). Every agent has at least that last event, so
 * the channel ends with exactly `entities` live entities.
 *
 * Prints one JSON line: {"result":{stored, onChannel, entities, stateRows, lastSeq, ms}}.
 *
 *   bun bench/setup/fill-state.ts '{"db":"/tmp/x/realtime.db","total":1000000,"entities":10000,"channel":"org:local"}'
 */
import { openDatabase } from '../../src/db/client'
import { stateChangeOf } from '../../src/model/state'
import type { NewEvent } from '../../src/store/event-store'
import { SqliteEventStore } from '../../src/store/sqlite-event-store'

interface FillStateConfig {
  db: string
  total: number
  entities: number
  channel: string
  /** Fraction of the events on `channel` (default 0.5). */
  share?: number
  orgId?: string
  batch?: number
}

const OTHER_CHANNELS = 1000
const OTHER_TASKS = 50_000
const STATUSES = ['running', 'idle', 'blocked', 'done'] as const

const cfg = JSON.parse(process.argv[2] ?? '{}') as FillStateConfig
const share = cfg.share ?? 0.5
const onCount = Math.round(cfg.total * share)
if (!cfg.db || !(cfg.total > 0) || !(cfg.entities > 0) || !cfg.channel || !(share > 0 && share <= 1) || onCount < cfg.entities) {
  console.error('usage: bun bench/setup/fill-state.ts \'{"db":…,"total":n,"entities":n,"channel":"kind:name"}\' (total × share ≥ entities)')
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

/** Event i is on the channel when it is the first to cross a multiple of total / onCount. */
const isOnChannel = (i: number) => Math.floor(((i + 1) * onCount) / cfg.total) > Math.floor((i * onCount) / cfg.total)
/** A fixed integer hash (so every run fills the same database). */
const mix = (n: number) => {
  let h = Math.imul(n ^ (n >>> 16), 0x45d9f3b)
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b)
  return (h ^ (h >>> 16)) >>> 0
}
/**
 * The agent of the j-th event on the channel: agents below `retired` have had their last event.
 * When j is the last event before agent `retired` retires, it is that agent's; otherwise any agent
 * still active.
 */
const agentOf = (j: number) => {
  const retired = Math.floor((j * cfg.entities) / onCount)
  const retiresNow = Math.floor(((j + 1) * cfg.entities) / onCount) > retired
  return retiresNow ? retired : retired + (mix(j) % (cfg.entities - retired))
}

let stored = 0
let onChannel = 0
for (let from = 0; from < cfg.total; from += batchSize) {
  const batch: NewEvent[] = []
  for (let i = from; i < Math.min(cfg.total, from + batchSize); i++) {
    let type: string
    let payload: Record<string, unknown>
    let channels: string[]
    if (isOnChannel(i)) {
      const j = onChannel++
      const k = agentOf(j)
      type = 'agent.status'
      payload = { agentId: `a${k}`, agentName: `bench-agent-${k}`, status: STATUSES[j % STATUSES.length], message: `step ${j} of the snapshot benchmark` }
      channels = [cfg.channel, `agent:bench-agent-${k}`]
    } else {
      type = 'task.status_changed'
      payload = { taskId: `t${i % OTHER_TASKS}`, oldStatus: 'todo', newStatus: 'doing' }
      channels = [`bench:other-${i % OTHER_CHANNELS}`]
    }
    batch.push({
      id: crypto.randomUUID(),
      type,
      orgId,
      userId: 'bench',
      timestamp: now - cfg.total + i, // within retention, in log order
      receivedAt: now,
      payload: JSON.stringify(payload),
      channels,
      key: null,
      state: stateChangeOf(type, payload),
    })
  }
  for (const result of store.append(batch)) if (result !== 'duplicate') stored++
}
database.sqlite.run('PRAGMA wal_checkpoint(TRUNCATE)')
const stateRows = database.sqlite
  .query<{ n: number }, [string, string]>('SELECT count(*) AS n FROM channel_state WHERE org_id = ? AND channel = ?')
  .get(orgId, cfg.channel)!.n
const lastSeq = store.lastSeq()
store.close()
console.log(
  JSON.stringify({ result: { stored, onChannel, entities: cfg.entities, stateRows, lastSeq, ms: Math.round(performance.now() - started) } }),
)
