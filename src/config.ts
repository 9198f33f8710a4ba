import { z } from 'zod'
import { PRINCIPAL_ID_PATTERN } from './model/channels'
import type { RateLimit } from './rate-limit'

/**
 * Every setting, with its environment variable and default. `bun start --port 4000` mirrors
 * REALTIME_PORT=4000 (flag = variable without the prefix, lowercase, `_` → `-`).
 * A bad value stops the start with one message naming the setting.
 */
export interface Config {
  /** Bind address; loopback unless the operator says otherwise. */
  host: string
  /** First port to try; if taken, the next free one up to +20 is used. 0 = any free port. */
  port: number
  /** SQLite file, or `:memory:`. */
  dbPath: string
  /** SQLite page cache in MiB: memory traded for faster snapshots of large channels. */
  dbCacheMb: number
  /** Events older than this (by their `timestamp`) are pruned at startup and every pruneIntervalMs. */
  retentionHours: number
  pruneIntervalMs: number
  auth: { mode: 'none'; orgId: string; userId: string } | { mode: 'jwt'; secret: string }
  /** How long a `jwt`-mode socket may stay unauthenticated before close 4408. */
  authTimeoutMs: number
  /** Inbound WebSocket messages allowed per connection per window; null = unlimited. */
  rateLimit: RateLimit | null
  /** HTTP API requests allowed per credential per window (429 past it); null = unlimited. */
  httpRateLimit: RateLimit | null
  /** `single`: a newer authenticated socket of a user closes the older ones with 4002. */
  sessionPolicy: 'multiple' | 'single'
  /** Open sockets in all; past it a new socket is closed with 4503. */
  maxConnections: number
  /** Open sockets per user (in `none` mode: all of them); past it a new socket is closed with 4503. */
  maxConnectionsPerUser: number
  /** Channels one socket may be subscribed to at once. */
  maxSubscriptions: number
  /** Server-Sent Events streams open at once per credential; past it → 429. */
  maxStreamsPerCredential: number
  /** How often an idle SSE stream gets a comment line, so proxies keep it open. */
  sseKeepAliveMs: number
  /** Bytes queued for a socket that stopped reading before it is closed with 4008. */
  slowConsumerBytes: number
  maxBodyBytes: number
  maxFrameBytes: number
  logLevel: 'debug' | 'info' | 'warn' | 'error'
  /**
   * Upstream sync (src/upstream.ts): poll another Switchboard's `GET /api/events/since` and ingest
   * what it returns; null = off. `url` has no trailing slash; `token` is the upstream bearer.
   */
  upstream: { url: string; token: string | null; minIntervalMs: number; maxIntervalMs: number } | null
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** `60/10s` → 60 messages per 10 000 ms; `off` → no limit. */
export function parseRateLimit(value: string): RateLimit | null {
  if (value === 'off') return null
  const match = /^(\d+)\/(\d+)?(ms|s|m|h)$/.exec(value)
  const max = Number(match?.[1])
  if (!match || max < 1) throw new Error('must look like 60/10s (count/window, units ms s m h) or off')
  return { max, windowMs: Number(match[2] ?? 1) * DURATION_UNITS[match[3]!]! }
}

const integer = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.coerce.number({ error: 'must be a number' }).int('must be a whole number').min(min).max(max)

const envSchema = z.object({
  REALTIME_HOST: z.string().min(1).default('127.0.0.1'),
  REALTIME_PORT: integer(0, 65535).default(3693),
  REALTIME_DB: z.string().min(1).default('./data/realtime.db'),
  REALTIME_DB_CACHE_MB: integer(1, 65_536).default(64),
  REALTIME_RETENTION_HOURS: z.coerce.number({ error: 'must be a number' }).positive().default(24),
  REALTIME_PRUNE_INTERVAL_SECONDS: z.coerce.number({ error: 'must be a number' }).positive().default(600),
  REALTIME_AUTH: z.enum(['none', 'jwt']).default('none'),
  REALTIME_JWT_SECRET: z.string().min(32, 'must be at least 32 characters').optional(),
  REALTIME_AUTH_TIMEOUT_MS: integer(1).default(30_000),
  REALTIME_ORG_ID: z.string().regex(PRINCIPAL_ID_PATTERN, 'must be 1-128 characters of A-Z a-z 0-9 . _ @ : + -').default('local'),
  REALTIME_USER_ID: z.string().regex(PRINCIPAL_ID_PATTERN, 'must be 1-128 characters of A-Z a-z 0-9 . _ @ : + -').default('local'),
  REALTIME_RATE_LIMIT: z.string().default('60/10s'),
  REALTIME_HTTP_RATE_LIMIT: z.string().default('3000/10s'),
  REALTIME_SESSION_POLICY: z.enum(['multiple', 'single']).default('multiple'),
  REALTIME_MAX_CONNECTIONS: integer(1).default(10_000),
  REALTIME_MAX_CONNECTIONS_PER_USER: integer(1).default(1000),
  REALTIME_MAX_SUBSCRIPTIONS: integer(1).default(1000),
  REALTIME_MAX_STREAMS_PER_CREDENTIAL: integer(1).default(20),
  REALTIME_SSE_KEEPALIVE_MS: integer(100).default(15_000),
  REALTIME_SLOW_CONSUMER_BYTES: integer(65_536).default(8 * 1024 * 1024),
  REALTIME_MAX_BODY_BYTES: integer(1024).default(1_048_576),
  REALTIME_MAX_FRAME_BYTES: integer(256).default(65_536),
  REALTIME_LOG_LEVEL: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
  REALTIME_UPSTREAM_URL: z.string().optional(),
  REALTIME_UPSTREAM_TOKEN: z.string().regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces').optional(),
  REALTIME_UPSTREAM_MIN_INTERVAL_MS: integer(10, 86_400_000).default(5000),
  REALTIME_UPSTREAM_MAX_INTERVAL_MS: integer(10, 86_400_000).default(30_000),
})

export const SETTINGS = Object.keys(envSchema.shape) as Array<keyof typeof envSchema.shape>
const SECRET_SETTINGS = new Set(['REALTIME_JWT_SECRET', 'REALTIME_UPSTREAM_TOKEN'])

export class ConfigError extends Error {}

/** Reads settings from the environment, overridden by `--flag value` / `--flag=value` arguments. */
export function loadConfig(env: Record<string, string | undefined>, argv: readonly string[] = []): Config {
  const values: Record<string, string | undefined> = {}
  for (const name of SETTINGS) values[name] = env[name] === '' ? undefined : env[name]
  Object.assign(values, parseFlags(argv))

  const parsed = envSchema.safeParse(values)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!
    const name = String(issue.path[0])
    // A secret is named, never shown: this message goes to logs.
    const shown = SECRET_SETTINGS.has(name) ? `(${(values[name] ?? '').length} characters)` : JSON.stringify(values[name] ?? '')
    throw new ConfigError(`${name}=${shown} is invalid: ${issue.message}`)
  }
  const s = parsed.data
  const limit = (name: 'REALTIME_RATE_LIMIT' | 'REALTIME_HTTP_RATE_LIMIT') => {
    try {
      return parseRateLimit(s[name])
    } catch (error) {
      throw new ConfigError(`${name}=${JSON.stringify(s[name])} is invalid: ${(error as Error).message}`)
    }
  }
  if (s.REALTIME_UPSTREAM_MAX_INTERVAL_MS < s.REALTIME_UPSTREAM_MIN_INTERVAL_MS) {
    throw new ConfigError(
      `REALTIME_UPSTREAM_MAX_INTERVAL_MS=${JSON.stringify(String(s.REALTIME_UPSTREAM_MAX_INTERVAL_MS))} is invalid: must be at least REALTIME_UPSTREAM_MIN_INTERVAL_MS (${s.REALTIME_UPSTREAM_MIN_INTERVAL_MS})`,
    )
  }
  if (s.REALTIME_AUTH === 'jwt' && !s.REALTIME_JWT_SECRET) {
    throw new ConfigError('REALTIME_JWT_SECRET is required when REALTIME_AUTH=jwt')
  }
  return {
    host: s.REALTIME_HOST,
    port: s.REALTIME_PORT,
    dbPath: s.REALTIME_DB,
    dbCacheMb: s.REALTIME_DB_CACHE_MB,
    retentionHours: s.REALTIME_RETENTION_HOURS,
    pruneIntervalMs: s.REALTIME_PRUNE_INTERVAL_SECONDS * 1000,
    auth:
      s.REALTIME_AUTH === 'jwt'
        ? { mode: 'jwt', secret: s.REALTIME_JWT_SECRET! }
        : { mode: 'none', orgId: s.REALTIME_ORG_ID, userId: s.REALTIME_USER_ID },
    authTimeoutMs: s.REALTIME_AUTH_TIMEOUT_MS,
    rateLimit: limit('REALTIME_RATE_LIMIT'),
    httpRateLimit: limit('REALTIME_HTTP_RATE_LIMIT'),
    sessionPolicy: s.REALTIME_SESSION_POLICY,
    maxConnections: s.REALTIME_MAX_CONNECTIONS,
    maxConnectionsPerUser: s.REALTIME_MAX_CONNECTIONS_PER_USER,
    maxSubscriptions: s.REALTIME_MAX_SUBSCRIPTIONS,
    maxStreamsPerCredential: s.REALTIME_MAX_STREAMS_PER_CREDENTIAL,
    sseKeepAliveMs: s.REALTIME_SSE_KEEPALIVE_MS,
    slowConsumerBytes: s.REALTIME_SLOW_CONSUMER_BYTES,
    maxBodyBytes: s.REALTIME_MAX_BODY_BYTES,
    maxFrameBytes: s.REALTIME_MAX_FRAME_BYTES,
    logLevel: s.REALTIME_LOG_LEVEL,
    upstream:
      s.REALTIME_UPSTREAM_URL === undefined
        ? null
        : {
            url: parseUpstreamUrl(s.REALTIME_UPSTREAM_URL),
            token: s.REALTIME_UPSTREAM_TOKEN ?? null,
            minIntervalMs: s.REALTIME_UPSTREAM_MIN_INTERVAL_MS,
            maxIntervalMs: s.REALTIME_UPSTREAM_MAX_INTERVAL_MS,
          },
  }
}

/** An http(s) base URL without credentials, query or fragment; returned without trailing slash. */
function parseUpstreamUrl(value: string): string {
  // Credentials belong in REALTIME_UPSTREAM_TOKEN: never echo any found in the URL.
  const shown = JSON.stringify(value.replace(/\/\/[^/?#]*@/, '//***@'))
  const invalid = (why: string) => new ConfigError(`REALTIME_UPSTREAM_URL=${shown} is invalid: ${why}`)
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw invalid('must be an http(s) URL')
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw invalid('must be an http(s) URL')
  if (url.username || url.password) throw invalid('must not contain credentials (use REALTIME_UPSTREAM_TOKEN)')
  if (url.search || url.hash) throw invalid('must not have a query or fragment')
  return `${url.origin}${url.pathname.replace(/\/+$/, '')}`
}

/** `--retention-hours 2` and `--retention-hours=2` → { REALTIME_RETENTION_HOURS: '2' }. */
function parseFlags(argv: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (!arg.startsWith('--')) throw new ConfigError(`unexpected argument ${JSON.stringify(arg)}`)
    const [flag, inline] = arg.slice(2).split(/=(.*)/s, 2) as [string, string | undefined]
    const name = `REALTIME_${flag.toUpperCase().replaceAll('-', '_')}`
    if (!(SETTINGS as string[]).includes(name)) throw new ConfigError(`unknown option --${flag}`)
    const value = inline ?? argv[++i]
    if (value === undefined) throw new ConfigError(`option --${flag} needs a value`)
    out[name] = value
  }
  return out
}

/** The defaults, overridden by `overrides`: what an embedding program starts from. */
export function defaultConfig(overrides: Partial<Config> = {}): Config {
  return { ...loadConfig({}), ...overrides }
}
