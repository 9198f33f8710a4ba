/**
 * Errors with a wire code, and the WebSocket close codes. Every code a client can see is named here.
 */

/** An HTTP API error: answered as `{"error":{"code","message"}}` with `status`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** Extra response headers, such as Retry-After on a 429. */
    readonly headers: Record<string, string> = {},
  ) {
    super(message)
  }
}

export const badRequest = (message: string) => new ApiError(400, 'invalid_body', message)
export const forbidden = (message: string) => new ApiError(403, 'forbidden', message)

/**
 * WebSocket close codes. "Reconnect" says what a well-behaved client does next.
 */
export const CloseCode = {
  /** Server shutting down. Reconnect (with backoff) and resume from the last seq. */
  GoingAway: 1001,
  /** An inbound frame exceeded REALTIME_MAX_FRAME_BYTES. Reconnect, but do not resend that frame. */
  FrameTooLarge: 1009,
  /** Replaced by a newer session of the same user. Do not reconnect. */
  SessionReplaced: 4002,
  /** Stopped reading: REALTIME_SLOW_CONSUMER_BYTES were queued. Reconnect and resume from the last seq. */
  SlowConsumer: 4008,
  /** Missing, bad or expired credentials. Do not reconnect with the same token. */
  Unauthorized: 4401,
  /** No `auth` message within the auth timeout. Reconnect and authenticate promptly. */
  AuthTimeout: 4408,
  /** Inbound messages exceeded REALTIME_RATE_LIMIT. Reconnect after backoff, send less. */
  RateLimited: 4429,
  /** Too many sockets, in all or for this user. Reconnect later, with backoff. */
  TooManyConnections: 4503,
} as const

/** Codes of `{"type":"error"}` frames; the connection stays open after each. */
export const WsErrorCode = {
  InvalidJson: 'invalid_json',
  InvalidMessage: 'invalid_message',
  UnknownType: 'unknown_type',
  InvalidChannel: 'invalid_channel',
  Forbidden: 'forbidden',
  NotAuthenticated: 'not_authenticated',
  TooManySubscriptions: 'too_many_subscriptions',
  UnknownCall: 'unknown_call',
  Internal: 'internal_error',
} as const

/** "events[0].payload.duration: expected number…" — the field path, then zod's message. */
export function describeIssue(issue: { path: readonly PropertyKey[]; message: string }, prefix?: string): string {
  let path = prefix ?? ''
  for (const key of issue.path) path += typeof key === 'number' ? `[${key}]` : path ? `.${String(key)}` : String(key)
  return path ? `${path}: ${issue.message}` : issue.message
}
