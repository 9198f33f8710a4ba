import { Elysia } from 'elysia'
import { ApiError } from '../../errors'
import type { ApiGate } from '../../http'
import { channelId } from '../../model/channels'
import type { Streams } from '../../realtime/sse'
import type { EventService } from '../events/service'

/** Channels one stream may follow. */
export const MAX_STREAM_CHANNELS = 100

/**
 * GET /api/events/stream?channel=<id>&channel=<id>&since=<seq>&epoch=<epoch>&snapshot=1:
 * Server-Sent Events (see realtime/sse.ts). A reconnecting EventSource's Last-Event-ID wins over
 * `since`, which is the first connection's cursor.
 */
export const streamModule = (streams: Streams, events: EventService, gate: ApiGate, maxPerCredential: number) =>
  new Elysia({ name: 'stream' }).derive(gate.principalOf).get('/api/events/stream', ({ principal, request }) => {
    const query = new URL(request.url).searchParams
    const channels = query.getAll('channel')
    if (channels.length === 0) throw new ApiError(400, 'invalid_query', 'query.channel: name at least one channel (repeat channel= for more)')
    if (channels.length > MAX_STREAM_CHANNELS) throw new ApiError(400, 'invalid_query', `query.channel: at most ${MAX_STREAM_CHANNELS} channels per stream`)
    for (const channel of channels) {
      const parsed = channelId.safeParse(channel)
      if (!parsed.success) throw new ApiError(400, 'invalid_query', `query.channel: ${parsed.error.issues[0]!.message}`)
      events.authorizeChannel(principal, channel, 'query.channel')
    }
    const cursor = (name: string, value: string | null) => {
      if (value === null || value === '') return undefined
      if (!/^\d{1,15}$/.test(value)) throw new ApiError(400, 'invalid_query', `${name}: must be a seq (a whole number ≥ 0)`)
      return Number(value)
    }
    const since = cursor('Last-Event-ID', request.headers.get('last-event-id')) ?? cursor('query.since', query.get('since'))
    const snapshot = query.get('snapshot')
    if (snapshot !== null && !['1', 'true', '0', 'false'].includes(snapshot)) {
      throw new ApiError(400, 'invalid_query', 'query.snapshot: must be 1, true, 0 or false')
    }
    const epoch = query.get('epoch') || undefined
    if (epoch !== undefined && epoch.length > 64) throw new ApiError(400, 'invalid_query', 'query.epoch: at most 64 characters')
    const credential = principal.credential ?? `${principal.orgId}|${principal.userId}`
    if (streams.countOf(credential) >= maxPerCredential) {
      throw new ApiError(429, 'too_many_streams', `at most ${maxPerCredential} open streams per credential`, { 'retry-after': '5' })
    }
    return streams.start(principal, { channels: [...new Set(channels)], since, epoch, snapshot: snapshot === '1' || snapshot === 'true' }, request.signal)
  })
