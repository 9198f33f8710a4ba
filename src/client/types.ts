import type { z } from 'zod'
import type { CatalogueType, PayloadOf } from '../model/events'

/** Event types an application adds to the catalogue: type name → payload schema. */
export type CustomTypes = Record<string, z.ZodType<Record<string, unknown>>>

interface FrameFields {
  id: string
  seq: number
  channelId: string
  orgId: string
  userId: string
  timestamp: number
  /** Present when the event was ingested with an explicit entity key. */
  key?: string
}

/**
 * An event frame of a catalogue type or of a type the application declared: a discriminated union
 * on `type`, so `if (event.type === 'agent.completed') event.payload.duration` is a number.
 */
export type KnownFrame<C extends CustomTypes = {}> =
  | { [T in CatalogueType]: FrameFields & { type: T; payload: PayloadOf<T> } }[CatalogueType]
  | { [T in keyof C & string]: FrameFields & { type: T; payload: z.infer<C[T]> } }[keyof C & string]

/** An event frame of a type neither in the catalogue nor declared by the application. */
export type OtherFrame = FrameFields & { type: string; payload: Record<string, unknown> }

/** Connection status, as seed 003's debug page shows it. */
export type ConnectionStatus =
  /** First connection attempt. */
  | 'connecting'
  /** Delivering: over the WebSocket, or over HTTP polling when the socket cannot be established. */
  | 'open'
  /** Lost the connection; retrying with backoff. */
  | 'reconnecting'
  /** Stopped retrying: the server refused the credentials (4401) or replaced the session (4002). */
  | 'offline'
  /** `close()` was called. */
  | 'closed'

export interface ConnectionInfo {
  status: ConnectionStatus
  /** How events arrive now: the socket, else Server-Sent Events, else polling. */
  transport: 'websocket' | 'sse' | 'polling' | null
  /** Reconnect attempts since the client was created. */
  reconnects: number
  lastError: string | null
  /** The server database's epoch, once known. */
  epoch: string | null
  /** Every subscribed channel and the last seq delivered on it (0 before any). */
  subscriptions: Array<{ channelId: string; lastSeq: number }>
  pendingRequests: number
  heartbeat: { lastOkAt: number | null; lastError: string | null }
}

/**
 * Methods a client answers or calls on the user's other clients, declared once: the request and
 * response schemas type `handle` and `call` and validate both ends.
 */
export type MethodMap = Record<string, { request: z.ZodType; response: z.ZodType }>

/** Who made a call: the caller's user, and its clientId and kind when it announced them. */
export interface CallOrigin {
  userId: string
  clientId?: string
  kind?: string
}
