import { Elysia } from 'elysia'
import { ingestBody, sinceQuery } from '../../model/http'
import type { ApiGate } from '../../http'
import type { EventService } from './service'

/** POST /ingest and GET /api/events/since. */
export const eventsModule = (events: EventService, gate: ApiGate) =>
  new Elysia({ name: 'events' })
    .derive(gate.principalOf)
    .post(
      '/ingest',
      ({ body, principal }) => events.ingest(principal, 'events' in body ? body.events : [body]),
      { body: ingestBody },
    )
    .get(
      '/api/events/since',
      ({ query, principal }) => events.history(principal, query),
      { query: sinceQuery },
    )
