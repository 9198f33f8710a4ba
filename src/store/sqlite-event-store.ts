import { and, asc, count, eq, gt, lt, sql } from 'drizzle-orm'
import type { OpenedDatabase } from '../db/client'
import { eventChannels, events, meta, pruneMarks } from '../db/schema'
import type { EventStore, NewEvent, StoredEvent } from './event-store'

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
      .select({ seq: events.seq, orgId: events.orgId, channels: events.channels })
      .from(events)
      .where(lt(events.timestamp, p('cutoff')))
      .orderBy(asc(events.timestamp))
      .limit(p('limit'))
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
  }

  append(batch: readonly NewEvent[]): Array<StoredEvent | 'duplicate'> {
    const results = this.database.sqlite.transaction(() =>
      batch.map((event): StoredEvent | 'duplicate' => {
        const row = this.insertEvent.get({ ...event, channels: JSON.stringify(event.channels) })
        if (!row) return 'duplicate'
        for (const channel of event.channels) this.insertChannel.run({ orgId: event.orgId, channel, seq: row.seq })
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

  readOrg(orgId: string, after: number, limit: number): StoredEvent[] {
    return this.selectOrg.all({ orgId, after, limit }).map(toStored)
  }

  prunedThrough(orgId: string, channel?: string): number {
    return this.selectMark.get({ orgId, channel: channel ?? WHOLE_ORG })?.prunedSeq ?? 0
  }

  pruneBefore(cutoff: number, limit: number): number {
    const pruned = this.database.sqlite.transaction(() => {
      const expired = this.selectExpired.all({ cutoff, limit })
      for (const { seq, orgId, channels } of expired) {
        for (const channel of JSON.parse(channels) as string[]) {
          this.deleteChannel.run({ orgId, channel, seq })
          this.raiseMark.run({ orgId, channel, seq })
        }
        this.raiseMark.run({ orgId, channel: WHOLE_ORG, seq })
        this.deleteEvent.run({ seq })
      }
      return expired.length
    })()
    this.stored -= pruned
    return pruned
  }

  lastSeq(): number {
    return this.highestSeq
  }

  count(): number {
    return this.stored
  }

  close(): void {
    this.database.sqlite.close()
  }
}

function toStored(row: typeof events.$inferSelect): StoredEvent {
  return { ...row, channels: JSON.parse(row.channels) as string[] }
}
