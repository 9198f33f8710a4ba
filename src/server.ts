import { randomUUID } from 'node:crypto'
import { type App, createApp } from './app'
import { createAuthenticator } from './auth'
import { type Config, defaultConfig } from './config'
import { openDatabase } from './db/client'
import { ApiError, CloseCode, describeIssue } from './errors'
import { createLogger, type Logger } from './log'
import { eventInput } from './model/events'
import type { HealthBody, IngestResult } from './model/http'
import { EventService } from './modules/events/service'
import { LocalBroker } from './realtime/broker'
import { Metrics } from './metrics'
import { Hub } from './realtime/hub'
import { Presence } from './realtime/presence'
import { RpcRouter } from './realtime/rpc'
import { Streams } from './realtime/sse'
import { RetentionJob } from './retention'
import { KeyedRateLimiter } from './rate-limit'
import { ApiKeyStore } from './store/api-key-store'
import { SqliteEventStore } from './store/sqlite-event-store'
import { metaCursorStore, UpstreamSync } from './upstream'

/** Ports tried after the configured one when it is taken. */
const PORT_FALLBACKS = 20
/** How often sockets are checked for readers that stopped reading. */
const SLOW_CONSUMER_SWEEP_MS = 250

/** An event published in-process: id, timestamp and (in `none` mode) orgId/userId default. */
export interface PublishInput {
  type: string
  payload: Record<string, unknown>
  id?: string
  orgId?: string
  userId?: string
  timestamp?: number
  channels?: string[]
  /** The entity the event describes, for channel state (see model/state.ts). */
  key?: string
}

export interface RealtimeServer {
  /** Opens the database, prunes, listens. Resolves with the real port and URL. */
  start(): Promise<{ port: number; url: string }>
  /** Closes sockets with 1001, commits pending writes, stops listening, closes the database. */
  stop(): Promise<void>
  /** Injects events from the embedding process through the same validate → store → fan-out path. */
  publish(events: PublishInput | PublishInput[]): Promise<IngestResult>
  /** Runs the retention prune now; resolves to the number of events removed. */
  prune(): Promise<number>
  health(): HealthBody
  readonly port: number
  readonly url: string
  /** The Elysia app, for `app.handle(request)` in tests or mounting in a larger app. */
  readonly app: App
}

export interface RealtimeServerOptions extends Partial<Config> {
  logger?: Logger
}

/** Builds a Switchboard service from settings (defaults as in the README). */
export function createRealtimeServer(options: RealtimeServerOptions = {}): RealtimeServer {
  const { logger, ...overrides } = options
  const config = defaultConfig(overrides)
  const log = logger ?? createLogger(config.logLevel)
  const database = openDatabase(config.dbPath, config.dbCacheMb)
  const store = new SqliteEventStore(database)
  const apiKeys = new ApiKeyStore(database)
  const metrics = new Metrics()
  const hub = new Hub(metrics)
  const presence = new Presence()
  const rpc = new RpcRouter()
  const broker = new LocalBroker((events) => hub.deliver(events))
  const events = new EventService(store, broker, log, metrics)
  const streams = new Streams({ hub, store, events, log, metrics, slowConsumerBytes: config.slowConsumerBytes, keepAliveMs: config.sseKeepAliveMs })
  const auth = createAuthenticator(config.auth, apiKeys)
  const httpLimiter = config.httpRateLimit ? new KeyedRateLimiter(config.httpRateLimit) : null
  const retention = new RetentionJob(store, config.retentionHours * 3_600_000, config.pruneIntervalMs, log, Date.now, metrics)
  // Upstream sync (REALTIME_UPSTREAM_URL): polls another Switchboard into `events.ingest`; see upstream.ts.
  const upstream = config.upstream
    ? new UpstreamSync({ settings: config.upstream, events, cursors: metaCursorStore(database, config.upstream.url), log, localOrgId: config.auth.mode === 'none' ? config.auth.orgId : undefined })
    : null
  const startedAt = Date.now()
  const health = (): HealthBody => ({
    status: 'ok',
    connections: hub.connections,
    channels: hub.channels,
    eventsStored: store.count(),
    uptime: Math.floor((Date.now() - startedAt) / 1000),
  })
  metrics.observe({
    connections: () => hub.connections,
    subscriptions: () => hub.subscriptions,
    channels: () => hub.channels,
    streams: () => streams.size,
    eventsStored: () => store.count(),
    databaseBytes: () => store.sizeBytes(),
  })
  const app = createApp({ config, store, hub, presence, rpc, streams, events, auth, httpLimiter, metrics, log, health })
  let port = 0
  let slowConsumerSweep: ReturnType<typeof setInterval> | undefined
  let state: 'new' | 'running' | 'stopping' | 'stopped' = 'new'

  function listen(): number {
    const last = config.port === 0 ? 0 : Math.min(config.port + PORT_FALLBACKS, 65535)
    for (let candidate = config.port; candidate <= last; candidate++) {
      try {
        app.listen({ hostname: config.host, port: candidate })
        if (candidate !== config.port) log.warn('port_fallback', { wanted: config.port, port: candidate })
        return app.server!.port!
      } catch (error) {
        if ((error as { code?: string }).code !== 'EADDRINUSE') throw error
        log.warn('port_in_use', { port: candidate })
      }
    }
    throw new Error(`ports ${config.port}-${last} on ${config.host} are all in use`)
  }

  const server: RealtimeServer = {
    app,
    health,
    get port() {
      return port
    },
    get url() {
      return `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`
    },

    async start() {
      if (state !== 'new') throw new Error(`cannot start a server that is ${state}`)
      state = 'running'
      await retention.start()
      port = listen()
      hub.attach(app.server!)
      slowConsumerSweep = setInterval(() => {
        const closed = hub.closeSlowConsumers(config.slowConsumerBytes, CloseCode.SlowConsumer, 'slow consumer: resume from your last seq')
        if (closed === 0) return
        log.warn('slow_consumers_closed', { closed, limitBytes: config.slowConsumerBytes })
        metrics.closes.inc({ reason: 'slow_consumer' }, closed)
      }, SLOW_CONSUMER_SWEEP_MS)
      log.info('listening', { host: config.host, port, url: server.url, ws: `${server.url.replace('http', 'ws')}/ws`, db: config.dbPath, auth: config.auth.mode, epoch: store.epoch })
      upstream?.start()
      return { port, url: server.url }
    },

    async stop() {
      if (state === 'stopping' || state === 'stopped') return
      const wasRunning = state === 'running'
      state = 'stopping'
      await upstream?.stop()
      await retention.stop()
      clearInterval(slowConsumerSweep)
      hub.closeAll(CloseCode.GoingAway, 'server shutting down')
      streams.closeAll()
      events.flush()
      if (wasRunning) {
        const stopped = app.stop()
        const timeout = new Promise((resolve) => setTimeout(resolve, 5000).unref())
        await Promise.race([stopped, timeout])
      }
      events.flush()
      broker.close()
      store.close()
      state = 'stopped'
      log.info('stopped')
    },

    async publish(input) {
      if (state === 'stopping' || state === 'stopped') throw new Error('server is stopped')
      const inputs = Array.isArray(input) ? input : [input]
      const defaults = config.auth.mode === 'none' ? { orgId: config.auth.orgId, userId: config.auth.userId } : {}
      const parsed = inputs.map((event, index) => {
        const result = eventInput.safeParse({ id: randomUUID(), timestamp: Date.now(), ...defaults, ...event })
        if (result.success) return result.data
        const at = inputs.length > 1 ? `events[${index}]` : undefined
        throw new ApiError(400, 'invalid_event', describeIssue(result.error.issues[0]!, at))
      })
      // The embedding process is trusted: each event is published as its own organisation.
      const results = await Promise.all(parsed.map((event) => events.ingest({ orgId: event.orgId, userId: event.userId }, [event])))
      return results.reduce((sum, r) => ({ stored: sum.stored + r.stored, duplicates: sum.duplicates + r.duplicates }), { stored: 0, duplicates: 0 })
    },

    prune: () => retention.run(),
  }
  return server
}
