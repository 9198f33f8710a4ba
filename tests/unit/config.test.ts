import { describe, expect, test } from 'bun:test'
import { ConfigError, loadConfig, parseRateLimit } from '../../src/config'

describe('loadConfig', () => {
  test('defaults match the protocol', () => {
    const config = loadConfig({})
    expect(config).toEqual({
      host: '127.0.0.1',
      port: 3693,
      dbPath: './data/realtime.db',
      dbCacheMb: 64,
      retentionHours: 24,
      pruneIntervalMs: 600_000,
      auth: { mode: 'none', orgId: 'local', userId: 'local' },
      authTimeoutMs: 30_000,
      rateLimit: { max: 60, windowMs: 10_000 },
      httpRateLimit: { max: 3000, windowMs: 10_000 },
      sessionPolicy: 'multiple',
      maxConnections: 10_000,
      maxConnectionsPerUser: 1000,
      maxSubscriptions: 1000,
      maxStreamsPerCredential: 20,
      sseKeepAliveMs: 15_000,
      slowConsumerBytes: 8_388_608,
      maxBodyBytes: 1_048_576,
      maxFrameBytes: 65_536,
      logLevel: 'info',
      upstream: null,
    })
  })

  test('reads every variable, and flags override the environment', () => {
    const config = loadConfig(
      { REALTIME_PORT: '4000', REALTIME_DB: ':memory:', REALTIME_RETENTION_HOURS: '0.5', REALTIME_ORG_ID: 'acme' },
      ['--port', '5000', '--rate-limit=10/1m'],
    )
    expect(config.port).toBe(5000)
    expect(config.dbPath).toBe(':memory:')
    expect(config.retentionHours).toBe(0.5)
    expect(config.auth).toEqual({ mode: 'none', orgId: 'acme', userId: 'local' })
    expect(config.rateLimit).toEqual({ max: 10, windowMs: 60_000 })
  })

  test('an empty variable means the default', () => {
    expect(loadConfig({ REALTIME_PORT: '' }).port).toBe(3693)
  })

  test.each([
    [{ REALTIME_PORT: 'abc' }, /^REALTIME_PORT="abc" is invalid/],
    [{ REALTIME_PORT: '70000' }, /^REALTIME_PORT="70000" is invalid/],
    [{ REALTIME_RETENTION_HOURS: '-1' }, /^REALTIME_RETENTION_HOURS/],
    [{ REALTIME_AUTH: 'basic' }, /^REALTIME_AUTH="basic" is invalid/],
    [{ REALTIME_AUTH: 'jwt' }, /^REALTIME_JWT_SECRET is required/],
    [{ REALTIME_AUTH: 'jwt', REALTIME_JWT_SECRET: 'short' }, /^REALTIME_JWT_SECRET=.* at least 32/],
    [{ REALTIME_RATE_LIMIT: 'lots' }, /^REALTIME_RATE_LIMIT="lots" is invalid/],
    [{ REALTIME_HTTP_RATE_LIMIT: '5/1d' }, /^REALTIME_HTTP_RATE_LIMIT="5\/1d" is invalid/],
    [{ REALTIME_SESSION_POLICY: 'one' }, /^REALTIME_SESSION_POLICY/],
    [{ REALTIME_MAX_CONNECTIONS: '0' }, /^REALTIME_MAX_CONNECTIONS/],
    [{ REALTIME_SLOW_CONSUMER_BYTES: '100' }, /^REALTIME_SLOW_CONSUMER_BYTES/],
    [{ REALTIME_ORG_ID: 'a|b' }, /^REALTIME_ORG_ID/],
    [{ REALTIME_MAX_BODY_BYTES: '10' }, /^REALTIME_MAX_BODY_BYTES/],
    [{ REALTIME_UPSTREAM_URL: 'ftp://example.com' }, /^REALTIME_UPSTREAM_URL="ftp:\/\/example.com" is invalid: must be an http\(s\) URL/],
    [{ REALTIME_UPSTREAM_URL: 'not a url' }, /^REALTIME_UPSTREAM_URL="not a url" is invalid/],
    [{ REALTIME_UPSTREAM_URL: 'http://h/?since=3' }, /^REALTIME_UPSTREAM_URL=.* must not have a query/],
    [{ REALTIME_UPSTREAM_MIN_INTERVAL_MS: '0' }, /^REALTIME_UPSTREAM_MIN_INTERVAL_MS="0" is invalid/],
    [{ REALTIME_UPSTREAM_MIN_INTERVAL_MS: '5s' }, /^REALTIME_UPSTREAM_MIN_INTERVAL_MS="5s" is invalid/],
    [{ REALTIME_UPSTREAM_MAX_INTERVAL_MS: '1000' }, /^REALTIME_UPSTREAM_MAX_INTERVAL_MS="1000" is invalid: must be at least REALTIME_UPSTREAM_MIN_INTERVAL_MS \(5000\)/],
  ])('a bad value names its setting: %j', (env, message) => {
    expect(() => loadConfig(env)).toThrow(ConfigError)
    expect(() => loadConfig(env)).toThrow(message)
  })

  test('upstream sync: off by default, on with a URL (normalised), token and intervals from variables or flags', () => {
    expect(loadConfig({ REALTIME_UPSTREAM_TOKEN: 'sbk_x' }).upstream).toBeNull()
    expect(loadConfig({ REALTIME_UPSTREAM_URL: 'https://cloud.example.com/realtime/' }).upstream).toEqual({
      url: 'https://cloud.example.com/realtime',
      token: null,
      minIntervalMs: 5000,
      maxIntervalMs: 30_000,
    })
    const config = loadConfig({ REALTIME_UPSTREAM_URL: 'http://127.0.0.1:4000', REALTIME_UPSTREAM_TOKEN: 'sbk_abc' }, [
      '--upstream-min-interval-ms=50',
      '--upstream-max-interval-ms',
      '200',
    ])
    expect(config.upstream).toEqual({ url: 'http://127.0.0.1:4000', token: 'sbk_abc', minIntervalMs: 50, maxIntervalMs: 200 })
  })

  test('a bad upstream token or a URL with credentials is refused without echoing the secret', () => {
    const secret = 'tok en-secret-value'
    expect(() => loadConfig({ REALTIME_UPSTREAM_URL: 'http://h', REALTIME_UPSTREAM_TOKEN: secret })).toThrow(/^REALTIME_UPSTREAM_TOKEN=\(19 characters\) is invalid/)
    let message = ''
    try {
      loadConfig({ REALTIME_UPSTREAM_URL: 'http://user:hunter2@h' })
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError)
      message = (error as Error).message
    }
    expect(message).toContain('must not contain credentials')
    expect(message).not.toContain('hunter2')
  })

  test('unknown or incomplete flags are refused', () => {
    expect(() => loadConfig({}, ['--colour', 'red'])).toThrow('unknown option --colour')
    expect(() => loadConfig({}, ['--port'])).toThrow('option --port needs a value')
    expect(() => loadConfig({}, ['serve'])).toThrow('unexpected argument "serve"')
  })

  test('jwt mode takes the secret', () => {
    const secret = 'x'.repeat(32)
    expect(loadConfig({ REALTIME_AUTH: 'jwt', REALTIME_JWT_SECRET: secret }).auth).toEqual({ mode: 'jwt', secret })
  })
})

describe('parseRateLimit', () => {
  test.each([
    ['60/10s', { max: 60, windowMs: 10_000 }],
    ['5/s', { max: 5, windowMs: 1000 }],
    ['100/500ms', { max: 100, windowMs: 500 }],
    ['1000/1h', { max: 1000, windowMs: 3_600_000 }],
    ['off', null],
  ])('%s', (value, expected) => {
    expect(parseRateLimit(value)).toEqual(expected)
  })

  test.each(['60', '0/10s', '60/10d', '/10s', 'sixty/10s'])('rejects %s', (value) => {
    expect(() => parseRateLimit(value)).toThrow()
  })
})
