import { afterEach, beforeEach, describe, expect, test } from 'bun:test'
import { getJson, ingest, makeEvent, startServer, type TestServer, waitFor } from '../helpers/server'
import { TestSocket } from '../helpers/ws'

/**
 * The per-connection protocol in `none` mode: subscribe / unsubscribe / ping / request, and how
 * events reach subscribers (flat frames, one per subscribed channel, nothing from other channels).
 */

let t: TestServer
const sockets: TestSocket[] = []

beforeEach(async () => {
  t = await startServer()
})
afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  await t.close()
})

async function open(): Promise<TestSocket> {
  const socket = await TestSocket.open(t.wsUrl)
  sockets.push(socket)
  return socket
}

async function subscribe(socket: TestSocket, channelId: string, extra: Record<string, unknown> = {}) {
  socket.send({ type: 'subscribe', channelId, ...extra })
  return socket.next((f) => f.type === 'subscribed' && f.channelId === channelId)
}

/** A ping/pong round trip: everything the server sent before the pong is in `socket.frames`. */
async function roundTrip(socket: TestSocket): Promise<void> {
  expect(await socket.request({ type: 'ping' }, 'pong')).toEqual({ type: 'pong' })
}

const eventFrames = (socket: TestSocket) => socket.frames.filter((f) => typeof f.seq === 'number')

let requestCounter = 0
async function request(socket: TestSocket, action: string, payload?: Record<string, unknown>) {
  const id = `req-${++requestCounter}`
  socket.send({ type: 'request', id, action, ...(payload === undefined ? {} : { payload }) })
  return socket.next((f) => f.type === 'response' && f.requestId === id)
}

describe('subscribe / unsubscribe / ping', () => {
  test('subscribe answers subscribed with the channel and the database epoch', async () => {
    const socket = await open()
    const subscribed = await subscribe(socket, 'agent:my-coder-agent')
    expect(subscribed).toEqual({ type: 'subscribed', channelId: 'agent:my-coder-agent', epoch: expect.any(String), lastSeq: 0 })
    expect(subscribed.epoch.length).toBeGreaterThan(0)
    // The epoch is the database's: the same for every subscription and in stats.
    const again = await subscribe(socket, 'task:t1')
    expect(again.epoch).toBe(subscribed.epoch)
    const other = await open()
    expect((await subscribe(other, 'org:local')).epoch).toBe(subscribed.epoch)
    const stats = await request(socket, 'stats')
    expect(stats.data.epoch).toBe(subscribed.epoch)
  })

  test('ping answers exactly {"type":"pong"}', async () => {
    const socket = await open()
    socket.send({ type: 'ping' })
    expect(await socket.next()).toEqual({ type: 'pong' })
    socket.send({ type: 'ping' })
    socket.send({ type: 'ping' })
    expect(await socket.next()).toEqual({ type: 'pong' })
    expect(await socket.next()).toEqual({ type: 'pong' })
    expect(socket.frames).toEqual([])
  })

  test('unsubscribe answers unsubscribed, and nothing of that channel is delivered afterwards', async () => {
    const socket = await open()
    await subscribe(socket, 'agent:gone')
    await subscribe(socket, 'task:kept')

    const before = makeEvent({ channels: ['agent:gone'] })
    await ingest(t.url, before)
    const [delivered] = await socket.events('agent:gone', 1)
    expect(delivered.id).toBe(before.id)

    socket.send({ type: 'unsubscribe', channelId: 'agent:gone' })
    expect(await socket.next()).toEqual({ type: 'unsubscribed', channelId: 'agent:gone' })

    // One event on both channels, one only on the unsubscribed one, then a sentinel on the kept one.
    const both = makeEvent({ channels: ['agent:gone', 'task:kept'] })
    const goneOnly = makeEvent({ channels: ['agent:gone'] })
    const sentinel = makeEvent({ channels: ['task:kept'] })
    expect((await ingest(t.url, { events: [both, goneOnly, sentinel] })).body).toEqual({ stored: 3, duplicates: 0 })
    const kept = await socket.events('task:kept', 2)
    expect(kept.map((f) => f.id)).toEqual([both.id, sentinel.id])
    await roundTrip(socket)
    expect(socket.frames.filter((f) => f.channelId === 'agent:gone')).toEqual([])
    expect(socket.frames).toEqual([])

    const stats = await request(socket, 'stats')
    expect(stats.data.subscriptions).toEqual(['task:kept'])
  })

  test('closing a socket releases its subscriptions in /health', async () => {
    const a = await open()
    const b = await open()
    await subscribe(a, 'agent:one')
    await subscribe(a, 'agent:two')
    await subscribe(b, 'agent:two')
    expect((await getJson(`${t.url}/health`)).body).toMatchObject({ connections: 2, channels: 2 })
    a.close()
    await a.waitClosed()
    await waitFor(async () => (await getJson(`${t.url}/health`)).body.connections === 1, 2000, 'connections 1')
    expect((await getJson(`${t.url}/health`)).body.channels).toBe(1)
    // The remaining subscriber still gets its events.
    const event = makeEvent({ channels: ['agent:two', 'agent:one'] })
    await ingest(t.url, event)
    expect((await b.events('agent:two', 1))[0].id).toBe(event.id)
  })
})

describe('event frames', () => {
  test('an event arrives flat with exactly the fields of PROTOCOL.md, as a text frame', async () => {
    const socket = await open()
    const raw: unknown[] = []
    socket.ws.addEventListener('message', (message) => raw.push(message.data))
    await subscribe(socket, 'agent:my-coder-agent')
    const event = makeEvent({
      type: 'agent.completed',
      orgId: 'local',
      userId: 'local',
      timestamp: 1763800000000,
      payload: {
        agentId: 'a1',
        agentName: 'my-coder-agent',
        taskId: 't9',
        result: { ok: true, files: ['a.ts', 'b.ts'], nested: { depth: [1, { two: null }] } },
        duration: 1200,
        timestamp: 1763800000000,
        note: 'unicode ✓ "quoted" \\ back',
      },
    })
    expect((await ingest(t.url, event)).body).toEqual({ stored: 1, duplicates: 0 })
    const [frame] = await socket.events('agent:my-coder-agent', 1)
    expect(frame).toEqual({
      type: 'agent.completed',
      id: event.id,
      seq: 1,
      channelId: 'agent:my-coder-agent',
      orgId: 'local',
      userId: 'local',
      timestamp: 1763800000000,
      payload: event.payload,
    })
    expect(Object.keys(frame).sort()).toEqual(['channelId', 'id', 'orgId', 'payload', 'seq', 'timestamp', 'type', 'userId'])
    // subscribed + the event: both text frames holding one JSON object.
    expect(raw.length).toBe(2)
    for (const data of raw) {
      expect(typeof data).toBe('string')
      const parsed = JSON.parse(data as string)
      expect(typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)).toBe(true)
    }
  })

  test('an event on several channels reaches the subscribers of each channel with the right channelId', async () => {
    const agentOnly = await open()
    const taskOnly = await open()
    const both = await open()
    const unrelated = await open()
    await subscribe(agentOnly, 'agent:x')
    await subscribe(taskOnly, 'task:y')
    await subscribe(both, 'agent:x')
    await subscribe(both, 'task:y')
    await subscribe(unrelated, 'project:elsewhere')

    const event = makeEvent({ channels: ['agent:x', 'task:y', 'project:z'] })
    await ingest(t.url, event)
    const expected = (channelId: string) => ({ ...event, seq: 1, channelId, channels: undefined })

    const [a] = await agentOnly.events('agent:x', 1)
    expect(a).toEqual(expected('agent:x'))
    const [b] = await taskOnly.events('task:y', 1)
    expect(b).toEqual(expected('task:y'))
    const [c1] = await both.events('agent:x', 1)
    const [c2] = await both.events('task:y', 1)
    expect(c1).toEqual(expected('agent:x'))
    expect(c2).toEqual(expected('task:y'))
    expect('channels' in c1).toBe(false)

    // Exactly one frame per subscribed channel: nothing else queued after a round trip.
    for (const socket of [agentOnly, taskOnly, both]) {
      await roundTrip(socket)
      expect(socket.frames).toEqual([])
    }

    // The unrelated subscriber gets only its sentinel, never the earlier event.
    const sentinel = makeEvent({ channels: ['project:elsewhere'] })
    await ingest(t.url, sentinel)
    const [got] = await unrelated.events('project:elsewhere', 1)
    expect(got.id).toBe(sentinel.id)
    expect(got.seq).toBe(2)
    await roundTrip(unrelated)
    expect(unrelated.frames).toEqual([])
  })

  test('derived channels: org, agent and task subscribers each get the event once', async () => {
    const socket = await open()
    await subscribe(socket, 'org:local')
    await subscribe(socket, 'agent:bot-1')
    await subscribe(socket, 'task:t-7')
    await subscribe(socket, 'swarm:none')
    const event = makeEvent({ type: 'agent.spawned', payload: { agentId: 'a1', agentName: 'bot-1', taskId: 't-7' } })
    await ingest(t.url, event)
    const frames = [
      ...(await socket.events('org:local', 1)),
      ...(await socket.events('agent:bot-1', 1)),
      ...(await socket.events('task:t-7', 1)),
    ]
    expect(frames.map((f) => [f.channelId, f.id, f.seq])).toEqual([
      ['org:local', event.id, 1],
      ['agent:bot-1', event.id, 1],
      ['task:t-7', event.id, 1],
    ])
    await roundTrip(socket)
    expect(socket.frames).toEqual([])
  })

  test('a subscriber of one channel never receives events of another channel', async () => {
    const socket = await open()
    await subscribe(socket, 'agent:mine')
    const others = [
      makeEvent({ channels: ['agent:theirs'] }),
      makeEvent({ channels: ['agent:mine-too'] }),
      makeEvent({ channels: ['task:mine'] }),
      makeEvent({ type: 'agent.spawned', payload: { agentId: 'a', agentName: 'theirs', taskId: 't' } }),
    ]
    const mine = makeEvent({ channels: ['agent:mine'] })
    // The other channels' events are stored (and published) before the one this socket wants.
    await ingest(t.url, { events: others })
    await t.server.publish({ type: 'test.other', payload: {}, channels: ['agent:MINE'] })
    await ingest(t.url, mine)
    const [frame] = await socket.events('agent:mine', 1)
    expect(frame.id).toBe(mine.id)
    expect(frame.seq).toBe(6)
    await roundTrip(socket)
    expect(eventFrames(socket)).toEqual([])
    expect(socket.frames).toEqual([])
  })

  test('a duplicate id is delivered once', async () => {
    const socket = await open()
    await subscribe(socket, 'agent:dup')
    const event = makeEvent({ channels: ['agent:dup'] })
    expect((await ingest(t.url, event)).body).toEqual({ stored: 1, duplicates: 0 })
    expect((await ingest(t.url, event)).body).toEqual({ stored: 0, duplicates: 1 })
    const sentinel = makeEvent({ channels: ['agent:dup'] })
    await ingest(t.url, sentinel)
    const frames = await socket.events('agent:dup', 2)
    // (A refused duplicate may consume a seq value: seqs are increasing, not dense.)
    expect(frames.map((f) => f.id)).toEqual([event.id, sentinel.id])
    expect(frames[0].seq).toBe(1)
    expect(frames[1].seq).toBeGreaterThan(1)
    await roundTrip(socket)
    expect(socket.frames).toEqual([])
  })
})

describe('request', () => {
  /** Five events on task:h interleaved with three elsewhere: task:h has seqs 1, 3, 5, 6, 8. */
  async function seedHistory() {
    const h = [1, 2, 3, 4, 5].map((n) => makeEvent({ channels: ['task:h'], payload: { n } }))
    const o = [1, 2, 3].map((n) => makeEvent({ channels: ['task:other'], payload: { o: n } }))
    const batch = [h[0]!, o[0]!, h[1]!, o[1]!, h[2]!, h[3]!, o[2]!, h[4]!]
    expect((await ingest(t.url, { events: batch })).body).toEqual({ stored: 8, duplicates: 0 })
    return h
  }

  /** The fields of a history page that PROTOCOL.md defines (the project may add others). */
  const page = (data: any) => ({ events: data.events, nextSeq: data.nextSeq, hasMore: data.hasMore, epoch: data.epoch })

  test('history pages through a channel ascending with nextSeq and hasMore', async () => {
    const h = await seedHistory()
    const socket = await open()
    const epoch = (await subscribe(socket, 'agent:unrelated')).epoch

    const first = await request(socket, 'history', { channelId: 'task:h', since: 0, limit: 2 })
    expect([first.type, first.success]).toEqual(['response', true])
    expect(page(first.data)).toEqual({
      events: [
        { ...h[0]!, seq: 1, channelId: 'task:h', channels: ['task:h'] },
        { ...h[1]!, seq: 3, channelId: 'task:h', channels: ['task:h'] },
      ],
      nextSeq: 3,
      hasMore: true,
      epoch,
    })
    expect(first.data.truncated).toBeUndefined()

    const second = await request(socket, 'history', { channelId: 'task:h', since: 3, limit: 2 })
    expect(second.success).toBe(true)
    expect(second.data.events.map((e: any) => e.seq)).toEqual([5, 6])
    expect(second.data.events.map((e: any) => e.id)).toEqual([h[2]!.id, h[3]!.id])
    expect(second.data.nextSeq).toBe(6)
    expect(second.data.hasMore).toBe(true)

    const third = await request(socket, 'history', { channelId: 'task:h', since: 6, limit: 2 })
    expect(third.data.events.map((e: any) => e.seq)).toEqual([8])
    expect(third.data.nextSeq).toBe(8)
    expect(third.data.hasMore).toBe(false)

    // Exactly `limit` left: hasMore is false.
    const exact = await request(socket, 'history', { channelId: 'task:h', since: 3, limit: 3 })
    expect(exact.data.events.map((e: any) => e.seq)).toEqual([5, 6, 8])
    expect(exact.data.hasMore).toBe(false)

    const empty = await request(socket, 'history', { channelId: 'task:h', since: 8, limit: 2 })
    expect(page(empty.data)).toEqual({ events: [], nextSeq: 8, hasMore: false, epoch })

    // Defaults: since 0, limit 100.
    const all = await request(socket, 'history', { channelId: 'task:h' })
    expect(all.data.events.map((e: any) => e.seq)).toEqual([1, 3, 5, 6, 8])
    expect(all.data.nextSeq).toBe(8)
    expect(all.data.hasMore).toBe(false)

    // A history request does not subscribe, and sends no event frames.
    await roundTrip(socket)
    expect(socket.frames).toEqual([])
  })

  test('history with an invalid payload answers success:false naming the field', async () => {
    const socket = await open()
    const cases: Array<[Record<string, unknown> | undefined, string]> = [
      [undefined, 'payload.channelId'],
      [{}, 'payload.channelId'],
      [{ channelId: 'Bad Channel' }, 'payload.channelId'],
      [{ channelId: 42 }, 'payload.channelId'],
      [{ channelId: 'task:h', limit: 0 }, 'payload.limit'],
      [{ channelId: 'task:h', limit: 1001 }, 'payload.limit'],
      [{ channelId: 'task:h', limit: 2.5 }, 'payload.limit'],
      [{ channelId: 'task:h', since: -1 }, 'payload.since'],
      [{ channelId: 'task:h', since: '3' }, 'payload.since'],
    ]
    for (const [payload, field] of cases) {
      const response = await request(socket, 'history', payload)
      expect(response).toEqual({ type: 'response', requestId: response.requestId, success: false, error: expect.any(String) })
      expect(response.error).toStartWith(`${field}:`)
    }
    // Another organisation's channel is refused, not answered with an empty page.
    const forbidden = await request(socket, 'history', { channelId: 'org:someone-else' })
    expect(forbidden.success).toBe(false)
    expect(forbidden.error).toContain('org:someone-else')
    expect(socket.closed).toBeNull()
    await roundTrip(socket)
  })

  test('stats reports the server figures and this connection subscriptions', async () => {
    const socket = await open()
    const other = await open()
    const epoch = (await subscribe(socket, 'agent:a')).epoch
    await subscribe(socket, 'task:b')
    await subscribe(other, 'task:b')
    await ingest(t.url, { events: [makeEvent({ channels: ['agent:a'] }), makeEvent({ channels: ['task:b'] }), makeEvent()] })
    await socket.events('agent:a', 1)
    const stats = await request(socket, 'stats')
    expect(stats).toEqual({
      type: 'response',
      requestId: stats.requestId,
      success: true,
      data: {
        status: 'ok',
        connections: 2,
        channels: 2,
        eventsStored: 3,
        uptime: expect.any(Number),
        lastSeq: 3,
        epoch,
        subscriptions: ['agent:a', 'task:b'],
        entities: { 'agent:a': 0, 'task:b': 0 },
      },
    })
    const otherStats = await request(other, 'stats')
    expect(otherStats.data.subscriptions).toEqual(['task:b'])

    socket.send({ type: 'unsubscribe', channelId: 'agent:a' })
    await socket.next((f) => f.type === 'unsubscribed')
    const after = await request(socket, 'stats')
    expect(after.data.subscriptions).toEqual(['task:b'])
    expect(after.data.channels).toBe(1)
    expect((await getJson(`${t.url}/health`)).body.channels).toBe(1)
  })

  test('an unknown action answers success:false and the connection stays open', async () => {
    const socket = await open()
    socket.send({ type: 'request', id: 'r-unknown', action: 'explode', payload: { a: 1 } })
    const response = await socket.next()
    expect(response).toEqual({ type: 'response', requestId: 'r-unknown', success: false, error: expect.stringContaining('explode') })
    expect(socket.closed).toBeNull()
    await roundTrip(socket)
    // And requests still work afterwards.
    expect((await request(socket, 'stats')).success).toBe(true)
  })
})
