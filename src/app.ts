import { Elysia } from 'elysia'
import type { Authenticator } from './auth'
import type { Config } from './config'
import { createApiGate, httpErrors } from './http'
import type { Logger } from './log'
import type { Metrics } from './metrics'
import { metricsModule } from './modules/metrics'
import type { KeyedRateLimiter } from './rate-limit'
import type { HealthBody } from './model/http'
import { debugModule } from './modules/debug'
import { eventsModule } from './modules/events'
import type { EventService } from './modules/events/service'
import { healthModule } from './modules/health'
import { presenceModule } from './modules/presence'
import { realtimeModule } from './modules/realtime'
import { rpcModule } from './modules/rpc'
import { streamModule } from './modules/stream'
import type { Hub } from './realtime/hub'
import type { Presence } from './realtime/presence'
import type { RpcRouter } from './realtime/rpc'
import type { Streams } from './realtime/sse'
import type { EventStore } from './store/event-store'

export interface AppDeps {
  config: Config
  store: EventStore
  hub: Hub
  presence: Presence
  rpc: RpcRouter
  streams: Streams
  events: EventService
  auth: Authenticator
  /** The per-credential HTTP limit; null when REALTIME_HTTP_RATE_LIMIT is off. */
  httpLimiter: KeyedRateLimiter | null
  metrics: Metrics
  log: Logger
  health: () => HealthBody
}

/** The whole HTTP and WebSocket surface, in one chain. Eden clients import `type App`. */
export function createApp(deps: AppDeps) {
  const { config } = deps
  const gate = createApiGate(deps.auth, deps.httpLimiter, deps.metrics)
  return new Elysia({
    // Bun's own limit is only a backstop (it answers with an empty 413); the JSON 413 comes from
    // http.ts, which needs to see bodies up to the configured limit and a little past it.
    serve: { maxRequestBodySize: config.maxBodyBytes * 2 + 65_536, reusePort: false },
    websocket: {
      maxPayloadLength: config.maxFrameBytes,
      // Slow readers are closed with 4008 at slowConsumerBytes by the hub's sweep. This hard limit
      // is the backstop for a burst between sweeps: Bun then closes (1006) rather than drop frames,
      // which would leave a gap in the reader's stream.
      backpressureLimit: config.slowConsumerBytes * 4,
      closeOnBackpressureLimit: true,
    },
  })
    .use(httpErrors(config.maxBodyBytes, deps.log, deps.metrics))
    .use(metricsModule(deps.metrics, deps.auth))
    .use(healthModule(deps.health))
    .use(debugModule(config, deps.log))
    .use(gate.plugin)
    .use(eventsModule(deps.events, gate))
    .use(presenceModule(deps.presence, gate))
    .use(rpcModule(deps.rpc, gate))
    .use(streamModule(deps.streams, deps.events, gate, config.maxStreamsPerCredential))
    .use(
      realtimeModule({
        hub: deps.hub,
        presence: deps.presence,
        rpc: deps.rpc,
        store: deps.store,
        events: deps.events,
        auth: deps.auth,
        config,
        log: deps.log,
        metrics: deps.metrics,
        stats: () => ({ ...deps.health(), lastSeq: deps.store.lastSeq(), epoch: deps.store.epoch }),
      }),
    )
}

export type App = ReturnType<typeof createApp>
