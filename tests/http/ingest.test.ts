import { afterEach, beforeEach, describe, expect, test } from 'bun:test'
import { getJson, ingest, makeEvent, startServer, type TestServer } from '../helpers/server'
import { TestSocket } from '../helpers/ws'

let t: TestServer
const sockets: TestSocket[] = []

beforeEach(async () => {
  t = await startServer()
})
afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  await t.close()
})

async function openSocket(...channels: string[]): Promise<TestSocket> {
  const socket = await TestSocket.open(t.wsUrl)
  sockets.push(socket)
  for (const channelId of channels) {
    const subscribed = await socket.request({ type: 'subscribe', channelId }, 'subscribed')
    expect(subscribed.channelId).toBe(channelId)
  }
  return socket
}

async function eventsStored(): Promise<number> {
  const { status, body } = await getJson(`${t.url}/health`)
  expect(status).toBe(200)
  return body.eventsStored
}

async function history(query = ''): Promise<any> {
  const { status, body } = await getJson(`${t.url}/api/events/since${query}`)
  expect(status).toBe(200)
  return body
}

/**
 * Ingests a sentinel event on `channelId` (explicit channel) and returns every event frame the
 * socket got on that channel up to and including the sentinel. Frames on one socket arrive in order,
 * so anything delivered before the sentinel is in the list: a missing second delivery is proven.
 */
async function framesUntilSentinel(socket: TestSocket, channelId: string): Promise<any[]> {
  const sentinel = makeEvent({ type: 'test.sentinel', channels: [channelId] })
  expect((await ingest(t.url, sentinel)).body).toEqual({ stored: 1, duplicates: 0 })
  const frames: any[] = []
  for (let i = 0; i < 100; i++) {
    const frame = await socket.next((f) => typeof f.seq === 'number' && f.channelId === channelId)
    frames.push(frame)
    if (frame.id === sentinel.id) return frames
  }
  throw new Error('sentinel not seen within 100 frames')
}

const agentCompleted = (payload: Record<string, unknown> = {}) =>
  makeEvent({
    type: 'agent.completed',
    payload: { agentId: 'a1', agentName: 'my-coder-agent', taskId: 't9', result: 'ok', duration: 1200, ...payload },
  })

describe('POST /ingest', () => {
  test('a single event is stored and answered {stored:1,duplicates:0}', async () => {
    const event = agentCompleted()
    const response = await ingest(t.url, event)
    expect(response.status).toBe(200)
    expect(response.body).toEqual({ stored: 1, duplicates: 0 })
    expect(await eventsStored()).toBe(1)
    const page = await history()
    expect(page.events).toEqual([
      { ...event, seq: 1, channels: ['org:local', 'agent:my-coder-agent', 'task:t9'] },
    ])
  })

  test('a batch {events:[…]} is stored in order with ascending seqs', async () => {
    const batch = [makeEvent(), makeEvent(), makeEvent()]
    const response = await ingest(t.url, { events: batch })
    expect(response.status).toBe(200)
    expect(response.body).toEqual({ stored: 3, duplicates: 0 })
    expect(await eventsStored()).toBe(3)
    const page = await history()
    expect(page.events.map((e: any) => e.id)).toEqual(batch.map((e) => e.id))
    expect(page.events.map((e: any) => e.seq)).toEqual([1, 2, 3])
  })

  test('a batch of exactly 1000 events is accepted', async () => {
    const batch = Array.from({ length: 1000 }, () => makeEvent())
    const response = await ingest(t.url, { events: batch })
    expect(response.status).toBe(200)
    expect(response.body).toEqual({ stored: 1000, duplicates: 0 })
    expect(await eventsStored()).toBe(1000)
  })
})

describe('dedup by id', () => {
  test('the same id in two requests is stored once and delivered once', async () => {
    const socket = await openSocket('org:local')
    const event = makeEvent()
    expect((await ingest(t.url, event)).body).toEqual({ stored: 1, duplicates: 0 })
    expect((await ingest(t.url, event)).body).toEqual({ stored: 0, duplicates: 1 })
    // A resend with a different body but the same id is still the same event.
    expect((await ingest(t.url, { ...event, payload: { changed: true } })).body).toEqual({ stored: 0, duplicates: 1 })
    expect(await eventsStored()).toBe(1)
    const frames = await framesUntilSentinel(socket, 'org:local')
    expect(frames.map((f) => f.id)).toEqual([event.id, frames.at(-1)!.id])
    expect(frames[0]).toEqual({ ...event, seq: 1, channelId: 'org:local' })
    const page = await history()
    expect(page.events.filter((e: any) => e.id === event.id)).toHaveLength(1)
    expect(page.events[0].payload).toEqual(event.payload)
  })

  test('the same id twice in one batch is stored once and delivered once', async () => {
    const socket = await openSocket('org:local')
    const event = makeEvent()
    const other = makeEvent()
    const response = await ingest(t.url, { events: [event, other, { ...event }] })
    expect(response.status).toBe(200)
    expect(response.body).toEqual({ stored: 2, duplicates: 1 })
    expect(await eventsStored()).toBe(2)
    const frames = await framesUntilSentinel(socket, 'org:local')
    expect(frames.map((f) => f.id)).toEqual([event.id, other.id, frames.at(-1)!.id])
    // Seqs strictly increase (a duplicate may leave a gap: the contract allows gaps, not reuse).
    expect(frames[0].seq).toBe(1)
    expect(frames[1].seq).toBe(2)
    expect(frames[2].seq).toBeGreaterThan(2)
  })

  test('UUID letter case does not matter: upper and lower case ids are one event, stored lowercase', async () => {
    const socket = await openSocket('org:local')
    const lower = crypto.randomUUID()
    expect(lower).toMatch(/[a-f]/) // the case change is real
    const upper = lower.toUpperCase()
    const event = makeEvent({ id: upper })
    expect((await ingest(t.url, event)).body).toEqual({ stored: 1, duplicates: 0 })
    expect((await ingest(t.url, { ...event, id: lower })).body).toEqual({ stored: 0, duplicates: 1 })
    // Mixed case inside one batch too.
    const mixed = lower.replace(/[a-f]/, (c) => c.toUpperCase())
    expect((await ingest(t.url, { events: [{ ...event, id: mixed }, makeEvent()] })).body).toEqual({ stored: 1, duplicates: 1 })
    expect(await eventsStored()).toBe(2)
    const frames = await framesUntilSentinel(socket, 'org:local')
    expect(frames.filter((f) => f.id.toLowerCase() === lower).map((f) => f.id)).toEqual([lower])
    expect(frames).toHaveLength(3)
    const page = await history()
    expect(page.events[0].id).toBe(lower)
  })

  test('push + poll: an event re-ingested from what /api/events/since returned stays one', async () => {
    const socket = await openSocket('org:local')
    const event = agentCompleted()
    expect((await ingest(t.url, event)).body).toEqual({ stored: 1, duplicates: 0 })
    const polled = (await history()).events
    expect(polled).toHaveLength(1)
    // A relay that polls and pushes on sends back what it read, extra fields (seq, channels) included.
    const { seq: _seq, ...withChannels } = polled[0]
    expect((await ingest(t.url, withChannels)).body).toEqual({ stored: 0, duplicates: 1 })
    const { channels: _channels, ...plain } = withChannels
    expect((await ingest(t.url, { events: [plain] })).body).toEqual({ stored: 0, duplicates: 1 })
    expect(await eventsStored()).toBe(1)
    const after = (await history()).events
    expect(after).toEqual(polled)
    const frames = await framesUntilSentinel(socket, 'org:local')
    expect(frames.map((f) => f.id)).toEqual([event.id, frames.at(-1)!.id])
  })
})

describe('channels', () => {
  test('derived: org:<orgId> plus agent/task/swarm/project from the payload', async () => {
    const channels = ['org:local', 'agent:builder', 'task:t-1', 'swarm:s-7', 'project:p-3']
    const socket = await openSocket(...channels)
    const event = makeEvent({
      type: 'custom.thing',
      payload: { agentName: 'builder', taskId: 't-1', swarmId: 's-7', projectId: 'p-3', other: 'x' },
    })
    expect((await ingest(t.url, event)).body).toEqual({ stored: 1, duplicates: 0 })
    const [stored] = (await history()).events
    expect(stored.channels).toEqual(channels)
    for (const channelId of channels) {
      const [frame] = await socket.events(channelId, 1)
      expect(frame).toEqual({ ...event, seq: 1, channelId })
    }
    // Each channel filter of /since finds it, with that channel named.
    for (const channelId of channels) {
      const page = await history(`?channel=${encodeURIComponent(channelId)}`)
      expect(page.events.map((e: any) => [e.id, e.channelId])).toEqual([[event.id, channelId]])
    }
  })

  test('derived: only the payload fields present; a number forms a channel too', async () => {
    const event = makeEvent({ type: 'task.created', payload: { taskId: 42, title: 'x', projectId: 'p1' } })
    // task.created requires taskId as a string: use an uncatalogued type for the numeric id.
    const numeric = makeEvent({ type: 'custom.numeric', payload: { taskId: 42 } })
    const plain = makeEvent({ payload: { agentId: 'not-a-channel-field' } })
    expect((await ingest(t.url, event)).status).toBe(400)
    expect((await ingest(t.url, { events: [numeric, plain] })).body).toEqual({ stored: 2, duplicates: 0 })
    const events = (await history()).events
    expect(events.map((e: any) => e.channels)).toEqual([['org:local', 'task:42'], ['org:local']])
  })

  test('derived: an event without channel fields reaches org:local only', async () => {
    const socket = await openSocket('org:local', 'agent:builder')
    const event = makeEvent({ payload: { agent: 'builder' } })
    expect((await ingest(t.url, event)).body).toEqual({ stored: 1, duplicates: 0 })
    expect((await socket.events('org:local', 1))[0].id).toBe(event.id)
    const frames = await framesUntilSentinel(socket, 'agent:builder')
    expect(frames).toHaveLength(1) // only the sentinel
  })

  test('explicit channels replace derivation (no org:<orgId>, no payload channels)', async () => {
    const socket = await openSocket('org:local', 'agent:my-coder-agent', 'custom:one', 'agent:z')
    const event = agentCompleted()
    const explicit = { ...event, channels: ['custom:one', 'agent:z'] }
    expect((await ingest(t.url, explicit)).body).toEqual({ stored: 1, duplicates: 0 })
    const [stored] = (await history()).events
    expect(stored.channels).toEqual(['custom:one', 'agent:z'])
    expect((await socket.events('custom:one', 1))[0]).toEqual({ ...event, seq: 1, channelId: 'custom:one' })
    expect((await socket.events('agent:z', 1))[0]).toEqual({ ...event, seq: 1, channelId: 'agent:z' })
    expect(await framesUntilSentinel(socket, 'org:local')).toHaveLength(1)
    expect(await framesUntilSentinel(socket, 'agent:my-coder-agent')).toHaveLength(1)
    expect((await history('?channel=org:local')).events.map((e: any) => e.id)).not.toContain(event.id)
  })
})

describe('organisation scope', () => {
  test('orgId other than the local organisation → 403 and nothing stored', async () => {
    const socket = await openSocket('org:local')
    const response = await ingest(t.url, makeEvent({ orgId: 'other' }))
    expect(response.status).toBe(403)
    expect(response.body.error.code).toBe('forbidden')
    expect(response.body.error.message).toContain('orgId')
    // In a batch, one foreign event fails the whole batch.
    const batch = await ingest(t.url, { events: [makeEvent(), makeEvent({ orgId: 'other' })] })
    expect(batch.status).toBe(403)
    expect(batch.body.error.message).toContain('events[1].orgId')
    expect(await eventsStored()).toBe(0)
    expect(await framesUntilSentinel(socket, 'org:local')).toHaveLength(1)
  })

  test('explicit channel org:<other> → 403 and nothing stored', async () => {
    const response = await ingest(t.url, makeEvent({ channels: ['custom:a', 'org:other'] }))
    expect(response.status).toBe(403)
    expect(response.body.error).toEqual({ code: 'forbidden', message: expect.stringContaining('org:other') })
    expect(await eventsStored()).toBe(0)
    // Its own org channel, named explicitly, is fine.
    expect((await ingest(t.url, makeEvent({ channels: ['org:local'] }))).body).toEqual({ stored: 1, duplicates: 0 })
  })
})

describe('bad input → 400 naming the field, nothing stored', () => {
  const duration = { agentId: 'a', agentName: 'b', taskId: 'c', result: 1, duration: '1200' }
  const cases: Array<[string, () => unknown, string]> = [
    ['missing id', () => { const { id: _id, ...rest } = makeEvent(); return rest }, 'id'],
    ['non-UUID id', () => makeEvent({ id: 'not-a-uuid' }), 'id'],
    ['type "Agent"', () => makeEvent({ type: 'Agent' }), 'type'],
    ['type "agent" (no dot)', () => makeEvent({ type: 'agent' }), 'type'],
    ['type "Agent.Completed"', () => makeEvent({ type: 'Agent.Completed' }), 'type'],
    ['missing orgId', () => { const { orgId: _o, ...rest } = makeEvent(); return rest }, 'orgId'],
    ['timestamp as string', () => makeEvent({ timestamp: '2024-01-01' }), 'timestamp'],
    ['payload not an object', () => makeEvent({ payload: 'hello' }), 'payload'],
    ['agent.completed duration as string', () => makeEvent({ type: 'agent.completed', payload: duration }), 'payload.duration'],
    ['agent.spawned without agentName', () => makeEvent({ type: 'agent.spawned', payload: { agentId: 'a', taskId: 't' } }), 'payload.agentName'],
    ['invalid channel id', () => makeEvent({ channels: ['Not A Channel'] }), 'channels[0]'],
    ['repeated explicit channel', () => makeEvent({ channels: ['custom:a', 'custom:a'] }), 'channels'],
    ['payload.agentName too long to form a channel', () => makeEvent({ payload: { agentName: 'x'.repeat(300) } }), 'payload.agentName'],
    ['batch item error', () => ({ events: [makeEvent(), makeEvent({ type: 'agent.completed', payload: duration }), makeEvent()] }), 'events[1]'],
    ['batch item with bad id', () => ({ events: [makeEvent(), makeEvent({ id: 'x' })] }), 'events[1].id'],
    ['empty batch', () => ({ events: [] }), 'events'],
    ['batch of 1001', () => ({ events: Array.from({ length: 1001 }, () => makeEvent()) }), 'events'],
  ]

  for (const [name, body, field] of cases) {
    test(name, async () => {
      const response = await ingest(t.url, body())
      expect(response.status).toBe(400)
      expect(response.body).toEqual({ error: { code: 'invalid_body', message: expect.any(String) } })
      expect(response.body.error.message).toContain(field)
      expect(response.body.error.message.startsWith(field)).toBe(true)
      expect(await eventsStored()).toBe(0)
      expect((await history()).events).toEqual([])
    })
  }

  test('invalid JSON → 400 invalid_json', async () => {
    const response = await ingest(t.url, '{"id": ')
    expect(response.status).toBe(400)
    expect(response.body.error.code).toBe('invalid_json')
    expect(await eventsStored()).toBe(0)
  })

  test('text/plain → 415, no content-type → 415', async () => {
    for (const headers of [{ 'content-type': 'text/plain' }, {} as Record<string, string>]) {
      const response = await fetch(`${t.url}/ingest`, { method: 'POST', headers, body: JSON.stringify(makeEvent()) })
      expect(response.status).toBe(415)
      expect(((await response.json()) as any).error.code).toBe('unsupported_media_type')
    }
    expect(await eventsStored()).toBe(0)
  })

  test('application/json with a charset is accepted', async () => {
    const response = await ingest(t.url, makeEvent(), { 'content-type': 'application/json; charset=utf-8' })
    expect(response).toMatchObject({ status: 200, body: { stored: 1, duplicates: 0 } })
  })

  test('a batch with one bad event stores none of it, and none is delivered', async () => {
    const socket = await openSocket('org:local')
    const good = [makeEvent(), makeEvent()]
    const response = await ingest(t.url, { events: [good[0], makeEvent({ id: 'bad' }), good[1]] })
    expect(response.status).toBe(400)
    expect(await eventsStored()).toBe(0)
    expect(await framesUntilSentinel(socket, 'org:local')).toHaveLength(1)
    // The good ones were not remembered either: sending them now stores them.
    expect((await ingest(t.url, { events: good })).body).toEqual({ stored: 2, duplicates: 0 })
  })
})

describe('body size limit', () => {
  let small: TestServer | undefined
  afterEach(async () => {
    await small?.close()
    small = undefined
  })

  const oversized = () => JSON.stringify(makeEvent({ payload: { blob: 'x'.repeat(2000) } }))

  test('a body larger than maxBodyBytes → 413 and nothing stored', async () => {
    small = await startServer({ maxBodyBytes: 1024 })
    const fits = makeEvent({ payload: { blob: 'x'.repeat(100) } })
    expect((await ingest(small.url, fits)).body).toEqual({ stored: 1, duplicates: 0 })
    const response = await fetch(`${small.url}/ingest`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: oversized(),
    })
    expect(response.status).toBe(413)
    await response.arrayBuffer()
    const health = await getJson(`${small!.url}/health`)
    expect(health.body.eventsStored).toBe(1)
  })

  test('a streamed (chunked, no content-length) body larger than maxBodyBytes → 413 and nothing stored', async () => {
    small = await startServer({ maxBodyBytes: 1024 })
    const bytes = new TextEncoder().encode(oversized())
    const body = new ReadableStream({
      start(controller) {
        controller.enqueue(bytes)
        controller.close()
      },
    })
    const response = await fetch(`${small.url}/ingest`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
    expect(response.status).toBe(413)
    await response.arrayBuffer()
    expect((await getJson(`${small.url}/health`)).body.eventsStored).toBe(0)
  })

  test('the 413 answer is a JSON error {error:{code,message}}', async () => {
    small = await startServer({ maxBodyBytes: 1024 })
    const response = await fetch(`${small.url}/ingest`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: oversized(),
    })
    expect(response.status).toBe(413)
    const text = await response.text()
    expect(JSON.parse(text || 'null')).toEqual({ error: { code: 'body_too_large', message: expect.stringContaining('1024') } })
  })
})
