import { afterEach, describe, expect, test } from 'bun:test'
import type { Server } from 'bun'
import { createRealtimeClient, type ConnectionInfo, type KnownFrame, type RealtimeClient, type RealtimeClientOptions } from '../../src/client'
import type { RealtimeServerOptions } from '../../src/server'
import { startProxy, type Proxy } from '../helpers/proxy'
import { getJson, ingest, makeEvent, startServer, type TestServer, waitFor } from '../helpers/server'
import { jwt, SECRET } from './support'

/**
 * The typed client's Server-Sent Events transport (src/client/realtime-client.ts runSse): behind a
 * proxy that refuses WebSocket upgrades the client runs on one event stream for all its channels,
 * delivering through the same handlers exactly once in order, and returns to the WebSocket once
 * upgrades work, with no gap and no duplicate; when the stream route fails too it ends on polling;
 * in jwt mode the token travels as a header, never in the URL.
 */

const FAST = {
  heartbeat: false,
  reconnect: { baseMs: 20, maxMs: 200, jitterMs: 10 },
  ping: { intervalMs: 1000, timeoutMs: 1000 },
  polling: { afterMs: 100, minMs: 50, maxMs: 200 },
} satisfies Partial<RealtimeClientOptions>

const clients: RealtimeClient[] = []
const servers: TestServer[] = []
const proxies: Proxy[] = []
const hops: Array<Server<undefined>> = []

afterEach(async () => {
  for (const client of clients.splice(0)) client.close()
  for (const proxy of proxies.splice(0)) await proxy.stop()
  for (const hop of hops.splice(0)) await hop.stop(true)
  for (const server of servers.splice(0)) await server.close()
})

async function start(options: RealtimeServerOptions = {}): Promise<TestServer> {
  const server = await startServer(options)
  servers.push(server)
  return server
}

/** The helper proxy in front of `upstream`, refusing upgrades. */
function blocking(upstream: string): Proxy {
  const proxy = startProxy(upstream)
  proxy.refuseUpgrades = true
  proxies.push(proxy)
  return proxy
}

interface Seen {
  path: string
  search: string
  authorization: string | null
  accept: string | null
}

/**
 * An HTTP-only hop between the proxy and the server: records every request that reached it, answers
 * the stream path with `streamStatus` when set (a route that fails), and forwards the rest, streamed.
 */
function hop(upstream: string, streamStatus?: number): { url: string; seen: Seen[] } {
  const seen: Seen[] = []
  const server = Bun.serve({
    hostname: '127.0.0.1',
    port: 0,
    async fetch(request) {
      const url = new URL(request.url)
      seen.push({ path: url.pathname, search: url.search, authorization: request.headers.get('authorization'), accept: request.headers.get('accept') })
      if (url.pathname === '/api/events/stream' && streamStatus) return new Response('stream route down', { status: streamStatus })
      const headers = new Headers(request.headers)
      headers.delete('host')
      const body = request.method === 'GET' || request.method === 'HEAD' ? undefined : await request.arrayBuffer()
      const answer = await fetch(`${upstream}${url.pathname}${url.search}`, { method: request.method, headers, body })
      return new Response(answer.body, { status: answer.status, headers: answer.headers })
    },
  })
  hops.push(server)
  return { url: `http://127.0.0.1:${server.port}`, seen }
}

function client(url: string, options: Partial<RealtimeClientOptions> = {}): RealtimeClient {
  const created = createRealtimeClient({ url, ...FAST, ...options })
  clients.push(created)
  return created
}

type Ev = ReturnType<typeof makeEvent> & { channels: string[] }

function events(channels: string[], count: number, extra: Record<string, unknown> = {}): Ev[] {
  return Array.from({ length: count }, () => ({
    ...makeEvent({ type: 'task.status_changed', payload: { taskId: 't', oldStatus: 'a', newStatus: 'b' }, ...extra }),
    channels,
  }))
}

async function store(url: string, batch: Ev[], headers: Record<string, string> = {}): Promise<void> {
  for (const event of batch) expect((await ingest(url, event, headers)).status).toBe(200)
}

function recorder(subject: RealtimeClient, channelId: string, options: { since?: number } = {}) {
  const got: Array<{ id: string; seq: number; channelId: string }> = []
  subject.subscribe(
    channelId,
    (event: KnownFrame) => {
      if (event.type === 'task.status_changed') got.push({ id: event.id, seq: event.seq, channelId: event.channelId })
    },
    options,
  )
  return got
}

/** Every transport the client reported, in order, without repeats in a row. */
function transports(subject: RealtimeClient): Array<ConnectionInfo['transport']> {
  const seen: Array<ConnectionInfo['transport']> = [subject.state.transport]
  subject.onState((state) => {
    if (seen.at(-1) !== state.transport) seen.push(state.transport)
  })
  return seen
}

const count = (paths: string[], path: string) => paths.filter((p) => p === path).length

describe('SSE fallback', () => {
  test('upgrades refused: events arrive over SSE exactly once in order through the same handlers; then back to the WebSocket with no gap and no duplicate', async () => {
    const server = await start({ maxStreamsPerCredential: 3 })
    const proxy = blocking(server.url)
    const stored = events(['task:p'], 3)
    await store(server.url, stored)
    const subject = client(proxy.url)
    const seen = transports(subject)
    const replayed = recorder(subject, 'task:p', { since: 0 })
    const liveOnly = recorder(subject, 'task:live')
    await waitFor(() => subject.state.status === 'open' && subject.state.transport === 'sse', 3000, 'the SSE transport')
    await waitFor(() => replayed.length === 3, 3000, 'the stored events, over SSE')
    expect(proxy.bridged).toBe(0)

    // Published while on SSE, interleaved across the two channels.
    const onSse: Ev[] = []
    for (let i = 0; i < 20; i++) onSse.push(...events([i % 2 ? 'task:p' : 'task:live'], 1))
    await store(server.url, onSse)
    await waitFor(() => replayed.length === 13 && liveOnly.length === 10, 3000, 'the events, over SSE')
    expect(subject.state.transport).toBe('sse')
    // One stream carried both channels; no polling happened (only the live-only channel's cursor page).
    expect(count(proxy.requests, '/api/events/stream')).toBe(1)
    expect(count(proxy.requests, '/api/events/since')).toBe(1)

    // Upgrades work again while events keep coming.
    const during = events(['task:p'], 40)
    proxy.refuseUpgrades = false
    for (const [i, event] of during.entries()) {
      expect((await ingest(server.url, event)).status).toBe(200)
      if (i === 20) await waitFor(() => subject.state.transport === 'websocket', 3000, 'back on the WebSocket')
    }
    const after = [...events(['task:p'], 3), ...events(['task:live'], 1)]
    await store(server.url, after)
    await waitFor(() => replayed.length >= 56 && liveOnly.length >= 11, 3000, 'every event')

    const all = [...stored, ...onSse, ...during, ...after]
    expect(replayed.map((e) => e.id)).toEqual(all.filter((e) => e.channels[0] === 'task:p').map((e) => e.id))
    expect(liveOnly.map((e) => e.id)).toEqual(all.filter((e) => e.channels[0] === 'task:live').map((e) => e.id))
    expect(replayed.every((e) => e.channelId === 'task:p') && liveOnly.every((e) => e.channelId === 'task:live')).toBe(true)
    expect(subject.state).toMatchObject({ status: 'open', transport: 'websocket' })
    expect(seen).toEqual([null, 'sse', 'websocket'])
    expect(proxy.bridged).toBe(1)
    // The client's stream is closed: the credential's every stream place is free again.
    await waitFor(
      async () => {
        const opened = await Promise.all([1, 2, 3].map(() => fetch(`${server.url}/api/events/stream?channel=task:p`)))
        for (const response of opened) await response.body?.cancel()
        return opened.every((response) => response.status === 200)
      },
      3000,
      'three free stream places',
    )
  })

  test('subscribing while on SSE reopens the stream with the new channel set, without gap or duplicate on the others', async () => {
    const server = await start()
    const proxy = blocking(server.url)
    const subject = client(proxy.url)
    const first = recorder(subject, 'task:one', { since: 0 })
    await waitFor(() => subject.state.transport === 'sse', 3000, 'the SSE transport')
    const before = events(['task:one'], 5)
    await store(server.url, before)
    await waitFor(() => first.length === 5, 3000, 'the first channel')
    // A second channel while events keep coming on the first.
    const more = events(['task:one'], 10)
    const second = recorder(subject, 'task:two', { since: 0 })
    const twos = events(['task:two'], 4)
    for (const [i, event] of more.entries()) {
      await store(server.url, [event])
      if (i < twos.length) await store(server.url, [twos[i]!])
    }
    await waitFor(() => first.length === 15 && second.length === 4, 3000, 'both channels')
    expect(first.map((e) => e.id)).toEqual([...before, ...more].map((e) => e.id))
    expect(second.map((e) => e.id)).toEqual(twos.map((e) => e.id))
    expect(subject.state.transport).toBe('sse')
    expect(count(proxy.requests, '/api/events/stream')).toBe(2)
  })

  // Over the WebSocket an event on two subscribed channels reaches both channels' handlers (one frame
  // per channel). A stream sends such an event once, through its first followed channel.
  for (const transport of ['websocket', 'sse'] as const) {
    test(`an event on two subscribed channels reaches the handlers of both (${transport})`, async () => {
      const server = await start()
      const proxy = blocking(server.url)
      proxy.refuseUpgrades = transport === 'sse'
      const subject = client(proxy.url)
      const a = recorder(subject, 'task:m1', { since: 0 })
      const b = recorder(subject, 'task:m2', { since: 0 })
      await waitFor(() => subject.state.status === 'open' && subject.state.transport === transport, 3000, transport)
      const both = events(['task:m1', 'task:m2'], 2)
      const marker = [...events(['task:m1'], 1), ...events(['task:m2'], 1)]
      await store(server.url, [...both, ...marker])
      await waitFor(() => a.some((e) => e.id === marker[0]!.id) && b.some((e) => e.id === marker[1]!.id), 3000, 'the markers on both channels')
      expect(a.map((e) => e.id)).toEqual([both[0]!.id, both[1]!.id, marker[0]!.id])
      expect(b.map((e) => e.id)).toEqual([both[0]!.id, both[1]!.id, marker[1]!.id])
      expect(b.every((e) => e.channelId === 'task:m2')).toBe(true)
    })
  }

  // fallback.test.ts checks this for the WebSocket and polling: a since beyond the newest seq cannot
  // come from this database, so the server replays from its start and says truncated.
  test('a cursor the server cannot honour is reported through onTruncated and replayed from the start (sse)', async () => {
    const server = await start()
    const proxy = blocking(server.url)
    const batch = events(['task:c'], 3)
    await store(server.url, batch)
    const truncated: string[] = []
    const subject = client(proxy.url, { onTruncated: (channelId) => truncated.push(channelId) })
    const got = recorder(subject, 'task:c', { since: 1000 })
    await waitFor(() => subject.state.transport === 'sse' && truncated.length === 1, 3000, 'the truncated stream')
    const more = events(['task:c'], 1)
    await store(server.url, more)
    await waitFor(() => got.some((e) => e.id === more[0]!.id), 1500, 'a later event')
    expect(got.map((e) => e.id)).toEqual([...batch, ...more].map((e) => e.id))
    expect(truncated).toEqual(['task:c'])
  })

  // The stream ends (the server restarts) while upgrades are still refused: the client must open one
  // new stream, not two, and close() must leave no stream open on the server.
  test('after the stream ends the client opens exactly one new stream, and close() leaves none open', async () => {
    const first = await start()
    const proxy = blocking(first.url)
    // Upgrade attempts every 5–25 ms, so that one is refused between the stream's end and its retry.
    const subject = client(proxy.url, { reconnect: { baseMs: 5, maxMs: 20, jitterMs: 5 } })
    const got = recorder(subject, 'task:r', { since: 0 })
    await waitFor(() => subject.state.transport === 'sse', 3000, 'the SSE transport')
    const before = events(['task:r'], 2)
    await store(first.url, before)
    await waitFor(() => got.length === 2, 3000, 'events over the first stream')
    await first.server.stop()
    const second = await startServer({ dbPath: first.dbPath, port: first.server.port })
    servers.unshift(second) // stopped before the first one's files are removed
    expect(second.url).toBe(first.url)
    const after = events(['task:r'], 2)
    await store(second.url, after)
    await waitFor(() => got.length === 4, 5000, 'events over the new stream')
    expect(got.map((e) => e.id)).toEqual([...before, ...after].map((e) => e.id))
    expect(subject.state).toMatchObject({ status: 'open', transport: 'sse' })
    // Let the client run on: a few more refused upgrades, each of which may schedule a fallback.
    const attempts = proxy.upgradeAttempts
    await waitFor(() => proxy.upgradeAttempts >= attempts + 4, 3000, 'four more refused upgrades')
    expect(subject.state).toMatchObject({ status: 'open', transport: 'sse' })
    const streamRequests = count(proxy.requests, '/api/events/stream')
    subject.close()
    // No stream is left following the channel once the server saw the client's streams go.
    const channels = async () => (await getJson(`${second.url}/health`)).body.channels as number
    const following = await waitFor(async () => (await channels()) === 0, 1000, 'no stream left').then(
      () => 0,
      () => channels(),
    )
    expect({ streamRequests, following }).toEqual({ streamRequests: 2, following: 0 })
  })

  test('the stream route failing (502 at every attempt): the client ends on polling and delivers from there', async () => {
    const server = await start()
    const failing = hop(server.url, 502)
    const proxy = blocking(failing.url)
    const subject = client(proxy.url)
    const seen = transports(subject)
    const errors = new Set<string | null>()
    subject.onState((state) => errors.add(state.lastError))
    const got = recorder(subject, 'task:q', { since: 0 })
    await waitFor(() => subject.state.status === 'open' && subject.state.transport === 'polling', 10_000, 'polling')
    const batch = events(['task:q'], 5)
    await store(server.url, batch)
    await waitFor(() => got.length === 5, 10_000, 'the events, by polling')
    expect(got.map((e) => e.id)).toEqual(batch.map((e) => e.id))
    // Two stream attempts (both 502), then polling only.
    const streamAttempts = count(failing.seen.map((s) => s.path), '/api/events/stream')
    expect(streamAttempts).toBe(2)
    expect(seen).toEqual([null, 'polling'])
    expect(errors.has('event stream failed: the event stream answered 502')).toBe(true)
    const polls = count(failing.seen.map((s) => s.path), '/api/events/since')
    await waitFor(() => count(failing.seen.map((s) => s.path), '/api/events/since') > polls + 1, 10_000, 'more polls')
    expect(count(failing.seen.map((s) => s.path), '/api/events/stream')).toBe(2)
  })

  test('sse: false goes straight to polling; no stream is ever requested', async () => {
    const server = await start()
    const proxy = blocking(server.url)
    const subject = client(proxy.url, { sse: false })
    const got = recorder(subject, 'task:n', { since: 0 })
    await waitFor(() => subject.state.status === 'open' && subject.state.transport === 'polling', 3000, 'polling')
    const batch = events(['task:n'], 2)
    await store(server.url, batch)
    await waitFor(() => got.length === 2, 3000, 'the events')
    expect(count(proxy.requests, '/api/events/stream')).toBe(0)
  })

  test('jwt mode over SSE: the token goes as an Authorization header, never in the URL', async () => {
    const server = await start({ auth: { mode: 'jwt', secret: SECRET } })
    const token = await jwt('alice', 'acme')
    const recording = hop(server.url)
    const proxy = blocking(recording.url)
    const subject = client(proxy.url, { token: () => jwt('alice', 'acme') })
    const got = recorder(subject, 'org:acme', { since: 0 })
    await waitFor(() => subject.state.status === 'open' && subject.state.transport === 'sse', 3000, 'the SSE transport')
    const batch = events(['org:acme'], 3, { orgId: 'acme', userId: 'alice' })
    await store(server.url, batch, { authorization: `Bearer ${token}` })
    await waitFor(() => got.length === 3, 3000, 'the events over SSE')
    expect(got.map((e) => e.id)).toEqual(batch.map((e) => e.id))
    const streams = recording.seen.filter((s) => s.path === '/api/events/stream')
    expect(streams.length).toBe(1)
    expect(streams[0]!.authorization).toMatch(/^Bearer [\w-]+\.[\w-]+\.[\w-]+$/)
    expect(streams[0]!.accept).toBe('text/event-stream')
    expect(new URLSearchParams(streams[0]!.search).has('token')).toBe(false)
    expect(streams[0]!.search).not.toContain(streams[0]!.authorization!.slice(7))
  })
})
