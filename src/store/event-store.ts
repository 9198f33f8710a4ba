import type { StateChange } from '../model/state'

/**
 * The event log behind every source and every replay. Storage is reached only through this
 * interface, so a network store (Postgres) can replace SQLite without touching the protocol code.
 *
 * Ordering and atomicity contract:
 * - `append` stores a whole batch in one transaction: all of it or none of it.
 * - Each new event gets a `seq` larger than every seq assigned before, never reused (also after
 *   pruning and restarts). A duplicate id is not stored and gets no seq.
 * - The methods are synchronous. The realtime layer relies on that: "commit, then publish" and
 *   "read the last replay page, then subscribe" each run without yielding, so a subscriber can never
 *   fall between a replay and the live stream. An asynchronous store must keep that guarantee
 *   some other way (buffer live frames during replay and drop seqs already replayed).
 */
export interface EventStore {
  /** Random id of this database, made when it was created: cursors from another database are void. */
  readonly epoch: string
  /** Stores a batch; the result has one entry per input, in order: the stored event or 'duplicate'. */
  append(events: readonly NewEvent[]): Array<StoredEvent | 'duplicate'>
  /** Events of one channel with seq > after, ascending, at most `limit`. An index range scan. */
  readChannel(orgId: string, channel: string, after: number, limit: number): StoredEvent[]
  /**
   * Events in any of `channels` with seq > after, ascending, each once, at most `limit`: one
   * cursor for several channels (Server-Sent Events).
   */
  readChannels(orgId: string, channels: readonly string[], after: number, limit: number): StoredEvent[]
  /** Events of a whole organisation with seq > after, ascending, at most `limit`. */
  readOrg(orgId: string, after: number, limit: number): StoredEvent[]
  /** The highest seq ever pruned from a channel (or, with channel undefined, the organisation); 0 if none. */
  prunedThrough(orgId: string, channel?: string): number
  /**
   * One step of retention: examines up to `limit` events with seq > after, ascending (a walk from
   * `after = 0` to the end, resumed with the returned `next`); those with timestamp < cutoff are
   * expired. Each such event leaves every channel where it is not the latest event of a live
   * entity, and the log once it is in no channel. A deleting event (task.deleted, …) is kept while
   * it comes at or after the first event that has not expired: an earlier event of what it deleted
   * may still be there, and what remains of a channel must always replay to the same state.
   * Returns the events removed and the `after` of the next step, or null when the log has been
   * examined to the end.
   */
  pruneBefore(cutoff: number, after: number, limit: number): { pruned: number; next: number | null }
  /**
   * A channel's state: the latest event of every live entity, ascending by seq, and the seq the
   * state is complete up to (events after it are not in it).
   */
  snapshot(orgId: string, channel: string): { seq: number; entities: StoredEvent[] }
  /** How many events of a channel come after `after`, counting no further than `cap`. */
  countAfter(orgId: string, channel: string, after: number, cap: number): number
  /** Live entities per channel, for the given channels of an organisation. */
  entityCounts(orgId: string, channels: readonly string[]): Record<string, number>
  /** The highest seq ever assigned (0 for a new database). */
  lastSeq(): number
  /** Events currently stored. */
  count(): number
  /** Bytes the store occupies (for the database size metric). */
  sizeBytes(): number
  close(): void
}

/** An event ready to store: validated, channels decided, payload serialised once. */
export interface NewEvent {
  id: string
  type: string
  orgId: string
  userId: string
  timestamp: number
  receivedAt: number
  /** The payload as JSON text. */
  payload: string
  channels: string[]
  /** The entity key given at ingest, if any. */
  key?: string | null
  /** What the event does to its channels' state (model/state.ts), decided at ingest. */
  state?: StateChange
}

export interface StoredEvent extends NewEvent {
  seq: number
}
