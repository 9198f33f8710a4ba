import { and, asc, count, eq, gt, gte, inArray, lt, sql } from 'drizzle-orm'
import { statSync } from 'node:fs'
import type { OpenedDatabase } from '../db/client'
import { channelState, eventChannels, events, meta, pruneMarks } from '../db/schema'
import { isDeletingType, type StateChange, stateChangeOf } from '../model/state'
import type { EventStore, NewEvent, StoredEvent } from './event-store'

/** Bumped when the rules of model/state.ts change: the state is then rebuilt from the log. */
const STATE_VERSION = '1'
/** Events read per step while rebuilding the state. */
const REBUILD_CHUNK = 5000

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
  private readonly selectChannel
  private readonly selectOrg
  private readonly selectMark
  private readonly selectExpired
  private readonly deleteEvent
  private readonly deleteChannel
  private readonly raiseMark
  private readonly selectHorizon
  private horizon: { cutoff: number; seq: number } | undefined
  private readonly selectLive
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

    this.insertEvent = db
      .insert(events)
      .values({
        id: p('id'),
        orgId: p('orgId'),
        userId: p('userId'),
        type: p('type'),
        payload: p('payload'),
        timestamp: p('timestamp'),
        receivedAt: p('receivedAt'),
        channels: p('channels'),
        key: p('key'),
      })
      .onConflictDoNothing({ target: events.id })
      .returning({ seq: events.seq })
      .prepare()
    this.insertChannel = db
      .insert(eventChannels)
      .values({ orgId: p('orgId'), channel: p('channel'), seq: p('seq') })
      .prepare()
    this.selectChannel = db
      .select({ event: events })
      .from(eventChannels)
      .innerJoin(events, eq(events.seq, eventChannels.seq))
      .where(
        and(eq(eventChannels.orgId, p('orgId')), eq(eventChannels.channel, p('channel')), gt(eventChannels.seq, p('after'))),
      )
      .orderBy(asc(eventChannels.seq))
      .limit(p('limit'))
      .prepare()
    this.selectOrg = db
      .select()
      .from(events)
      .where(and(eq(events.orgId, p('orgId')), gt(events.seq, p('after'))))
      .orderBy(asc(events.seq))
      .limit(p('limit'))
      .prepare()
    this.selectMark = db
      .select({ prunedSeq: pruneMarks.prunedSeq })
      .from(pruneMarks)
      .where(and(eq(pruneMarks.orgId, p('orgId')), eq(pruneMarks.channel, p('channel'))))
      .prepare()
    this.selectExpired = db
      .select({ seq: events.seq, orgId: events.orgId, channels: events.channels, type: events.type })
      .from(events)
      .where(and(gt(events.seq, p('after')), lt(events.timestamp, p('cutoff'))))
      .orderBy(asc(events.seq))
      .limit(p('limit'))
      .prepare()
    this.selectHorizon = sqlite.query<{ seq: number | null }, [number]>('SELECT min(seq) AS seq FROM events WHERE timestamp >= ?')
    this.selectLive = db
      .select({ one: sql`1` })
      .from(channelState)
      .where(and(eq(channelState.seq, p('seq')), eq(channelState.orgId, p('orgId')), eq(channelState.channel, p('channel'))))
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
    this.setState = db
      .insert(channelState)
      .values({ orgId: p('orgId'), channel: p('channel'), key: p('key'), seq: p('seq') })
      .onConflictDoUpdate({ target: [channelState.orgId, channelState.channel, channelState.key], set: { seq: sql`excluded.seq` } })
      .prepare()
    this.deleteState = db
      .delete(channelState)
      .where(and(eq(channelState.orgId, p('orgId')), eq(channelState.channel, p('channel')), eq(channelState.key, p('key'))))
      .prepare()
    this.purgeState = db
      .delete(channelState)
      .where(
        and(
          eq(channelState.orgId, p('orgId')),
          eq(channelState.channel, p('channel')),
          gte(channelState.key, p('from')),
          lt(channelState.key, p('to')),
        ),
      )
      .prepare()
    this.selectState = db
      .select({ event: events })
      .from(channelState)
      .innerJoin(events, eq(events.seq, channelState.seq))
      .where(and(eq(channelState.orgId, p('orgId')), eq(channelState.channel, p('channel'))))
      .orderBy(asc(channelState.seq))
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
        const row = this.insertEvent.get({
          id: event.id,
          orgId: event.orgId,
          userId: event.userId,
          type: event.type,
          payload: event.payload,
          timestamp: event.timestamp,
          receivedAt: event.receivedAt,
          channels: JSON.stringify(event.channels),
          key: event.key ?? null,
        })
        if (!row) return 'duplicate'
        for (const channel of event.channels) {
          this.insertChannel.run({ orgId: event.orgId, channel, seq: row.seq })
          if (event.state) this.applyState(event.orgId, channel, event.state, row.seq)
        }
        return { ...event, seq: row.seq }
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
    return this.selectChannel.all({ orgId, channel, after, limit }).map((row) => toStored(row.event))
  }

  readChannels(orgId: string, channels: readonly string[], after: number, limit: number): StoredEvent[] {
    return this.selectChannels.all(orgId, JSON.stringify(channels), after, limit).map((row) =>
      toStored({
        seq: row.seq,
        id: row.id,
        orgId: row.org_id,
        userId: row.user_id,
        type: row.type,
        payload: row.payload,
        timestamp: row.timestamp,
        receivedAt: row.received_at,
        channels: row.channels,
        key: row.key,
      }),
    )
  }

  readOrg(orgId: string, after: number, limit: number): StoredEvent[] {
    return this.selectOrg.all({ orgId, after, limit }).map(toStored)
  }

  prunedThrough(orgId: string, channel?: string): number {
    return this.selectMark.get({ orgId, channel: channel ?? WHOLE_ORG })?.prunedSeq ?? 0
  }

  pruneBefore(cutoff: number, after: number, limit: number): { pruned: number; next: number | null } {
    const result = this.database.sqlite.transaction(() => {
      const horizon = this.horizonFor(cutoff)
      const expired = this.selectExpired.all({ cutoff, after, limit })
      let pruned = 0
      for (const { seq, orgId, channels, type } of expired) {
        if (seq >= horizon && isDeletingType(type)) continue
        let kept = 0
        for (const channel of JSON.parse(channels) as string[]) {
          // The latest event of a live entity outlives retention, in the channels where it is that.
          if (this.selectLive.get({ seq, orgId, channel })) {
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
      return { pruned, next: expired.length < limit ? null : expired.at(-1)!.seq }
    })()
    this.stored -= result.pruned
    return result
  }

  /**
   * The seq of the first event not expired at `cutoff`. It only grows while a prune runs (new
   * events come after it), so it is read once per cutoff rather than once per chunk.
   */
  private horizonFor(cutoff: number): number {
    if (this.horizon?.cutoff !== cutoff) {
      this.horizon = { cutoff, seq: this.selectHorizon.get(cutoff)?.seq ?? Number.MAX_SAFE_INTEGER }
    }
    return this.horizon.seq
  }

  snapshot(orgId: string, channel: string): { seq: number; entities: StoredEvent[] } {
    // One synchronous read: no commit can fall between the rows and the seq they are complete to.
    return { seq: this.highestSeq, entities: this.selectState.all({ orgId, channel }).map((row) => toStored(row.event)) }
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
        this.setState.run({ orgId, channel, key: change.key, seq })
        return
      case 'delete':
        for (const key of change.keys) this.deleteState.run({ orgId, channel, key })
        return
      case 'purge':
        // Keys are `<kind>:<id>`: every key of the kind sorts in [prefix, prefix with its last character + 1).
        this.purgeState.run({ orgId, channel, from: change.prefix, to: `${change.prefix.slice(0, -1)}${String.fromCharCode(change.prefix.charCodeAt(change.prefix.length - 1) + 1)}` })
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

function toStored(row: typeof events.$inferSelect): StoredEvent {
  return { ...row, channels: JSON.parse(row.channels) as string[] }
}
