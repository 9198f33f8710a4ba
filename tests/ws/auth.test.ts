import { afterEach, beforeEach, describe, expect, test } from 'bun:test'
import { SignJWT } from 'jose'
import { getJson, ingest, makeEvent, startServer, type TestServer } from '../helpers/server'
import { TestSocket } from '../helpers/ws'

/**
 * `jwt` mode: tokens on the upgrade or as the first message, what an unauthenticated socket may
 * do, the 4401 / 4408 closes, organisation isolation over WebSocket, and HTTP credentials.
 */

const SECRET = 'switchboard-test-secret-0123456789abcdef'
const AUTH_TIMEOUT_MS = 300

interface TokenOptions {
  /** Expiry in seconds since the epoch; default one hour from now. */
  exp?: number
  secret?: string
  org?: string | null
}

async function token(sub: string, org: string, options: TokenOptions = {}): Promise<string> {
  const claims = options.org === null ? {} : { org: options.org ?? org }
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime(options.exp ?? Math.floor(Date.now() / 1000) + 3600)
    .sign(new TextEncoder().encode(options.secret ?? SECRET))
}

let t: TestServer
const sockets: TestSocket[] = []

beforeEach(async () => {
  t = await startServer({ auth: { mode: 'jwt', secret: SECRET }, authTimeoutMs: AUTH_TIMEOUT_MS })
})
afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  await t.close()
})

async function open(query = ''): Promise<TestSocket> {
  const socket = await TestSocket.open(`${t.wsUrl}${query}`)
  sockets.push(socket)
  return socket
}

/** A socket authenticated with an auth message. */
async function signedIn(sub: string, org: string): Promise<TestSocket> {
  const socket = await open()
  socket.send({ type: 'auth', token: await token(sub, org) })
  expect(await socket.next()).toEqual({ type: 'authenticated', userId: sub, orgId: org })
  return socket
}

async function subscribe(socket: TestSocket, channelId: string) {
  socket.send({ type: 'subscribe', channelId })
  return socket.next((f) => f.type === 'subscribed' && f.channelId === channelId)
}

async function roundTrip(socket: TestSocket): Promise<void> {
  expect(await socket.request({ type: 'ping' }, 'pong')).toEqual({ type: 'pong' })
}

const bearer = async (sub: string, org: string) => ({ authorization: `Bearer ${await token(sub, org)}` })

describe('authenticating a socket', () => {
  test('?token= on the upgrade: the socket can subscribe right away', async () => {
    const socket = await open(`?token=${await token('u1', 'acme')}`)
    // No waiting for anything: subscribe as the very first message.
    socket.send({ type: 'subscribe', channelId: 'agent:a' })
    const subscribed = await socket.next((f) => f.type === 'subscribed' || f.type === 'error')
    expect(subscribed).toEqual({ type: 'subscribed', channelId: 'agent:a', epoch: expect.any(String), lastSeq: 0 })
    const event = makeEvent({ orgId: 'acme', userId: 'u1', channels: ['agent:a'] })
    expect((await ingest(t.url, event, await bearer('u1', 'acme'))).body).toEqual({ stored: 1, duplicates: 0 })
    const [frame] = await socket.events('agent:a', 1)
    expect(frame).toEqual({ ...event, seq: 1, channelId: 'agent:a', channels: undefined })
  })

  test('?token= on the upgrade: authenticated is sent, and the auth timeout does not apply', async () => {
    const socket = await open(`?token=${await token('u1', 'acme')}`)
    expect(await socket.next((f) => f.type === 'authenticated')).toEqual({ type: 'authenticated', userId: 'u1', orgId: 'acme' })
    await Bun.sleep(AUTH_TIMEOUT_MS + 150) // only to prove the socket is NOT closed by the timer
    expect(socket.closed).toBeNull()
    await roundTrip(socket)
    expect((await subscribe(socket, 'org:acme')).type).toBe('subscribed')
  })

  test('first message auth → authenticated {userId, orgId}, then subscribe works', async () => {
    const socket = await open()
    socket.send({ type: 'auth', token: await token('user-7', 'org.example') })
    expect(await socket.next()).toEqual({ type: 'authenticated', userId: 'user-7', orgId: 'org.example' })
    expect(await subscribe(socket, 'org:org.example')).toEqual({ type: 'subscribed', channelId: 'org:org.example', epoch: expect.any(String), lastSeq: 0 })
    const stats = await socket.request({ type: 'request', id: 's', action: 'stats' }, 'response')
    expect(stats.success).toBe(true)
    expect(stats.data.subscriptions).toEqual(['org:org.example'])
    // Authenticated in time: the timer is cleared.
    await Bun.sleep(AUTH_TIMEOUT_MS + 150) // only to prove the socket is NOT closed
    expect(socket.closed).toBeNull()
    await roundTrip(socket)
  })

  test('auth followed at once by subscribe (without waiting for authenticated) works', async () => {
    const socket = await open()
    socket.send({ type: 'auth', token: await token('u1', 'acme') })
    socket.send({ type: 'subscribe', channelId: 'org:acme' })
    socket.send({ type: 'request', id: 'r', action: 'stats' })
    expect(await socket.next()).toEqual({ type: 'authenticated', userId: 'u1', orgId: 'acme' })
    expect(await socket.next()).toEqual({ type: 'subscribed', channelId: 'org:acme', epoch: expect.any(String), lastSeq: 0 })
    const stats = await socket.next()
    expect([stats.type, stats.requestId, stats.success]).toEqual(['response', 'r', true])
    expect(stats.data.subscriptions).toEqual(['org:acme'])
  })

  test('before auth: subscribe, unsubscribe and request get not_authenticated, ping works', async () => {
    const socket = await open()
    for (const message of [
      { type: 'subscribe', channelId: 'agent:a' },
      { type: 'subscribe', channelId: 'agent:a', since: 0 },
      { type: 'unsubscribe', channelId: 'agent:a' },
      { type: 'request', id: 'r1', action: 'stats' },
      { type: 'request', id: 'r2', action: 'history', payload: { channelId: 'agent:a' } },
    ]) {
      socket.send(message)
      const error = await socket.next()
      expect(error).toEqual({ type: 'error', code: 'not_authenticated', message: expect.any(String) })
      await roundTrip(socket)
    }
    // Then authenticating still works, and the socket is served.
    socket.send({ type: 'auth', token: await token('u1', 'acme') })
    expect(await socket.next()).toEqual({ type: 'authenticated', userId: 'u1', orgId: 'acme' })
    expect((await subscribe(socket, 'agent:a')).type).toBe('subscribed')
    expect((await getJson(`${t.url}/health`)).body.channels).toBe(1)
  })

  test('an expired token closes 4401, on the upgrade and as a message', async () => {
    const expired = await token('u1', 'acme', { exp: Math.floor(Date.now() / 1000) - 60 })
    const viaQuery = await open(`?token=${expired}`)
    expect((await viaQuery.waitClosed()).code).toBe(4401)
    expect(viaQuery.frames).toEqual([])

    const viaMessage = await open()
    viaMessage.send({ type: 'auth', token: expired })
    expect((await viaMessage.waitClosed()).code).toBe(4401)
    expect(viaMessage.frames).toEqual([])
  })

  test('a token signed with another secret closes 4401, on the upgrade and as a message', async () => {
    const forged = await token('u1', 'acme', { secret: 'not-the-server-secret-but-long-enough-0000' })
    const viaQuery = await open(`?token=${forged}`)
    expect((await viaQuery.waitClosed()).code).toBe(4401)

    const viaMessage = await open()
    viaMessage.send({ type: 'auth', token: forged })
    expect((await viaMessage.waitClosed()).code).toBe(4401)
    expect(viaMessage.frames).toEqual([])
  })

  test('garbage, a token without org, and a tampered payload close 4401', async () => {
    const good = await token('u1', 'acme')
    const [header, , signature] = good.split('.')
    const otherPayload = Buffer.from(JSON.stringify({ sub: 'u1', org: 'globex', exp: Math.floor(Date.now() / 1000) + 3600 })).toString('base64url')
    for (const bad of ['not-a-jwt', await token('u1', 'acme', { org: null }), `${header}.${otherPayload}.${signature}`]) {
      const socket = await open()
      socket.send({ type: 'auth', token: bad })
      expect((await socket.waitClosed()).code).toBe(4401)
      expect(socket.frames).toEqual([])
    }
  })

  test('no auth within authTimeoutMs closes 4408', async () => {
    const started = Date.now()
    const socket = await open()
    // Pings are served while waiting, but do not count as authentication.
    await roundTrip(socket)
    const closed = await socket.waitClosed(AUTH_TIMEOUT_MS + 3000)
    expect(closed.code).toBe(4408)
    expect(Date.now() - started).toBeGreaterThanOrEqual(AUTH_TIMEOUT_MS - 20)
    await waitForConnections(0)
  })
})

async function waitForConnections(n: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if ((await getJson(`${t.url}/health`)).body.connections === n) return
    await Bun.sleep(10)
  }
  throw new Error(`health never reported ${n} connections`)
}

describe('organisations', () => {
  test('two organisations with the same channel names: zero cross-delivery', async () => {
    const channels = ['agent:shared', 'task:t1', 'project:p']
    const a = await signedIn('alice', 'acme')
    const a2 = await signedIn('anna', 'acme')
    const b = await signedIn('bob', 'globex')
    for (const socket of [a, a2, b]) for (const channel of channels) await subscribe(socket, channel)
    await subscribe(a, 'org:acme')
    await subscribe(b, 'org:globex')

    const acme = await bearer('alice', 'acme')
    const globex = await bearer('bob', 'globex')
    // Each organisation posts on every shared channel (explicit and derived), then a sentinel.
    const acmeEvents = [
      makeEvent({ orgId: 'acme', userId: 'alice', channels }),
      makeEvent({ orgId: 'acme', userId: 'alice', type: 'agent.spawned', payload: { agentId: 'x', agentName: 'shared', taskId: 't1' } }),
    ]
    const globexEvents = [
      makeEvent({ orgId: 'globex', userId: 'bob', channels }),
      makeEvent({ orgId: 'globex', userId: 'bob', type: 'task.created', payload: { taskId: 't1', title: 'x', projectId: 'p' } }),
    ]
    expect((await ingest(t.url, { events: acmeEvents }, acme)).body).toEqual({ stored: 2, duplicates: 0 })
    expect((await ingest(t.url, { events: globexEvents }, globex)).body).toEqual({ stored: 2, duplicates: 0 })
    // In-process publish names its organisation; it is isolated the same way.
    expect(await t.server.publish({ type: 'test.published', orgId: 'globex', userId: 'bob', payload: {}, channels: ['agent:shared'] })).toEqual({
      stored: 1,
      duplicates: 0,
    })
    const acmeSentinel = makeEvent({ orgId: 'acme', userId: 'alice', channels: ['agent:shared'] })
    const globexSentinel = makeEvent({ orgId: 'globex', userId: 'bob', channels: ['agent:shared'] })
    await ingest(t.url, acmeSentinel, acme)
    await ingest(t.url, globexSentinel, globex)

    const until = async (socket: TestSocket, sentinelId: string) => {
      const frames: any[] = []
      for (let i = 0; i < 100; i++) {
        const frame = await socket.next((f) => typeof f.seq === 'number')
        frames.push(frame)
        if (frame.id === sentinelId) {
          await roundTrip(socket)
          return [...frames, ...socket.frames.filter((f) => typeof f.seq === 'number')]
        }
      }
      throw new Error('sentinel never arrived')
    }
    const ofA = await until(a, acmeSentinel.id)
    const ofA2 = await until(a2, acmeSentinel.id)
    const ofB = await until(b, globexSentinel.id)

    const ids = (list: Array<{ id: string }>) => new Set(list.map((e) => e.id))
    expect(ofA.every((f) => f.orgId === 'acme')).toBe(true)
    expect(ofA2.every((f) => f.orgId === 'acme')).toBe(true)
    expect(ofB.every((f) => f.orgId === 'globex')).toBe(true)
    expect(ids(ofA)).toEqual(ids([...acmeEvents, acmeSentinel]))
    expect(ids(ofB).size).toBe(4) // two posted, one published, the sentinel
    for (const e of [...globexEvents, globexSentinel]) expect(ids(ofB).has(e.id)).toBe(true)
    // Exact counts, one frame per subscribed channel: acme[0] names 3 channels (no org channel),
    // acme[1] derives org, agent and task, the sentinel is on one.
    expect(ofA.length).toBe(3 + 3 + 1)
    expect(ofA2.length).toBe(3 + 2 + 1)
    // globex[0] 3, globex[1] derives org, task and project, the published one 1, the sentinel 1.
    expect(ofB.length).toBe(3 + 3 + 1 + 1)
  })

  test("another organisation's org channel and history are refused", async () => {
    const b = await signedIn('bob', 'globex')
    b.send({ type: 'subscribe', channelId: 'org:acme' })
    expect(await b.next()).toEqual({ type: 'error', code: 'forbidden', message: expect.any(String), channelId: 'org:acme' })
    await roundTrip(b)

    await ingest(t.url, makeEvent({ orgId: 'acme', userId: 'alice', channels: ['agent:shared'] }), await bearer('alice', 'acme'))
    const history = await b.request({ type: 'request', id: 'h', action: 'history', payload: { channelId: 'agent:shared' } }, 'response')
    expect(history.success).toBe(true)
    expect(history.data.events).toEqual([])
    const forbidden = await b.request({ type: 'request', id: 'h2', action: 'history', payload: { channelId: 'org:acme' } }, 'response')
    expect(forbidden.success).toBe(false)
    expect(b.closed).toBeNull()
  })

  test('a second auth message with another principal is refused; the first stays', async () => {
    const socket = await signedIn('alice', 'acme')
    socket.send({ type: 'auth', token: await token('bob', 'globex') })
    expect(await socket.next()).toEqual({ type: 'error', code: 'forbidden', message: expect.any(String) })
    const stats = await socket.request({ type: 'request', id: 's', action: 'stats' }, 'response')
    expect(stats.success).toBe(true)
    expect(await subscribe(socket, 'org:acme')).toEqual({ type: 'subscribed', channelId: 'org:acme', epoch: expect.any(String), lastSeq: 0 })
  })
})

describe('HTTP in jwt mode', () => {
  test('POST /ingest without a Bearer token → 401 JSON error, nothing stored', async () => {
    const event = makeEvent({ orgId: 'acme', userId: 'alice' })
    const none = await ingest(t.url, event)
    expect(none.status).toBe(401)
    expect(none.body).toEqual({ error: { code: 'unauthorized', message: expect.any(String) } })
    expect(none.headers.get('content-type')).toContain('application/json')

    for (const authorization of ['Bearer not-a-token', `Basic ${btoa('a:b')}`, 'Bearer ', await token('alice', 'acme', { exp: 1 })]) {
      const bad = await ingest(t.url, event, { authorization })
      expect([authorization, bad.status, bad.body.error?.code]).toEqual([authorization, 401, 'unauthorized'])
    }
    const since = await getJson(`${t.url}/api/events/since?since=0`)
    expect(since.status).toBe(401)
    expect(since.body.error.code).toBe('unauthorized')
    const health = await getJson(`${t.url}/health`)
    expect(health.status).toBe(200)
    expect(health.body.eventsStored).toBe(0)
  })

  test("a token of org A posting an event of org B → 403, nothing stored", async () => {
    const acme = await bearer('alice', 'acme')
    const watcher = await signedIn('bob', 'globex')
    await subscribe(watcher, 'org:globex')

    const single = await ingest(t.url, makeEvent({ orgId: 'globex', userId: 'bob' }), acme)
    expect(single.status).toBe(403)
    expect(single.body).toEqual({ error: { code: 'forbidden', message: expect.stringContaining('orgId') } })

    // One foreign event refuses the whole batch.
    const batch = await ingest(t.url, { events: [makeEvent({ orgId: 'acme', userId: 'alice' }), makeEvent({ orgId: 'globex', userId: 'bob' })] }, acme)
    expect(batch.status).toBe(403)
    expect(batch.body.error.code).toBe('forbidden')
    expect(batch.body.error.message).toContain('events[1]')

    // Naming another organisation's org channel explicitly is refused too.
    const channel = await ingest(t.url, makeEvent({ orgId: 'acme', userId: 'alice', channels: ['org:globex'] }), acme)
    expect(channel.status).toBe(403)

    expect((await getJson(`${t.url}/health`)).body.eventsStored).toBe(0)

    // Its own organisation is accepted, and globex saw none of it.
    const ok = await ingest(t.url, makeEvent({ orgId: 'acme', userId: 'alice' }), acme)
    expect(ok.status).toBe(200)
    expect(ok.body).toEqual({ stored: 1, duplicates: 0 })
    const sentinel = makeEvent({ orgId: 'globex', userId: 'bob' })
    await ingest(t.url, sentinel, await bearer('bob', 'globex'))
    const [frame] = await watcher.events('org:globex', 1)
    expect(frame.id).toBe(sentinel.id)
    await roundTrip(watcher)
    expect(watcher.frames).toEqual([])
  })
})
