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
