import { Elysia } from 'elysia'
import type { HealthBody } from '../../model/http'

/** GET /health: open, so load balancers and the desktop shell can probe without credentials. */
export const healthModule = (health: () => HealthBody) =>
  new Elysia({ name: 'health' }).get('/health', () => health())
