import { z } from 'zod'
import { channelId } from './channels'
import { eventInput } from './events'

/** HTTP bodies and queries. Imports only zod: the client shares this file. */

export const MAX_INGEST_BATCH = 1000

/** `POST /ingest` takes one event or `{ events: [...] }` with 1 to 1000 of them. */
export const ingestBody = z.union([
  z.object({ events: z.array(eventInput).min(1).max(MAX_INGEST_BATCH) }),
  eventInput,
])
export type IngestBody = z.input<typeof ingestBody>

export interface IngestResult {
  /** Events stored by this request. */
  stored: number
  /** Events whose id was already stored (or repeated in the batch): neither stored nor delivered again. */
  duplicates: number
}

const intFromQuery = z.coerce.number().int()

/** `GET /api/events/since`: without `channel`, the caller's whole organisation. */
export const sinceQuery = z.object({
  since: intFromQuery.nonnegative().default(0),
  channel: channelId.optional(),
  limit: intFromQuery.min(1).max(1000).default(100),
  epoch: z.string().min(1).max(64).optional(),
})

export interface HealthBody {
  status: 'ok'
  connections: number
  channels: number
  eventsStored: number
  uptime: number
}

/** An event as the HTTP API and the `history` request return it: the frame's fields plus every channel it went to. */
export interface WireEvent {
  type: string
  id: string
  seq: number
  /** Present when a channel was asked for. */
  channelId?: string
  orgId: string
  userId: string
  timestamp: number
  /** Present when the event was ingested with an explicit entity key. */
  key?: string
  payload: Record<string, unknown>
  channels: string[]
}

/** `GET /api/channels/:channelId/state`: the latest event of every live entity of a channel. */
export interface ChannelState {
  channelId: string
  /** The state is complete up to this seq: subscribe with `since` = seq to follow it live. */
  seq: number
  epoch: string
  /** Ascending by seq. */
  entities: WireEvent[]
}

/** One page of `GET /api/events/since` (and of the `history` request). */
export interface HistoryPage {
  events: WireEvent[]
  /** The `since` for the next page: the seq of the last event returned, else where this page started. */
  nextSeq: number
  hasMore: boolean
  /** The newest seq stored when the page was read: a client without a cursor starts from here. */
  lastSeq: number
  epoch: string
  /** Events after the cursor were pruned, or the cursor came from another database (the page starts at the oldest event). */
  truncated?: true
}

/** `POST /api/heartbeat`: the HTTP half of the dual channel (seed 003). */
export const heartbeatBody = z.object({
  clientId: z.string().min(1).max(128),
  kind: z.string().min(1).max(64).optional(),
})

/** `GET /api/presence`: one entry per client of the caller's organisation seen recently. */
export interface PresenceEntry {
  userId: string
  clientId: string
  kind?: string
  /** Unix ms of the last heartbeat or socket activity. */
  lastSeen: number
  /** A WebSocket of this client is open now. */
  socketOpen: boolean
  /** The methods its open socket answers (announced with `hello`). */
  methods?: string[]
}

/** `POST /api/rpc`: a service calls a client of a user (an API key names the user; a JWT is the user). */
export const rpcBody = z.object({
  target: z.string().min(1).max(128),
  method: z.string().min(1).max(128),
  payload: z.unknown().optional(),
  timeoutMs: z.number().int().min(1).max(120_000).optional(),
  userId: z.string().min(1).max(128).optional(),
})
