import { Elysia } from 'elysia'
import type { Authenticator } from '../../auth'
import type { KeyedRateLimiter } from '../../rate-limit'
import { z } from 'zod'
import { channelId } from '../../model/channels'
import { ingestBody, sinceQuery } from '../../model/http'
import { resolvePrincipal } from '../../http'
import type { EventService } from './service'

/** POST /ingest and GET /api/events/since. */
export const eventsModule = (events: EventService, auth: Authenticator, limiter: KeyedRateLimiter | null) =>
  new Elysia({ name: 'events' })
    .resolve(resolvePrincipal(auth, limiter))
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
