import { index, integer, primaryKey, sqliteTable, text } from 'drizzle-orm/sqlite-core'

/**
 * Tables (Drizzle's "schema"). Migrations are generated from this file into drizzle/ with
 * `bun run db:generate` and applied at startup; never edit them by hand.
 */

/**
 * The event log. `seq` is AUTOINCREMENT so SQLite never reuses a value, even after the newest rows
 * are pruned: it is the replay cursor clients keep across restarts.
 */
export const events = sqliteTable(
  'events',
  {
    seq: integer('seq').primaryKey({ autoIncrement: true }),
    id: text('id').notNull().unique(),
    orgId: text('org_id').notNull(),
    userId: text('user_id').notNull(),
    type: text('type').notNull(),
    /** The payload as JSON text, sent to subscribers as it is stored (never re-serialised). */
    payload: text('payload').notNull(),
    timestamp: integer('timestamp').notNull(),
    receivedAt: integer('received_at').notNull(),
    /** JSON array of the channel ids the event was delivered on. */
    channels: text('channels').notNull(),
    /** The entity key given at ingest, if any (else the catalogue derives it: model/state.ts). */
    key: text('key'),
  },
  // No index on timestamp: retention walks the log in seq order (see EventStore.pruneBefore), and
  // every index costs ingest 5-10 % (BENCHMARKS.md).
  (t) => [index('events_org_seq').on(t.orgId, t.seq)],
)

/**
 * One row per (event, channel): replaying a channel is a range scan of this primary key.
 */
export const eventChannels = sqliteTable(
  'event_channels',
  {
    orgId: text('org_id').notNull(),
    channel: text('channel').notNull(),
    seq: integer('seq').notNull(),
  },
  (t) => [primaryKey({ columns: [t.orgId, t.channel, t.seq] })],
)

/**
 * The highest seq pruned from each channel (channel `*` stands for the whole organisation), so a
 * replay can tell whether anything after its cursor is gone (`truncated`).
 */
export const pruneMarks = sqliteTable(
  'prune_marks',
  {
    orgId: text('org_id').notNull(),
    channel: text('channel').notNull(),
    prunedSeq: integer('pruned_seq').notNull(),
  },
  (t) => [primaryKey({ columns: [t.orgId, t.channel] })],
)

/**
 * Channel state: per (organisation, channel, entity key), the seq of the latest event for that
 * entity. Written in the transaction that stores the event, so state and log never disagree;
 * retention never prunes an event a row here points to. Deleted entities have no row.
 */
export const channelState = sqliteTable(
  'channel_state',
  {
    orgId: text('org_id').notNull(),
    channel: text('channel').notNull(),
    key: text('key').notNull(),
    seq: integer('seq').notNull(),
  },
  (t) => [primaryKey({ columns: [t.orgId, t.channel, t.key] })],
)

/** Small key/value facts about this database, such as its `epoch`. */
export const meta = sqliteTable('meta', {
  key: text('key').primaryKey(),
  value: text('value').notNull(),
})

/**
 * Service credentials. Only the SHA-256 of a key is stored: the key itself is shown once, when
 * it is created, and cannot be recovered from the database.
 */
export const apiKeys = sqliteTable('api_keys', {
  id: text('id').primaryKey(),
  orgId: text('org_id').notNull(),
  label: text('label').notNull(),
  hash: text('hash').notNull().unique(),
  createdAt: integer('created_at').notNull(),
  /** Unix ms after which the key is refused; null = never. */
  expiresAt: integer('expires_at'),
  lastUsedAt: integer('last_used_at'),
  revokedAt: integer('revoked_at'),
})
