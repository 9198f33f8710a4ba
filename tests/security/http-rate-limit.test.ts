import { afterEach, describe, expect, test } from 'bun:test'
import { runKeys } from '../../src/cli/keys'
import type { RealtimeServerOptions } from '../../src/server'
import { getJson, ingest, makeEvent, startServer, waitFor, type TestServer } from '../helpers/server'
import { bearer, jwt, SECRET } from './support'

/**
 * The per-credential HTTP rate limit (REALTIME_HTTP_RATE_LIMIT): past `max` requests in a window
 * a credential gets 429 `rate_limited` with Retry-After; other credentials are unaffected, a 429'd
 * ingest stores nothing, and GET /health is never limited.
 */

const LIMIT = { max: 5, windowMs: 60_000 }

let servers: TestServer[] = []

afterEach(async () => {
  for (const server of servers.splice(0)) await server.close()
})

async function start(options: RealtimeServerOptions = {}): Promise<TestServer> {
  const server = await startServer({ auth: { mode: 'jwt', secret: SECRET }, httpRateLimit: LIMIT, ...options })
  servers.push(server)
  return server
}

/** A new API key of `org` in the server's database (the CLI's code, in-process). */
function apiKey(t: TestServer, org: string): string {
  const out: string[] = []
  const code = runKeys(['create', '--org', org, '--label', 'rate', '--json'], { REALTIME_DB: t.dbPath }, { out: (l) => out.push(l), err: () => {} })
  expect(code).toBe(0)
  return JSON.parse(out[0]!).key
}

async function eventsStored(t: TestServer): Promise<number> {
  const { status, body } = await getJson(`${t.url}/health`)
  expect(status).toBe(200)
  return body.eventsStored
}

/** Expects a 429 with the documented body and a Retry-After of whole seconds within the window. */
async function expectLimited(response: Response, windowMs = LIMIT.windowMs): Promise<number> {
  expect(response.status).toBe(429)
  expect(response.headers.get('content-type')).toMatch(/^application\/json/)
  const body = (await response.json()) as any
  expect(body).toEqual({ error: { code: 'rate_limited', message: expect.any(String) } })
  expect(body.error.message.length).toBeGreaterThan(0)
  const retryAfter = response.headers.get('retry-after')
  expect(retryAfter).toMatch(/^\d+$/)
  const seconds = Number(retryAfter)
  expect(seconds).toBeGreaterThanOrEqual(1)
  expect(seconds).toBeLessThanOrEqual(Math.ceil(windowMs / 1000))
  return seconds
}

const post = (t: TestServer, body: unknown, headers: Record<string, string>) =>
  fetch(`${t.url}/ingest`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })

describe('one credential past its limit', () => {
  test('the 6th request is 429 rate_limited with Retry-After, and the 429d ingest stored nothing', async () => {
    const t = await start()
    const u1 = bearer(await jwt('u1', 'acme'))
    for (let i = 0; i < LIMIT.max; i++) {
      const response = await ingest(t.url, makeEvent({ orgId: 'acme', userId: 'u1' }), u1)
      expect({ i, status: response.status }).toEqual({ i, status: 200 })
    }
    expect(await eventsStored(t)).toBe(5)

    const refused = makeEvent({ orgId: 'acme', userId: 'u1' })
    const seconds = await expectLimited(await post(t, refused, u1))
    expect(seconds).toBeGreaterThan(50) // the window started a moment ago
    // Still limited, whatever the endpoint; still nothing stored.
    await expectLimited(await post(t, { events: [makeEvent({ orgId: 'acme' }), makeEvent({ orgId: 'acme' })] }, u1))
    await expectLimited(await fetch(`${t.url}/api/events/since?since=0`, { headers: u1 }))
    expect(await eventsStored(t)).toBe(5)

    // Another user of the same organisation sees the five, and not the refused one.
    const page = await getJson(`${t.url}/api/events/since?since=0`, bearer(await jwt('reader', 'acme')))
    expect(page.status).toBe(200)
    expect(page.body.events).toHaveLength(5)
    expect(page.body.events.map((e: any) => e.id)).not.toContain(refused.id)
  })

  test('the budget is shared by every HTTP API endpoint of that credential', async () => {
    const t = await start()
    const u1 = bearer(await jwt('u1', 'acme'))
    const heartbeat = () =>
      fetch(`${t.url}/api/heartbeat`, { method: 'POST', headers: { 'content-type': 'application/json', ...u1 }, body: JSON.stringify({ clientId: 'c1' }) })
    const statuses = [
      (await ingest(t.url, makeEvent({ orgId: 'acme' }), u1)).status,
      (await getJson(`${t.url}/api/events/since?since=0`, u1)).status,
      (await heartbeat()).status,
      (await getJson(`${t.url}/api/presence`, u1)).status,
      (await getJson(`${t.url}/api/events/since?since=0&channel=org:acme`, u1)).status,
    ]
    expect(statuses).toEqual([200, 200, 200, 200, 200])
    await expectLimited(await heartbeat())
    await expectLimited(await fetch(`${t.url}/api/presence`, { headers: u1 }))
  })

  test('past the limit, a bad body or query is 429 too: the limit comes before the body is read', async () => {
    const t = await start()
    const u1 = bearer(await jwt('u1', 'acme'))
    for (let i = 0; i < LIMIT.max; i++) expect((await ingest(t.url, makeEvent({ orgId: 'acme' }), u1)).status).toBe(200)
    await expectLimited(await post(t, makeEvent({ orgId: 'acme' }), u1))
    // A limited caller must not get the server to read, parse and validate (up to 1 MiB) bodies.
    await expectLimited(await fetch(`${t.url}/ingest`, { method: 'POST', headers: { 'content-type': 'application/json', ...u1 }, body: '{"not json' }))
    await expectLimited(await post(t, { events: [{ id: 'not-a-uuid' }] }, u1))
    await expectLimited(await fetch(`${t.url}/api/events/since?limit=lots`, { headers: u1 }))
  })

  test('two tokens of the same user share one budget', async () => {
    const t = await start()
    const first = bearer(await jwt('u1', 'acme'))
    const second = bearer(await jwt('u1', 'acme', { exp: Math.floor(Date.now() / 1000) + 7200 }))
    expect(first.authorization).not.toBe(second.authorization)
    for (let i = 0; i < 3; i++) expect((await ingest(t.url, makeEvent({ orgId: 'acme' }), first)).status).toBe(200)
    for (let i = 0; i < 2; i++) expect((await ingest(t.url, makeEvent({ orgId: 'acme' }), second)).status).toBe(200)
    await expectLimited(await post(t, makeEvent({ orgId: 'acme' }), second))
    await expectLimited(await post(t, makeEvent({ orgId: 'acme' }), first))
    expect(await eventsStored(t)).toBe(5)
  })

  test('none mode: the local principal is one credential, limited the same way', async () => {
    const t = await start({ auth: { mode: 'none', orgId: 'local', userId: 'local' } })
    for (let i = 0; i < LIMIT.max; i++) expect((await ingest(t.url, makeEvent())).status).toBe(200)
    await expectLimited(await post(t, makeEvent(), {}))
    expect(await eventsStored(t)).toBe(5)
  })
})

describe('what the limit does not touch', () => {
  test('other credentials are unaffected: another user, a user of another org, an API key', async () => {
    const t = await start()
    const u1 = bearer(await jwt('u1', 'acme'))
    for (let i = 0; i < LIMIT.max; i++) expect((await ingest(t.url, makeEvent({ orgId: 'acme' }), u1)).status).toBe(200)
    await expectLimited(await post(t, makeEvent({ orgId: 'acme' }), u1))

    const others = {
      u2: bearer(await jwt('u2', 'acme')),
      'u1 of globex': bearer(await jwt('u1', 'globex')),
      'api key of acme': bearer(apiKey(t, 'acme')),
    }
    for (const [who, headers] of Object.entries(others)) {
      const org = who.includes('globex') ? 'globex' : 'acme'
      const statuses: number[] = []
      for (let i = 0; i < LIMIT.max; i++) statuses.push((await ingest(t.url, makeEvent({ orgId: org }), headers)).status)
      expect({ who, statuses }).toEqual({ who, statuses: [200, 200, 200, 200, 200] })
      // …and each has its own limit.
      await expectLimited(await post(t, makeEvent({ orgId: org }), headers))
    }
    expect(await eventsStored(t)).toBe(20)
    // u1 is still limited: the others' requests did not reset it.
    await expectLimited(await post(t, makeEvent({ orgId: 'acme' }), u1))
  })

  test('GET /health is never limited, with or without a limited credential', async () => {
    const t = await start()
    const u1 = bearer(await jwt('u1', 'acme'))
    for (let i = 0; i < LIMIT.max; i++) expect((await ingest(t.url, makeEvent({ orgId: 'acme' }), u1)).status).toBe(200)
    await expectLimited(await post(t, makeEvent({ orgId: 'acme' }), u1))
    for (let i = 0; i < 3 * LIMIT.max; i++) {
      const headers = i % 2 === 0 ? u1 : {}
      const response = await fetch(`${t.url}/health`, { headers })
      expect({ i, status: response.status, retryAfter: response.headers.get('retry-after') }).toEqual({ i, status: 200, retryAfter: null })
      expect(((await response.json()) as any).status).toBe('ok')
    }
  })

  test('the window passes: the credential may send again', async () => {
    const windowMs = 400
    const t = await start({ httpRateLimit: { max: 5, windowMs } })
    const u1 = bearer(await jwt('u1', 'acme'))
    for (let i = 0; i < 5; i++) expect((await ingest(t.url, makeEvent({ orgId: 'acme' }), u1)).status).toBe(200)
    expect(await expectLimited(await post(t, makeEvent({ orgId: 'acme' }), u1), windowMs)).toBe(1)
    const stored = makeEvent({ orgId: 'acme' })
    await waitFor(async () => (await post(t, stored, u1)).status === 200, 3000, 'the window to pass')
    expect(await eventsStored(t)).toBe(6)
  })
})
