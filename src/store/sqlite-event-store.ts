import { and, asc, count, eq, gt, inArray, sql } from 'drizzle-orm'
import { statSync } from 'node:fs'
import type { OpenedDatabase } from '../db/client'
import { channelState, eventChannels, events, meta, pruneMarks } from '../db/schema'
import { isDeletingType, type StateChange, stateChangeOf } from '../model/state'
import type { EventStore, NewEvent, StoredEvent } from './event-store'

/** Bumped when the rules of model/state.ts change: the state is then rebuilt from the log. */
const STATE_VERSION = '1'
/** Events read per step while rebuilding the state. */
const REBUILD_CHUNK = 5000

/** One page of a channel's replay: a range of event_channels' primary key, then rowid lookups. */
export const REPLAY_SQL = `SELECT e.* FROM event_channels c JOIN events e ON e.seq = c.seq
  WHERE c.org_id = ? AND c.channel = ? AND c.seq > ? ORDER BY c.seq LIMIT ?`

/** The organisation-wide entry in prune_marks (not a valid channel id, so it cannot collide). */
const WHOLE_ORG = '*'

const p = (name: string) => sql.placeholder(name)

/** The EventStore on bun:sqlite through Drizzle; every query is prepared once. */
export class SqliteEventStore implements EventStore {
  readonly epoch: string
  private stored: number
  private highestSeq: number

  private readonly insertEvent
  private readonly insertChannel
  private readonly setStates
  private readonly selectChannel
  private readonly selectOrg
  private readonly selectMark
  private readonly selectPrunable
  private readonly deleteEvent
  private readonly deleteChannel
  private readonly raiseMark
  private readonly selectStateSeq
  /** Whether the prune walk in progress has passed an event that has not expired (see pruneBefore). */
  private walk: { cutoff: number; passedUnexpired: boolean } | undefined
  private readonly selectRow
  private readonly setState
  private readonly deleteState
  private readonly purgeState
  private readonly selectState
  private readonly countChannelAfter
  private readonly selectChannels

  constructor(private readonly database: OpenedDatabase) {
    const { db, sqlite } = database
    db.insert(meta).values({ key: 'epoch', value: crypto.randomUUID() }).onConflictDoNothing().run()
    this.epoch = db.select().from(meta).where(eq(meta.key, 'epoch')).get()!.value
    this.stored = db.select({ n: count() }).from(events).get()!.n
    const sequence = sqlite.query<{ seq: number }, []>("SELECT seq FROM sqlite_sequence WHERE name = 'events'").get()
    this.highestSeq = sequence?.seq ?? 0

    // The hot paths (append, replay, snapshot) use bun:sqlite's prepared statements directly:
    // Drizzle's named-placeholder mapping cost a third of the ingest time (bench/README.md).
    this.insertEvent = sqlite.prepare<never, [string, string, string, string, string, number, number, string, string | null]>(
      `INSERT INTO events (id, org_id, user_id, type, payload, timestamp, received_at, channels, key)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
    )
    this.insertChannel = sqlite.prepare<never, [string, string, number]>('INSERT INTO event_channels (org_id, channel, seq) VALUES (?, ?, ?)')
    // An entity's state for all the event's channels in one statement (over the channels JSON
    // built for the events row): an upsert per channel cost a quarter of ingest (BENCHMARKS.md).
    this.setStates = sqlite.prepare<never, [string, string, number, string]>(
      `INSERT INTO channel_state (org_id, channel, key, seq) SELECT ?1, value, ?2, ?3 FROM json_each(?4) WHERE true
       ON CONFLICT (org_id, channel, key) DO UPDATE SET seq = excluded.seq`,
    )
    this.setState = sqlite.prepare<never, [string, string, string, number]>(
      'INSERT INTO channel_state (org_id, channel, key, seq) VALUES (?, ?, ?, ?) ON CONFLICT (org_id, channel, key) DO UPDATE SET seq = excluded.seq',
    )
    this.deleteState = sqlite.prepare<never, [string, string, string]>('DELETE FROM channel_state WHERE org_id = ? AND channel = ? AND key = ?')
    this.purgeState = sqlite.prepare<never, [string, string, string, string]>(
      'DELETE FROM channel_state WHERE org_id = ? AND channel = ? AND key >= ? AND key < ?',
    )
    this.selectChannel = sqlite.prepare<EventRow, [string, string, number, number]>(REPLAY_SQL)
    this.selectOrg = sqlite.prepare<EventRow, [string, number, number]>('SELECT * FROM events WHERE org_id = ? AND seq > ? ORDER BY seq LIMIT ?')
    this.selectState = sqlite.prepare<EventRow, [string, string]>(
      `SELECT e.* FROM channel_state s JOIN events e ON e.seq = s.seq WHERE s.org_id = ? AND s.channel = ? ORDER BY s.seq`,
    )

    this.selectMark = db
      .select({ prunedSeq: pruneMarks.prunedSeq })
      .from(pruneMarks)
      .where(and(eq(pruneMarks.orgId, p('orgId')), eq(pruneMarks.channel, p('channel'))))
      .prepare()
    this.selectPrunable = db
      .select({
        seq: events.seq,
        orgId: events.orgId,
        channels: events.channels,
        type: events.type,
        payload: events.payload,
        key: events.key,
        timestamp: events.timestamp,
      })
      .from(events)
      .where(gt(events.seq, p('after')))
      .orderBy(asc(events.seq))
      .limit(p('limit'))
      .prepare()
    this.selectStateSeq = db
      .select({ seq: channelState.seq })
      .from(channelState)
      .where(and(eq(channelState.orgId, p('orgId')), eq(channelState.channel, p('channel')), eq(channelState.key, p('key'))))
      .prepare()
    this.selectRow = db
      .select({ one: sql`1` })
      .from(eventChannels)
      .where(and(eq(eventChannels.orgId, p('orgId')), eq(eventChannels.channel, p('channel')), eq(eventChannels.seq, p('seq'))))
      .prepare()
    this.deleteEvent = db.delete(events).where(eq(events.seq, p('seq'))).prepare()
    this.deleteChannel = db
      .delete(eventChannels)
      .where(and(eq(eventChannels.orgId, p('orgId')), eq(eventChannels.channel, p('channel')), eq(eventChannels.seq, p('seq'))))
      .prepare()
    this.raiseMark = db
      .insert(pruneMarks)
      .values({ orgId: p('orgId'), channel: p('channel'), prunedSeq: p('seq') })
      .onConflictDoUpdate({
        target: [pruneMarks.orgId, pruneMarks.channel],
        set: { prunedSeq: sql`max(${pruneMarks.prunedSeq}, excluded.pruned_seq)` },
      })
      .prepare()
    this.countChannelAfter = sqlite.query<{ n: number }, [string, string, number, number]>(
      'SELECT count(*) AS n FROM (SELECT 1 FROM event_channels WHERE org_id = ? AND channel = ? AND seq > ? LIMIT ?)',
    )
    // Each channel is a range of the primary key; DISTINCT merges them into one seq order.
    this.selectChannels = sqlite.query<EventRow, [string, string, number, number]>(
      `SELECT e.* FROM events e WHERE e.seq IN (
         SELECT DISTINCT seq FROM event_channels
         WHERE org_id = ?1 AND channel IN (SELECT value FROM json_each(?2)) AND seq > ?3
         ORDER BY seq LIMIT ?4)
       ORDER BY e.seq`,
    )
    const version = db.select().from(meta).where(eq(meta.key, 'state_version')).get()?.value
    if (version !== STATE_VERSION) this.rebuildState()
  }

  append(batch: readonly NewEvent[]): Array<StoredEvent | 'duplicate'> {
    const results = this.database.sqlite.transaction(() =>
      batch.map((event): StoredEvent | 'duplicate' => {
        const channels = JSON.stringify(event.channels)
        const { changes, lastInsertRowid } = this.insertEvent.run(
          event.id,
          event.orgId,
          event.userId,
          event.type,
          event.payload,
          event.timestamp,
          event.receivedAt,
          channels,
          event.key ?? null,
        )
        if (changes === 0) return 'duplicate'
        const seq = Number(lastInsertRowid)
        for (const channel of event.channels) this.insertChannel.run(event.orgId, channel, seq)
        if (event.state?.op === 'set') this.setStates.run(event.orgId, event.state.key, seq, channels)
        else if (event.state) for (const channel of event.channels) this.applyState(event.orgId, channel, event.state, seq)
        return { ...event, seq }
      }),
    )()
    // Counters change only once the transaction has committed.
    for (const result of results) {
      if (result === 'duplicate') continue
      this.stored++
      this.highestSeq = result.seq
    }
    return results
  }

  readChannel(orgId: string, channel: string, after: number, limit: number): StoredEvent[] {
    return this.selectChannel.all(orgId, channel, after, limit).map(fromRow)
  }

  readChannels(orgId: string, channels: readonly string[], after: number, limit: number): StoredEvent[] {
    return this.selectChannels.all(orgId, JSON.stringify(channels), after, limit).map(fromRow)
  }

  readOrg(orgId: string, after: number, limit: number): StoredEvent[] {
    return this.selectOrg.all(orgId, after, limit).map(fromRow)
  }

  prunedThrough(orgId: string, channel?: string): number {
    return this.selectMark.get({ orgId, channel: channel ?? WHOLE_ORG })?.prunedSeq ?? 0
  }

  pruneBefore(cutoff: number, after: number, limit: number): { pruned: number; next: number | null } {
    // The walk goes through the log in seq order from `after = 0`; it remembers whether it has
    // passed an unexpired event, which is what keeps a deletion (no index on timestamp needed).
    if (after === 0 || this.walk?.cutoff !== cutoff) this.walk = { cutoff, passedUnexpired: false }
    const walk = this.walk
    const result = this.database.sqlite.transaction(() => {
      const rows = this.selectPrunable.all({ after, limit })
      let pruned = 0
      for (const { seq, orgId, channels, type, payload, key, timestamp } of rows) {
        if (timestamp >= cutoff) {
          walk.passedUnexpired = true
          continue
        }
        if (walk.passedUnexpired && isDeletingType(type)) continue
        const change = stateChangeOf(type, JSON.parse(payload) as Record<string, unknown>, key)
        let kept = 0
        for (const channel of JSON.parse(channels) as string[]) {
          // The latest event of a live entity outlives retention, in the channels where it is that.
          if (change?.op === 'set' && this.selectStateSeq.get({ orgId, channel, key: change.key })?.seq === seq) {
            kept++
            continue
          }
          this.deleteChannel.run({ orgId, channel, seq })
          this.raiseMark.run({ orgId, channel, seq })
        }
        if (kept > 0) continue
        this.raiseMark.run({ orgId, channel: WHOLE_ORG, seq })
        this.deleteEvent.run({ seq })
        pruned++
      }
      return { pruned, next: rows.length < limit ? null : rows.at(-1)!.seq }
    })()
    this.stored -= result.pruned
    return result
  }

  snapshot(orgId: string, channel: string): { seq: number; entities: StoredEvent[] } {
    // One synchronous read: no commit can fall between the rows and the seq they are complete to.
    return { seq: this.highestSeq, entities: this.selectState.all(orgId, channel).map(fromRow) }
  }

  countAfter(orgId: string, channel: string, after: number, cap: number): number {
    return this.countChannelAfter.get(orgId, channel, after, cap)?.n ?? 0
  }

  entityCounts(orgId: string, channels: readonly string[]): Record<string, number> {
    const counts: Record<string, number> = Object.fromEntries(channels.map((channel) => [channel, 0]))
    if (channels.length === 0) return counts
    const rows = this.database.db
      .select({ channel: channelState.channel, n: count() })
      .from(channelState)
      .where(and(eq(channelState.orgId, orgId), inArray(channelState.channel, [...channels])))
      .groupBy(channelState.channel)
      .all()
    for (const row of rows) counts[row.channel] = row.n
    return counts
  }

  /** Recomputes every channel's state from the log (a new database, or rules that changed). */
  rebuildState(): void {
    const { db, sqlite } = this.database
    sqlite.transaction(() => {
      db.delete(channelState).run()
      for (let after = 0; ; ) {
        const rows = db.select().from(events).where(gt(events.seq, after)).orderBy(asc(events.seq)).limit(REBUILD_CHUNK).all()
        for (const row of rows) {
          const change = stateChangeOf(row.type, JSON.parse(row.payload) as Record<string, unknown>, row.key)
          if (!change) continue
          for (const channel of JSON.parse(row.channels) as string[]) {
            // Only the channels the event is still in: retention may have taken it out of others.
            if (this.selectRow.get({ orgId: row.orgId, channel, seq: row.seq })) this.applyState(row.orgId, channel, change, row.seq)
          }
        }
        if (rows.length < REBUILD_CHUNK) break
        after = rows.at(-1)!.seq
      }
      db.insert(meta)
        .values({ key: 'state_version', value: STATE_VERSION })
        .onConflictDoUpdate({ target: meta.key, set: { value: STATE_VERSION } })
        .run()
    })()
  }

  private applyState(orgId: string, channel: string, change: StateChange, seq: number): void {
    switch (change.op) {
      case 'set':
        this.setState.run(orgId, channel, change.key, seq)
        return
      case 'delete':
        for (const key of change.keys) this.deleteState.run(orgId, channel, key)
        return
      case 'purge':
        // Keys are `<kind>:<id>`: every key of the kind sorts in [prefix, prefix with its last character + 1).
        this.purgeState.run(orgId, channel, change.prefix, `${change.prefix.slice(0, -1)}${String.fromCharCode(change.prefix.charCodeAt(change.prefix.length - 1) + 1)}`)
        return
    }
  }

  lastSeq(): number {
    return this.highestSeq
  }

  count(): number {
    return this.stored
  }

  sizeBytes(): number {
    const { sqlite } = this.database
    const pages = sqlite.query<{ bytes: number }, []>('SELECT page_count * page_size AS bytes FROM pragma_page_count(), pragma_page_size()').get()
    let wal = 0
    try {
      wal = statSync(`${sqlite.filename}-wal`).size
    } catch {
      // no write-ahead log (:memory:, or nothing written since the last checkpoint)
    }
    return (pages?.bytes ?? 0) + wal
  }

  close(): void {
    this.database.sqlite.close()
  }
}

/** An `events` row as SQLite returns it to a raw query (column names, not Drizzle's field names). */
interface EventRow {
  seq: number
  id: string
  org_id: string
  user_id: string
  type: string
  payload: string
  timestamp: number
  received_at: number
  channels: string
  key: string | null
}

/**
 * A stored event read back. `channels` is parsed only when asked for: replays and snapshots build
 * frames without it, and parsing it per row was a tenth of the replay time.
 */
class StoredRow implements StoredEvent {
  readonly seq: number
  readonly id: string
  readonly orgId: string
  readonly userId: string
  readonly type: string
  readonly payload: string
  readonly timestamp: number
  readonly receivedAt: number
  readonly key: string | null
  private readonly channelsJson: string
  private parsedChannels: string[] | undefined

  constructor(row: EventRow) {
    this.seq = row.seq
    this.id = row.id
    this.orgId = row.org_id
    this.userId = row.user_id
    this.type = row.type
    this.payload = row.payload
    this.timestamp = row.timestamp
    this.receivedAt = row.received_at
    this.key = row.key
    this.channelsJson = row.channels
  }

  get channels(): string[] {
    this.parsedChannels ??= JSON.parse(this.channelsJson) as string[]
    return this.parsedChannels
  }
}

const fromRow = (row: EventRow): StoredEvent => new StoredRow(row)
