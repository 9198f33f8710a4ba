import { Elysia } from 'elysia'
import type { ApiGate } from '../../http'
import { heartbeatBody } from '../../model/http'
import type { Presence } from '../../realtime/presence'

/** POST /api/heartbeat and GET /api/presence: the HTTP half of the dual channel. */
export const presenceModule = (presence: Presence, gate: ApiGate) =>
  new Elysia({ name: 'presence' })
    .derive(gate.principalOf)
    .post(
      '/api/heartbeat',
      ({ body, principal }) => {
        presence.seen(principal, body.clientId, body.kind)
        return { ok: true as const, serverTime: Date.now() }
      },
      { body: heartbeatBody },
    )
    // A user sees their own clients; a service (API key) sees the whole organisation's.
    .get('/api/presence', ({ principal }) => ({
      clients: presence.list(principal.orgId, principal.credential?.startsWith('key:') ? undefined : principal.userId),
    }))
