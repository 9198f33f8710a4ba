import type { Principal } from '../../auth'
import { ApiError, badRequest, forbidden } from '../../errors'
import type { Logger } from '../../log'
import type { Metrics } from '../../metrics'
import { ChannelDerivationError, deriveChannels, orgOfChannel } from '../../model/channels'
import { stateChangeOf } from '../../model/state'
import type { EventInput } from '../../model/events'
import type { ChannelState, HistoryPage, IngestResult } from '../../model/http'
import type { Broker } from '../../realtime/broker'
import { wireEvent } from '../../realtime/frames'
import type { EventStore, NewEvent } from '../../store/event-store'

interface Pending {
  events: NewEvent[]
  /** performance.now() when the ingest was queued, for the latency histogram. */
  queuedAt: number
  resolve(result: IngestResult): void
  reject(error: unknown): void
}

export interface Replay {
  /** Where the replay starts: the cursor, or 0 when it is void here. */
  from: number
  truncated: boolean
}

/**
 * Every event source (HTTP ingest, in-process publish, upstream sync) goes through `ingest`:
 * authorise → decide channels → store → publish. Concurrent ingests are committed together: the
 * batches queued while the event loop was busy share one transaction (group commit), so throughput
 * stays near SQLite's batch rate. An ingest resolves only after its events are committed, and
 * committed events are published in the same synchronous step (see EventStore's contract).
 */
export class EventService {
  private queue: Pending[] = []
  private flushScheduled = false

  constructor(
    private readonly store: EventStore,
    private readonly broker: Broker,
    private readonly log: Logger,
    private readonly metrics?: Metrics,
    private readonly now: () => number = Date.now,
  ) {}

  ingest(principal: Principal, inputs: readonly EventInput[]): Promise<IngestResult> {
    let events: NewEvent[]
    try {
      events = inputs.map((input, index) => this.prepare(principal, input, inputs.length > 1 ? `events[${index}].` : ''))
    } catch (error) {
      return Promise.reject(error)
    }
    return new Promise<IngestResult>((resolve, reject) => {
      this.queue.push({ events, queuedAt: performance.now(), resolve, reject })
      if (!this.flushScheduled) {
        this.flushScheduled = true
        setImmediate(() => this.flush())
      }
    })
  }

  /** Commits everything queued now (also used on shutdown so no accepted write is left behind). */
  flush(): void {
    this.flushScheduled = false
    const batch = this.queue
    if (batch.length === 0) return
    this.queue = []
    let results: ReturnType<EventStore['append']>
    try {
      results = this.store.append(batch.flatMap((pending) => pending.events))
    } catch (error) {
      this.log.error('store_failed', { error: String(error), events: batch.reduce((n, pending) => n + pending.events.length, 0) })
      for (const pending of batch) pending.reject(new ApiError(503, 'store_unavailable', 'the event store could not commit; retry'))
      return
    }
    const stored = results.filter((result) => result !== 'duplicate')
    if (stored.length > 0) this.broker.publish(stored)
    const committedAt = performance.now()
    this.metrics?.ingested.inc(stored.length)
    this.metrics?.deduplicated.inc(results.length - stored.length)
    for (const pending of batch) this.metrics?.ingestSeconds.observe((committedAt - pending.queuedAt) / 1000)
    let offset = 0
    for (const pending of batch) {
      const mine = results.slice(offset, offset + pending.events.length)
      offset += pending.events.length
      const duplicates = mine.filter((result) => result === 'duplicate').length
      pending.resolve({ stored: mine.length - duplicates, duplicates })
    }
  }

  /** Where a replay of `channel` (or the whole organisation) after `since` starts, and whether it is whole. */
  replayFrom(orgId: string, channel: string | undefined, since: number, epoch?: string): Replay {
    if ((epoch !== undefined && epoch !== this.store.epoch) || since > this.store.lastSeq()) {
      return { from: 0, truncated: true }
    }
    return { from: since, truncated: this.store.prunedThrough(orgId, channel) > since }
  }

  history(principal: Principal, query: { channel?: string; since: number; limit: number; epoch?: string }): HistoryPage {
    if (query.channel !== undefined) this.authorizeChannel(principal, query.channel, 'channel')
    const { from, truncated } = this.replayFrom(principal.orgId, query.channel, query.since, query.epoch)
    const rows =
      query.channel === undefined
        ? this.store.readOrg(principal.orgId, from, query.limit + 1)
        : this.store.readChannel(principal.orgId, query.channel, from, query.limit + 1)
    const page = rows.slice(0, query.limit)
    return {
      events: page.map((row) => wireEvent(row, query.channel)),
      nextSeq: page.at(-1)?.seq ?? from,
      hasMore: rows.length > query.limit,
      lastSeq: this.store.lastSeq(),
      epoch: this.store.epoch,
      ...(truncated ? { truncated: true as const } : {}),
    }
  }

  /** A channel's current state, as `GET /api/channels/:channelId/state` answers it. */
  channelState(principal: Principal, channelId: string): ChannelState {
    this.authorizeChannel(principal, channelId, 'channelId')
    const { seq, entities } = this.store.snapshot(principal.orgId, channelId)
    return { channelId, seq, epoch: this.store.epoch, entities: entities.map((event) => wireEvent(event, channelId)) }
  }

  /** `org:<id>` channels belong to their organisation only. */
  authorizeChannel(principal: Principal, channel: string, field: string): void {
    const owner = orgOfChannel(channel)
    if (owner !== undefined && owner !== principal.orgId) {
      throw forbidden(`${field} ${JSON.stringify(channel)} belongs to another organisation`)
    }
  }

  private prepare(principal: Principal, input: EventInput, at: string): NewEvent {
    if (input.orgId !== principal.orgId) {
      throw forbidden(`${at}orgId ${JSON.stringify(input.orgId)} is not the caller's organisation`)
    }
    let channels: string[]
    if (input.channels) {
      channels = input.channels
      for (const channel of channels) this.authorizeChannel(principal, channel, `${at}channels`)
    } else {
      try {
        channels = deriveChannels(input.orgId, input.payload)
      } catch (error) {
        if (error instanceof ChannelDerivationError) throw badRequest(`${at}${error.message}`)
        throw error
      }
    }
    return {
      id: input.id,
      type: input.type,
      orgId: input.orgId,
      userId: input.userId,
      timestamp: input.timestamp,
      receivedAt: this.now(),
      payload: JSON.stringify(input.payload),
      channels,
      key: input.key ?? null,
      state: stateChangeOf(input.type, input.payload, input.key),
    }
  }
}

