import type { WireEvent } from '../model/http'
import type { StoredEvent } from '../store/event-store'

/**
 * Organisation-scoped topic names for Bun's pub/sub: the org id grammar excludes `|`, so two
 * organisations can never share a topic whatever their channel names.
 */
export const topicOf = (orgId: string, channelId: string) => `${orgId}|${channelId}`

/**
 * The frame a subscriber gets for a stored event on one channel. Built by concatenation around the
 * stored payload text: the payload is never parsed or re-serialised on the delivery path.
 */
export function eventFrame(event: StoredEvent, channelId: string): string {
  const key = event.key ? `,"key":${JSON.stringify(event.key)}` : ''
  return `{"type":${JSON.stringify(event.type)},"id":"${event.id}","seq":${event.seq},"channelId":${JSON.stringify(channelId)},"orgId":${JSON.stringify(event.orgId)},"userId":${JSON.stringify(event.userId)},"timestamp":${event.timestamp}${key},"payload":${event.payload}}`
}

/** A stored event as the HTTP API returns it (the frame's fields plus every channel it went to). */
export function wireEvent(event: StoredEvent, channelId?: string): WireEvent {
  return {
    type: event.type,
    id: event.id,
    seq: event.seq,
    ...(channelId === undefined ? {} : { channelId }),
    orgId: event.orgId,
    userId: event.userId,
    timestamp: event.timestamp,
    ...(event.key ? { key: event.key } : {}),
    payload: JSON.parse(event.payload) as Record<string, unknown>,
    channels: event.channels,
  }
}
