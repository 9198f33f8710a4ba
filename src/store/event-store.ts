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
  /** Events of a whole organisation with seq > after, ascending, at most `limit`. */
  readOrg(orgId: string, after: number, limit: number): StoredEvent[]
  /** The highest seq ever pruned from a channel (or, with channel undefined, the organisation); 0 if none. */
  prunedThrough(orgId: string, channel?: string): number
  /** Removes up to `limit` events with timestamp < cutoff, oldest first; returns how many it removed. */
  pruneBefore(cutoff: number, limit: number): number
  /** The highest seq ever assigned (0 for a new database). */
  lastSeq(): number
  /** Events currently stored. */
  count(): number
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
}

export interface StoredEvent extends NewEvent {
  seq: number
}
