import { z } from 'zod'

/**
 * Identifiers and channel ids. Imports only zod: the typed client shares this file.
 *
 * Organisation and user ids: 1–128 characters of `A–Z a–z 0–9 . _ @ : + -`.
 * They become part of topic names, so the grammar keeps `|` and whitespace out.
 */
export const PRINCIPAL_ID_PATTERN = /^[A-Za-z0-9._@:+-]{1,128}$/
export const principalId = (what: string) =>
  z.string().regex(PRINCIPAL_ID_PATTERN, `${what} must be 1-128 characters of A-Z a-z 0-9 . _ @ : + -`)

/**
 * Channel ids are `<kind>:<name>`:
 * - kind: a lowercase letter, then up to 31 of `a–z 0–9 _ -` (`agent`, `task`, `org`, …);
 * - name: 1 or more characters, no control characters, no leading or trailing space;
 * - at most 256 characters in all.
 * `org:<id>` is the organisation-wide channel; a caller may only use its own organisation's.
 */
export const CHANNEL_MAX_LENGTH = 256
// biome-ignore lint: control characters are the point of this pattern
const CHANNEL_PATTERN = /^[a-z][a-z0-9_-]{0,31}:(?! )[^\u0000-\u001f\u007f]*[^\u0000-\u001f\u007f ]$/

export function isChannelId(value: string): boolean {
  return value.length <= CHANNEL_MAX_LENGTH && CHANNEL_PATTERN.test(value)
}

export const channelId = z
  .string()
  .max(CHANNEL_MAX_LENGTH, `channel id is longer than ${CHANNEL_MAX_LENGTH} characters`)
  .refine(isChannelId, 'channel id must be <kind>:<name> (kind: a-z 0-9 _ -, name: no control characters)')

export type ChannelId = z.infer<typeof channelId>

/** Payload fields that put an event on a channel of their own, in the order they are derived. */
export const DERIVED_CHANNEL_FIELDS = [
  ['agent', 'agentName'],
  ['task', 'taskId'],
  ['swarm', 'swarmId'],
  ['project', 'projectId'],
] as const

export class ChannelDerivationError extends Error {
  constructor(readonly field: string, message: string) {
    super(message)
  }
}

/**
 * The channels of an event that names none: `org:<orgId>` always, plus one per payload field of
 * DERIVED_CHANNEL_FIELDS holding a string or a number. A value that cannot form a channel id is an
 * error (never a silent drop: the event would miss its subscribers).
 */
export function deriveChannels(orgId: string, payload: Record<string, unknown>): string[] {
  const channels = [`org:${orgId}`]
  for (const [kind, field] of DERIVED_CHANNEL_FIELDS) {
    const value = payload[field]
    if (typeof value !== 'string' && typeof value !== 'number') continue
    const channel = `${kind}:${value}`
    if (!isChannelId(channel)) {
      throw new ChannelDerivationError(
        `payload.${field}`,
        `payload.${field} cannot form a channel id ("${kind}:…" must be at most ${CHANNEL_MAX_LENGTH} characters, without control characters)`,
      )
    }
    if (!channels.includes(channel)) channels.push(channel)
  }
  return channels
}

/** The organisation an `org:<id>` channel belongs to, or undefined for other kinds. */
export function orgOfChannel(channel: string): string | undefined {
  return channel.startsWith('org:') ? channel.slice(4) : undefined
}
