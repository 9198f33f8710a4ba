import type { ChannelState } from '../model/http'
import { stateChangeOf } from '../model/state'
import { type BackoffOptions, backoffDelay, DEFAULT_BACKOFF } from './backoff'
import type { Clock } from './clock'
import type { CustomTypes, KnownFrame, OtherFrame } from './types'

/** What one update changed, by entity key. `reset`: the whole state was replaced (first sync, or after `truncated`). */
export interface LiveChange {
  added: string[]
  updated: string[]
  removed: string[]
  reset: boolean
}

/** An immutable view of a channel's state; a new object after every change, the same one otherwise. */
export interface LiveSnapshot<C extends CustomTypes = {}> {
  /**
   * Entity key → the latest event for it, for events of catalogue (and declared) types: a
   * discriminated union, so `if (event.type === 'agent.status') event.payload.status` is typed.
   */
  entities: ReadonlyMap<string, KnownFrame<C>>
  /** Entities whose latest event is of a type neither in the catalogue nor declared (explicit keys). */
  others: ReadonlyMap<string, OtherFrame>
  /** The state includes every event of the channel up to this seq. */
  seq: number
  /** False until the first state has arrived. */
  synced: boolean
}

export interface LiveChannel<C extends CustomTypes = {}> {
  /** The current state. With `subscribe`, fits React's useSyncExternalStore (both work unbound). */
  getSnapshot: () => LiveSnapshot<C>
  /** Calls `listener` after every change (coalesced per microtask); returns the unsubscribe. */
  subscribe: (listener: (change: LiveChange) => void) => () => void
  /** Stops following the channel. */
  close(): void
}

/**
 * A channel's state kept current: the state is fetched (GET /api/channels/:id/state) once the
 * channel's event stream has a cursor, events arriving meanwhile are held and those the state
 * already covers dropped, then every later event is applied by the rules the server keeps state
 * with (model/state.ts). On `truncated` (events were lost) the state is fetched again.
 */
export class LiveStore<C extends CustomTypes = {}> implements LiveChannel<C> {
  private entities = new Map<string, KnownFrame<C> | OtherFrame>()
  private snapshot: LiveSnapshot<C> = { entities: new Map(), others: new Map(), seq: 0, synced: false }
  private seq = 0
  /** Events held while a state is being fetched; null when in sync. */
  private held: OtherFrame[] | null = []
  private generation = 0
  private attempt = 0
  private retryTimer: unknown
  private pending: LiveChange = { added: [], updated: [], removed: [], reset: false }
  private notifyScheduled = false
  private readonly listeners = new Set<(change: LiveChange) => void>()
  private closed = false

  constructor(
    private readonly fetchState: () => Promise<ChannelState>,
    private readonly clock: Clock,
    private readonly stop: () => void,
    /** Whether an event type is in the catalogue or declared by the application. */
    private readonly isKnown: (type: string) => boolean,
    /** How long to wait before fetching a state again after a failure. */
    private readonly backoff: BackoffOptions = DEFAULT_BACKOFF,
  ) {}

  getSnapshot = (): LiveSnapshot<C> => this.snapshot

  subscribe = (listener: (change: LiveChange) => void): (() => void) => {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.generation++
    this.clock.clearTimeout(this.retryTimer)
    this.listeners.clear()
    this.stop()
  }

  /** An event of the channel, in seq order, exactly once (the client's stream guarantees both). */
  event(frame: OtherFrame): void {
    if (this.closed) return
    if (this.held) this.held.push(frame)
    else if (frame.seq > this.seq) this.apply(frame)
  }

  /** Fetch the state again: the stream has its cursor now, or reported that events were lost. */
  async resync(): Promise<void> {
    if (this.closed) return
    const generation = ++this.generation
    // Whatever was held is covered by the state fetched now, or belongs to a database that was
    // replaced (truncated): either way it must not be applied on top of the new state.
    this.held = []
    this.clock.clearTimeout(this.retryTimer)
    let state: ChannelState
    try {
      state = await this.fetchState()
    } catch {
      if (generation !== this.generation) return
      this.retryTimer = this.clock.setTimeout(() => void this.resync(), backoffDelay(this.attempt++, this.backoff, () => this.clock.random()))
      return
    }
    if (generation !== this.generation || this.closed) return
    this.attempt = 0
    const before = this.entities
    this.entities = new Map(state.entities.map(({ channels: _, ...event }) => [keyOf(event), { ...event, channelId: state.channelId } as OtherFrame]))
    this.seq = state.seq
    this.pending = { added: [], updated: [], removed: [], reset: true }
    for (const key of this.entities.keys()) (before.has(key) ? this.pending.updated : this.pending.added).push(key)
    for (const key of before.keys()) if (!this.entities.has(key)) this.pending.removed.push(key)
    const held = this.held ?? []
    this.held = null
    for (const frame of held) if (frame.seq > this.seq) this.apply(frame)
    this.changed()
  }

  private apply(frame: OtherFrame): void {
    this.seq = frame.seq
    const change = stateChangeOf(frame.type, frame.payload, frame.key)
    if (!change) return this.changed()
    switch (change.op) {
      case 'set':
        ;(this.entities.has(change.key) ? this.pending.updated : this.pending.added).push(change.key)
        this.entities.set(change.key, frame)
        break
      case 'delete':
        for (const key of change.keys) if (this.entities.delete(key)) this.pending.removed.push(key)
        break
      case 'purge':
        for (const key of [...this.entities.keys()]) {
          if (key.startsWith(change.prefix) && this.entities.delete(key)) this.pending.removed.push(key)
        }
        break
    }
    this.changed()
  }

  /** Publishes a new snapshot and tells listeners, once per microtask however many events came. */
  private changed(): void {
    if (this.notifyScheduled) return
    this.notifyScheduled = true
    queueMicrotask(() => {
      this.notifyScheduled = false
      if (this.closed) return
      const entities = new Map<string, KnownFrame<C>>()
      const others = new Map<string, OtherFrame>()
      for (const [key, event] of this.entities) {
        if (this.isKnown(event.type)) entities.set(key, event as KnownFrame<C>)
        else others.set(key, event as OtherFrame)
      }
      this.snapshot = { entities, others, seq: this.seq, synced: true }
      const change = this.pending
      this.pending = { added: [], updated: [], removed: [], reset: false }
      for (const listener of [...this.listeners]) {
        try {
          listener(change)
        } catch (error) {
          // One failing listener must not keep the others from hearing of the change.
          queueMicrotask(() => {
            throw error
          })
        }
      }
    })
  }
}

/** The state key of an event from the state endpoint (every entity there has one). */
function keyOf(event: { type: string; payload: Record<string, unknown>; key?: string }): string {
  const change = stateChangeOf(event.type, event.payload, event.key)
  return change?.op === 'set' ? change.key : `seq:${JSON.stringify(event)}`
}
