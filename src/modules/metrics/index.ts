import { Elysia } from 'elysia'
import { AuthError, type Authenticator } from '../../auth'
import { bearerToken } from '../../http'
import type { Metrics } from '../../metrics'

/**
 * GET /metrics in Prometheus text format. Open in `none` mode (the service is on loopback); in
 * `jwt` mode the scraper sends a credential (an API key: `authorization` in its scrape config).
 */
export const metricsModule = (metrics: Metrics, auth: Authenticator) =>
  new Elysia({ name: 'metrics' }).get('/metrics', async ({ request }) => {
    try {
      await auth.authenticate(bearerToken(request.headers.get('authorization') ?? undefined))
    } catch (error) {
      if (!(error instanceof AuthError)) throw error
      return new Response(JSON.stringify({ error: { code: 'unauthorized', message: error.message } }), {
        status: 401,
        headers: { 'content-type': 'application/json', 'www-authenticate': 'Bearer' },
      })
    }
    return new Response(await metrics.registry.metrics(), { headers: { 'content-type': metrics.registry.contentType } })
  })
