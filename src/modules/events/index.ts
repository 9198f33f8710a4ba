import { Elysia } from 'elysia'
import { z } from 'zod'
import { channelId } from '../../model/channels'
import { ingestBody, sinceQuery } from '../../model/http'
import type { ApiGate } from '../../http'
import type { EventService } from './service'

/** POST /ingest, GET /api/events/since and GET /api/channels/:channelId/state. */
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
    .get(
      '/api/channels/:channelId/state',
      ({ params, principal }) => events.channelState(principal, params.channelId),
      { params: z.object({ channelId }) },
    )
