import { afterEach, describe, expect, test } from 'bun:test'
import type { RealtimeServerOptions } from '../../src/server'
import { getJson, ingest, makeEvent, startServer, waitFor, type TestServer } from '../helpers/server'
import { TestSocket } from '../helpers/ws'
import { bearer, jwt, SECRET } from './support'

/**
 * Per-socket and per-user limits: the single-session policy (4002), connections in all and per
 * user (4503), and subscriptions per socket (too_many_subscriptions error frame).
 */

let t: TestServer | undefined
const sockets: TestSocket[] = []

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  await t?.close()
  t = undefined
})

async function start(options: RealtimeServerOptions = {}): Promise<TestServer> {
  t = await startServer(options)
  return t
}

const JWT_MODE: RealtimeServerOptions = { auth: { mode: 'jwt', secret: SECRET } }

async function open(server: TestServer, query = ''): Promise<TestSocket> {
  const socket = await TestSocket.open(`${server.wsUrl}${query}`)
  sockets.push(socket)
  return socket
}

/** A socket of `sub`@`org` authenticated with an auth message. */
async function signedIn(server: TestServer, sub: string, org = 'acme'): Promise<TestSocket> {
  const socket = await open(server)
  socket.send({ type: 'auth', token: await jwt(sub, org) })
  expect(await socket.next()).toEqual({ type: 'authenticated', userId: sub, orgId: org })
  return socket
}

/** The connection is open and serving: a ping gets its pong. */
async function expectOpen(socket: TestSocket): Promise<void> {
  expect(await socket.request({ type: 'ping' }, 'pong')).toEqual({ type: 'pong' })
  expect(socket.closed).toBeNull()
}

async function connections(server: TestServer): Promise<number> {
  const { status, body } = await getJson(`${server.url}/health`)
  expect(status).toBe(200)
  return body.connections
}

async function subscribe(socket: TestSocket, channelId: string): Promise<any> {
  socket.send({ type: 'subscribe', channelId })
  return socket.next((f) => (f.type === 'subscribed' || f.type === 'error') && f.channelId === channelId)
}

describe('session policy', () => {
  test("single: a user's second socket closes the first with 4002; another user's socket stays", async () => {
    const server = await start({ ...JWT_MODE, sessionPolicy: 'single' })
    const first = await signedIn(server, 'u1')
    const bystander = await signedIn(server, 'u2')
    expect(await connections(server)).toBe(2)

    const second = await signedIn(server, 'u1')
    expect(await first.waitClosed()).toEqual({ code: 4002, reason: 'a newer session of this user started' })
    await expectOpen(second)
    await expectOpen(bystander)
    await waitFor(async () => (await connections(server)) === 2, 2000, 'the replaced socket to be gone')

    // The newest session gets the user's events; the same holds for a ?token= upgrade.
    expect((await subscribe(second, 'org:acme')).type).toBe('subscribed')
    const third = await open(server, `?token=${await jwt('u1', 'acme')}`)
    expect(await third.next()).toEqual({ type: 'authenticated', userId: 'u1', orgId: 'acme' })
    expect((await second.waitClosed()).code).toBe(4002)
    await expectOpen(third)
    await expectOpen(bystander)
    // A user of another organisation with the same user id is another user.
    const namesake = await signedIn(server, 'u1', 'globex')
    await expectOpen(namesake)
    await expectOpen(third)
  })

  test('multiple (the default): both sockets of a user stay and both get events', async () => {
    const server = await start(JWT_MODE)
    const first = await signedIn(server, 'u1')
    const second = await signedIn(server, 'u1')
    for (const socket of [first, second]) expect((await subscribe(socket, 'org:acme')).type).toBe('subscribed')
    const event = makeEvent({ orgId: 'acme', userId: 'u1' })
    expect((await ingest(server.url, event, bearer(await jwt('u1', 'acme')))).status).toBe(200)
    for (const socket of [first, second]) {
      const [frame] = await socket.events('org:acme', 1)
      expect(frame.id).toBe(event.id)
      await expectOpen(socket)
    }
    expect(await connections(server)).toBe(2)
  })
})

describe('connection limits', () => {
  test('maxConnections 2: the 3rd socket is closed with 4503 and the count returns to 2; a freed slot can be used', async () => {
    const server = await start({ maxConnections: 2 })
    const a = await open(server)
    const b = await open(server)
    await expectOpen(a)
    await expectOpen(b)
    expect(await connections(server)).toBe(2)

    const c = await open(server)
    expect(await c.waitClosed()).toEqual({ code: 4503, reason: 'connection limit reached' })
    expect(c.frames).toEqual([])
    await waitFor(async () => (await connections(server)) === 2, 2000, 'connections back to 2')
    await expectOpen(a)
    await expectOpen(b)

    a.close()
    await waitFor(async () => (await connections(server)) === 1, 2000, 'a to be gone')
    const d = await open(server)
    await expectOpen(d)
    expect(await connections(server)).toBe(2)
  })

  test('maxConnectionsPerUser 2: the 3rd socket of one user gets 4503; the other user can still connect', async () => {
    const server = await start({ ...JWT_MODE, maxConnectionsPerUser: 2 })
    const a1 = await signedIn(server, 'a')
    const a2 = await signedIn(server, 'a')

    // By auth message…
    const a3 = await open(server)
    a3.send({ type: 'auth', token: await jwt('a', 'acme') })
    expect(await a3.waitClosed()).toEqual({ code: 4503, reason: 'connection limit for this user reached' })
    expect(a3.frames).toEqual([]) // not told `authenticated` first
    // …and by ?token= on the upgrade.
    const a4 = await open(server, `?token=${await jwt('a', 'acme')}`)
    expect((await a4.waitClosed()).code).toBe(4503)

    const b1 = await signedIn(server, 'b')
    const b2 = await signedIn(server, 'b')
    for (const socket of [a1, a2, b1, b2]) await expectOpen(socket)
    await waitFor(async () => (await connections(server)) === 4, 2000, 'connections to be 4')

    // A closed socket frees its user's slot.
    a1.close()
    await waitFor(async () => (await connections(server)) === 3, 2000, 'a1 to be gone')
    const a5 = await signedIn(server, 'a')
    await expectOpen(a5)
    await expectOpen(a2)
  })
})

describe('subscriptions per socket', () => {
  test('maxSubscriptions 3: the 4th distinct channel is refused; re-subscribing works; unsubscribe frees a slot', async () => {
    const server = await start({ maxSubscriptions: 3 })
    const socket = await open(server)
    for (const channel of ['agent:a', 'agent:b', 'agent:c']) {
      expect(await subscribe(socket, channel)).toEqual({ type: 'subscribed', channelId: channel, epoch: expect.any(String), lastSeq: 0 })
    }

    const refused = await subscribe(socket, 'agent:d')
    expect(refused).toEqual({ type: 'error', code: 'too_many_subscriptions', message: 'at most 3 channels per connection', channelId: 'agent:d' })
    await expectOpen(socket)
    // Also with a replay cursor.
    socket.send({ type: 'subscribe', channelId: 'agent:e', since: 0 })
    expect(await socket.next((f) => f.channelId === 'agent:e')).toMatchObject({ type: 'error', code: 'too_many_subscriptions' })

    // The refused channel is not subscribed: its events do not arrive.
    const missed = makeEvent({ channels: ['agent:d'] })
    const seen = makeEvent({ channels: ['agent:a'] })
    expect((await ingest(server.url, { events: [missed, seen] })).status).toBe(200)
    const [frame] = await socket.events('agent:a', 1)
    expect(frame.id).toBe(seen.id)
    expect(socket.frames.filter((f) => f.channelId === 'agent:d')).toEqual([])

    // Re-subscribing a held channel is not a new one.
    expect((await subscribe(socket, 'agent:a')).type).toBe('subscribed')
    socket.send({ type: 'subscribe', channelId: 'agent:b', since: 0 })
    expect(await socket.next((f) => f.channelId === 'agent:b' && f.type === 'subscribed')).toMatchObject({ since: 0 })

    socket.send({ type: 'request', id: 'r1', action: 'stats' })
    const stats = await socket.next((f) => f.type === 'response')
    expect([...stats.data.subscriptions].sort()).toEqual(['agent:a', 'agent:b', 'agent:c'])

    // Unsubscribing frees a slot.
    expect(await socket.request({ type: 'unsubscribe', channelId: 'agent:b' }, 'unsubscribed')).toEqual({ type: 'unsubscribed', channelId: 'agent:b' })
    expect((await subscribe(socket, 'agent:d')).type).toBe('subscribed')
    expect((await subscribe(socket, 'agent:b')).code).toBe('too_many_subscriptions')
    const late = makeEvent({ channels: ['agent:d'] })
    expect((await ingest(server.url, late)).status).toBe(200)
    expect((await socket.events('agent:d', 1))[0].id).toBe(late.id)

    // The limit is per socket: another socket has its own three.
    const other = await open(server)
    for (const channel of ['agent:x', 'agent:y', 'agent:z']) expect((await subscribe(other, channel)).type).toBe('subscribed')
    expect((await subscribe(other, 'agent:w')).code).toBe('too_many_subscriptions')
    await expectOpen(socket)
    await expectOpen(other)
  })
})
