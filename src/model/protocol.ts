import { z } from 'zod'
import { channelId } from './channels'

/**
 * WebSocket frames (text, one JSON object each). Imports only zod: the client shares this file.
 * The full protocol, with examples, is in the README.
 */

/** A replay cursor: 0 means "from the start of what is stored". */
export const seqCursor = z.number().int().nonnegative()

export const authMessage = z.object({ type: z.literal('auth'), token: z.string().min(1).max(8192) })

/**
 * Subscribe to a channel. With `since`, every stored event of the channel with a larger seq is
 * replayed first, then live events follow with no gap and no duplicate. `epoch` is the database
 * epoch the cursor came from; a different one means the cursor is meaningless here (replay from 0,
 * `truncated: true`). Subscribing again to a channel restarts it the same way.
 */
export const subscribeMessage = z.object({
  type: z.literal('subscribe'),
  channelId,
  since: seqCursor.optional(),
  epoch: z.string().min(1).max(64).optional(),
  /**
   * Start from the channel's state: a `snapshot` (the latest event of every entity) then live
   * events. With `since` as well, the server replays instead when that is smaller and complete,
   * and says which it did in `subscribed.mode`.
   */
  snapshot: z.boolean().optional(),
})

export const unsubscribeMessage = z.object({ type: z.literal('unsubscribe'), channelId })
export const pingMessage = z.object({ type: z.literal('ping') })

export const REQUEST_ACTIONS = ['history', 'stats'] as const
export const requestMessage = z.object({
  type: z.literal('request'),
  id: z.string().min(1).max(128),
  action: z.string().min(1).max(64),
  payload: z.record(z.string(), z.unknown()).optional(),
})

/**
 * Announces this connection for calls from the user's other clients: its id, a kind (`desktop`,
 * `web`, …) that callers may target instead, and the methods it answers. Sent again to change them.
 */
export const helloMessage = z.object({
  type: z.literal('hello'),
  clientId: z.string().min(1).max(128),
  kind: z.string().min(1).max(64).optional(),
  methods: z.array(z.string().min(1).max(128)).max(256).default([]),
})

/** Calls `method` on another connection of the same user (`target`: its clientId, or a kind). */
export const callMessage = z.object({
  type: z.literal('call'),
  id: z.string().min(1).max(128),
  target: z.string().min(1).max(128),
  method: z.string().min(1).max(128),
  payload: z.unknown().optional(),
  timeoutMs: z.number().int().min(1).max(120_000).optional(),
})

/** A called connection's answer; `id` is the id of the `call` it received. */
export const resultMessage = z.object({
  type: z.literal('result'),
  id: z.string().min(1).max(128),
  success: z.boolean(),
  data: z.unknown().optional(),
  error: z.string().max(10_000).optional(),
})

export const clientMessage = z.discriminatedUnion('type', [
  authMessage,
  subscribeMessage,
  unsubscribeMessage,
  pingMessage,
  requestMessage,
  helloMessage,
  callMessage,
  resultMessage,
])
export type ClientMessage = z.infer<typeof clientMessage>
export const CLIENT_MESSAGE_TYPES = clientMessage.options.map((option) => option.shape.type.value)

/** Payload of the `history` request: a channel's stored events after `since`, one page. */
export const historyRequest = z.object({
  channelId,
  since: seqCursor.default(0),
  limit: z.number().int().min(1).max(1000).default(100),
})

/** Server → client frames other than events. */
export type ServerMessage =
  | { type: 'authenticated'; userId: string; orgId: string }
  /**
   * `lastSeq` (live-only subscribe): the newest seq when the subscription began; resume from it.
   * (Not named `seq`: only event frames carry a `seq`.)
   * `since` (subscribe with since): where the replay starts — the cursor given, or 0 when that
   * cursor is void here (another epoch, or beyond the newest seq).
   */
  | {
      type: 'subscribed'
      channelId: string
      epoch: string
      lastSeq?: number
      since?: number
      truncated?: true
      /** With `snapshot: true`: whether `snapshot` frames or a replay from `since` follow. */
      mode?: 'snapshot' | 'replay'
    }
  /** A replay (or snapshot) is complete: every event of the channel up to `lastSeq` was sent; live ones follow. */
  | { type: 'caught_up'; channelId: string; lastSeq: number }
  /** One part of a channel's state; `done` on the last. Live events with seq > `seq` follow. */
  | { type: 'snapshot'; channelId: string; seq: number; entities: unknown[]; done: boolean }
  | { type: 'unsubscribed'; channelId: string }
  | { type: 'pong' }
  | { type: 'response'; requestId: string; success: true; data: unknown }
  | { type: 'response'; requestId: string; success: false; error: string }
  | { type: 'error'; code: string; message: string; channelId?: string; requestId?: string }
  /** The answer to `hello`. */
  | { type: 'welcome'; clientId: string; kind?: string; methods: string[] }
  /** A call for this connection: answer with `result` carrying the same `id`. */
  | { type: 'call'; id: string; method: string; payload: unknown; from: { userId: string; clientId?: string; kind?: string } }
  /** The outcome of this connection's `call` with that `id`. */
  | { type: 'result'; id: string; success: true; data: unknown }
  | { type: 'result'; id: string; success: false; code: string; error: string }
