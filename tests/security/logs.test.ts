import { afterEach, describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import type { Subprocess } from 'bun'
import { runKeys } from '../../src/cli/keys'
import { spawnService, type ServiceProcess } from '../helpers/process'
import { tempDir, waitFor } from '../helpers/server'
import { TestSocket } from '../helpers/ws'
import { exitWithin, jwt, killChild, SECRET } from './support'

/**
 * Tokens and keys never reach the logs: a `jwt`-mode service (a real process, debug level) is
 * exercised with good, bad, expired and revoked JWTs and API keys over HTTP and WebSocket, and none
 * of its log lines holds any of those strings (nor a telling part of them, nor the JWT secret).
 */

const ROOT = join(import.meta.dir, '..', '..')
const DAY = 86_400_000

const children: Subprocess[] = []
const sockets: TestSocket[] = []
const cleanups: Array<() => void> = []

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  for (const child of children.splice(0)) await killChild(child)
  for (const cleanup of cleanups.splice(0)) cleanup()
})

/** Creates an API key with the CLI's code (in-process); `now` fakes its clock. */
function createKey(db: string, org: string, options: { expiresDays?: number; now?: () => number } = {}): { key: string; id: string } {
  const out: string[] = []
  const args = ['create', '--org', org, '--label', 'logs', '--json']
  if (options.expiresDays !== undefined) args.push('--expires-days', String(options.expiresDays))
  expect(runKeys(args, { REALTIME_DB: db }, { out: (l) => out.push(l), err: () => {} }, options.now)).toBe(0)
  return JSON.parse(out[0]!)
}

/** The strings that must not appear: each credential, and the part of it that identifies it. */
function fragments(secret: string): string[] {
  if (secret.startsWith('sbk_')) return [secret, secret.slice(4)]
  const parts = secret.split('.')
  return parts.length === 3 ? [secret, parts[2]!, `${parts[1]}.${parts[2]}`] : [secret]
}

async function open(service: ServiceProcess, query = ''): Promise<TestSocket> {
  const socket = await TestSocket.open(`${service.url.replace('http', 'ws')}/ws${query}`)
  sockets.push(socket)
  return socket
}

describe('logs', () => {
  test('no log line of a jwt-mode service contains a token or key it was given', async () => {
    const tmp = tempDir()
    cleanups.push(tmp.cleanup)
    const db = join(tmp.dir, 'realtime.db')
    const key = createKey(db, 'acme')
    const revoked = createKey(db, 'acme')
    expect(runKeys(['revoke', revoked.id], { REALTIME_DB: db }, { out: () => {}, err: () => {} })).toBe(0)
    const expiredKey = createKey(db, 'acme', { expiresDays: 1, now: () => Date.now() - 2 * DAY })

    const service = await spawnService({
      REALTIME_AUTH: 'jwt',
      REALTIME_JWT_SECRET: SECRET,
      REALTIME_DB: db,
      REALTIME_LOG_LEVEL: 'debug',
      REALTIME_AUTH_TIMEOUT_MS: '300',
      REALTIME_RATE_LIMIT: '5/10s',
      REALTIME_HTTP_RATE_LIMIT: '3/10s',
      REALTIME_MAX_CONNECTIONS_PER_USER: '2',
    })
    children.push(service.proc)

    const good = {
      jwt: await jwt('u1', 'acme'),
      jwt2: await jwt('u2', 'acme'),
      jwt3: await jwt('u3', 'acme'),
      key: key.key,
    }
    const bad = {
      expired: await jwt('u1', 'acme', { exp: Math.floor(Date.now() / 1000) - 60 }),
      wrongSecret: await jwt('u1', 'acme', { secret: 'another-secret-that-is-long-enough-0123456789' }),
      garbage: `garbage-token-${crypto.randomUUID()}`,
      revokedKey: revoked.key,
      expiredKey: expiredKey.key,
      garbageKey: `sbk_${crypto.randomUUID().replaceAll('-', '')}${crypto.randomUUID().replaceAll('-', '').slice(0, 11)}`,
    }
    const secrets = [...Object.values(good), ...Object.values(bad)]

    const post = (body: unknown, authorization?: string, path = '/ingest') =>
      fetch(`${service.url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(authorization === undefined ? {} : { authorization }) },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      })
    const event = (orgId = 'acme') => ({ id: crypto.randomUUID(), type: 'test.logged', orgId, userId: 'u1', timestamp: Date.now(), payload: {} })

    // HTTP: every bad credential is a 401.
    for (const [name, token] of Object.entries(bad)) {
      expect({ name, status: (await post(event(), `Bearer ${token}`)).status }).toEqual({ name, status: 401 })
      const since = await fetch(`${service.url}/api/events/since`, { headers: { authorization: `Bearer ${token}` } })
      expect({ name, status: since.status }).toEqual({ name, status: 401 })
    }
    // Credentials in the wrong places: not a Bearer header, in the query, in the path.
    expect((await post(event(), good.key)).status).toBe(401)
    expect((await post(event(), `Basic ${good.jwt}`)).status).toBe(401)
    expect((await fetch(`${service.url}/api/events/since?token=${good.jwt}`)).status).toBe(401)
    expect((await fetch(`${service.url}/nowhere/${good.key}`)).status).toBe(404)
    // Good credentials: accepted, refused for another org, bad bodies, and rate limited.
    expect((await post(event(), `Bearer ${good.jwt}`)).status).toBe(200)
    expect((await post(event('other'), `Bearer ${good.jwt}`)).status).toBe(403)
    expect((await post(`{"not json`, `Bearer ${good.jwt}`)).status).toBe(400)
    expect((await post({ events: [event(), { broken: true }] }, `Bearer ${good.key}`)).status).toBe(400)
    expect((await post({ clientId: 'c1' }, `Bearer ${good.key}`, '/api/heartbeat')).status).toBe(200)
    for (const token of [good.jwt, good.key]) {
      const statuses: number[] = []
      while (statuses.length < 5 && statuses.at(-1) !== 429) statuses.push((await post(event(), `Bearer ${token}`)).status)
      expect(statuses.at(-1)).toBe(429)
    }

    // WebSocket: bad credentials on the upgrade and as auth messages → 4401.
    for (const [name, token] of Object.entries(bad)) {
      const byQuery = await open(service, `?token=${encodeURIComponent(token)}`)
      expect({ name, code: (await byQuery.waitClosed()).code }).toEqual({ name, code: 4401 })
      const byMessage = await open(service)
      byMessage.send({ type: 'auth', token })
      expect({ name, code: (await byMessage.waitClosed()).code }).toEqual({ name, code: 4401 })
    }
    // Good credentials both ways, a second principal on an authenticated socket, a foreign channel.
    const a = await open(service, `?token=${good.jwt2}`)
    expect((await a.next()).type).toBe('authenticated')
    a.send({ type: 'auth', token: good.key })
    expect(await a.next()).toMatchObject({ type: 'error', code: 'forbidden' })
    const b = await open(service)
    b.send({ type: 'auth', token: good.key })
    expect(await b.next()).toMatchObject({ type: 'authenticated', userId: `key:${key.id}` })
    b.send({ type: 'subscribe', channelId: 'org:other' })
    expect(await b.next()).toMatchObject({ type: 'error', code: 'forbidden' })
    b.send({ type: 'request', id: 'r1', action: good.key, payload: { token: good.jwt } })
    expect(await b.next()).toMatchObject({ type: 'response', success: false })
    // The per-user connection limit (the key's principal), the auth timeout, the message rate limit.
    const c = await open(service, `?token=${good.key}`)
    expect((await c.next()).type).toBe('authenticated')
    const d = await open(service, `?token=${good.key}`)
    expect((await d.waitClosed()).code).toBe(4503)
    const silent = await open(service)
    expect((await silent.waitClosed()).code).toBe(4408)
    const chatty = await open(service, `?token=${good.jwt3}`)
    expect((await chatty.next()).type).toBe('authenticated')
    for (let i = 0; i < 6; i++) chatty.send({ type: 'auth', token: good.jwt3 })
    expect((await chatty.waitClosed()).code).toBe(4429)

    // Stop it, so every line is flushed.
    service.proc.kill('SIGTERM')
    expect(await exitWithin(service.proc, 8000)).toBe(0)
    await waitFor(() => service.logs.some((line) => line.event === 'stopped'), 2000, 'the stopped line')

    // The exercises were logged (so the check below is not vacuous)…
    const events = service.logs.map((line) => line.event)
    expect(events.filter((e) => e === 'auth_failed').length).toBe(2 * Object.keys(bad).length)
    for (const name of ['listening', 'auth_timeout', 'rate_limit_hit', 'connection_limit_per_user', 'shutdown', 'stopped']) expect(events).toContain(name)
    // …and no line holds a credential, a telling part of one, or the JWT secret.
    const lines = service.logs.map((line) => JSON.stringify(line))
    for (const secret of secrets) {
      for (const fragment of fragments(secret)) {
        const leaks = lines.filter((line) => line.includes(fragment))
        expect({ fragment, leaks }).toEqual({ fragment, leaks: [] })
      }
    }
    expect(lines.filter((line) => line.includes(SECRET))).toEqual([])
  }, 20_000)

  test('a rejected REALTIME_JWT_SECRET is not echoed in the invalid_config line', async () => {
    const tooShort = `short-${crypto.randomUUID().slice(0, 8)}` // a real secret, only too short
    const runs = [
      { env: { REALTIME_JWT_SECRET: tooShort }, args: [] as string[] },
      { env: {}, args: ['--jwt-secret', tooShort] },
    ]
    for (const run of runs) {
      const proc = Bun.spawn(['bun', join(ROOT, 'src/main.ts'), ...run.args], {
        cwd: ROOT,
        env: { ...process.env, REALTIME_HOST: '127.0.0.1', REALTIME_PORT: '0', REALTIME_DB: ':memory:', REALTIME_AUTH: 'jwt', ...run.env },
        stdin: 'ignore',
        stdout: 'pipe',
        stderr: 'pipe',
      })
      children.push(proc)
      const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), exitWithin(proc, 10_000)])
      expect(code).toBe(2)
      const line = JSON.parse(out.trim())
      expect(line).toMatchObject({ level: 'error', event: 'invalid_config' })
      expect(line.message).toContain('REALTIME_JWT_SECRET')
      expect(line.message).toContain('at least 32 characters')
      expect({ args: run.args.length > 0, stdout: out.includes(tooShort), stderr: err.includes(tooShort) }).toEqual({
        args: run.args.length > 0,
        stdout: false,
        stderr: false,
      })
    }
  })
})
