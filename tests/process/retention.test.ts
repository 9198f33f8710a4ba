import { afterEach, beforeEach, describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import { PRUNE_CHUNK } from '../../src/retention'
import { getJson, ingest, makeEvent, startServer, tempDir, type TestServer } from '../helpers/server'
import { TestSocket } from '../helpers/ws'

const HOUR = 3_600_000

let tmp: ReturnType<typeof tempDir>
let dbPath: string
const servers: TestServer[] = []
const sockets: TestSocket[] = []

beforeEach(() => {
  tmp = tempDir()
  dbPath = join(tmp.dir, 'realtime.db')
})
afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  for (const server of servers.splice(0)) await server.close()
  tmp.cleanup()
})

/** A server on this test's own database file, which outlives the server (restart = start again). */
async function start(options: Parameters<typeof startServer>[0] = {}): Promise<TestServer> {
  const server = await startServer({ dbPath, retentionHours: 1, ...options })
  servers.push(server)
  return server
}

async function restart(t: TestServer, options: Parameters<typeof startServer>[0] = {}): Promise<TestServer> {
  await t.close()
  servers.splice(servers.indexOf(t), 1)
  return start(options)
}

const old = (overrides: Record<string, unknown> = {}) => makeEvent({ timestamp: Date.now() - 2 * HOUR, ...overrides })
const recent = (overrides: Record<string, unknown> = {}) => makeEvent({ timestamp: Date.now() - HOUR / 2, ...overrides })

async function send(t: TestServer, events: unknown[]): Promise<void> {
  for (let i = 0; i < events.length; i += 1000) {
    const chunk = events.slice(i, i + 1000)
    expect((await ingest(t.url, { events: chunk })).body).toEqual({ stored: chunk.length, duplicates: 0 })
  }
}

async function stored(t: TestServer): Promise<number> {
  return (await getJson(`${t.url}/health`)).body.eventsStored
}

async function since(t: TestServer, query = ''): Promise<any> {
  const { status, body } = await getJson(`${t.url}/api/events/since${query}`)
  expect(status).toBe(200)
  return body
}

describe('retention', () => {
  test('prune() removes events older than retentionHours by timestamp; recent ones survive', async () => {
    const t = await start()
    const future = makeEvent({ timestamp: Date.now() + HOUR })
    const events = [old(), recent(), old(), recent(), old(), future]
    await send(t, events)
    expect(await stored(t)).toBe(6)
    expect(await t.server.prune()).toBe(3)
    expect(await stored(t)).toBe(3)
    expect(t.server.health().eventsStored).toBe(3)
    const page = await since(t)
    expect(page.events.map((e: any) => [e.id, e.seq])).toEqual([
      [events[1]!.id, 2],
      [events[3]!.id, 4],
      [future.id, 6],
    ])
    // Nothing more to do.
    expect(await t.server.prune()).toBe(0)
    expect(await stored(t)).toBe(3)
  })

  test('events are pruned at startup (restart on the same database file)', async () => {
    const first = await start()
    const keep = recent()
    await send(first, [old(), keep, old()])
    expect(await stored(first)).toBe(3)
    const second = await restart(first)
    expect(await stored(second)).toBe(1)
    const page = await since(second)
    expect(page.events.map((e: any) => [e.id, e.seq])).toEqual([[keep.id, 2]])
    expect(page.truncated).toBe(true)
    // A longer retention at startup keeps what is within it.
    const again = makeEvent({ timestamp: Date.now() - 3 * HOUR })
    await send(second, [again])
    const third = await restart(second, { retentionHours: 4 })
    expect(await stored(third)).toBe(2)
  })

  test(`more than ${PRUNE_CHUNK} old events are all pruned (chunked), now and at startup`, async () => {
    expect(PRUNE_CHUNK).toBe(1000)
    const t = await start()
    const keep = recent()
    await send(t, [...Array.from({ length: 2 * PRUNE_CHUNK + 500 }, () => old()), keep])
    expect(await stored(t)).toBe(2501)
    expect(await t.server.prune()).toBe(2500)
    expect(await stored(t)).toBe(1)
    expect((await since(t)).events.map((e: any) => e.id)).toEqual([keep.id])

    await send(t, Array.from({ length: PRUNE_CHUNK + 1 }, () => old()))
    expect(await stored(t)).toBe(1002)
    const restarted = await restart(t)
    expect(await stored(restarted)).toBe(1)
    expect((await since(restarted)).events.map((e: any) => e.id)).toEqual([keep.id])
  })

  test('the newest seq pruned is never reused (also after a restart)', async () => {
    const t = await start()
    await send(t, [recent(), old()])
    expect((await since(t)).events.map((e: any) => e.seq)).toEqual([1, 2])
    expect(await t.server.prune()).toBe(1)
    const next = recent()
    await send(t, [next])
    expect((await since(t)).events.map((e: any) => [e.id, e.seq]).at(-1)).toEqual([next.id, 3])

    // Prune the newest again, then restart: the counter lives in the database.
    await send(t, [old()])
    expect(await t.server.prune()).toBe(1)
    const restarted = await restart(t)
    const after = recent()
    await send(restarted, [after])
    const seqs = (await since(restarted)).events.map((e: any) => e.seq)
    expect(seqs).toEqual([1, 3, 5])
  })

  test('/api/events/since reports truncated:true for a cursor before pruned events', async () => {
    const t = await start()
    await send(t, [
      old({ payload: { agentName: 'a' } }), // 1
      old({ payload: { agentName: 'b' } }), // 2
      recent({ payload: { agentName: 'a' } }), // 3
      recent(), // 4
    ])
    // Nothing pruned yet: no truncated field at all.
    expect(await since(t)).not.toHaveProperty('truncated')
    expect(await t.server.prune()).toBe(2)

    const whole = await since(t)
    expect(whole).toMatchObject({ truncated: true, nextSeq: 4, hasMore: false })
    expect(whole.events.map((e: any) => e.seq)).toEqual([3, 4])
    expect((await since(t, '?since=1')).truncated).toBe(true)
    expect(await since(t, '?since=2')).not.toHaveProperty('truncated')
    expect(await since(t, '?since=3')).not.toHaveProperty('truncated')

    const a = await since(t, '?channel=agent:a')
    expect(a).toMatchObject({ truncated: true })
    expect(a.events.map((e: any) => e.seq)).toEqual([3])
    expect(await since(t, '?channel=agent:a&since=1')).not.toHaveProperty('truncated')
    expect((await since(t, '?channel=agent:b&since=1')).truncated).toBe(true)
    expect(await since(t, '?channel=agent:b&since=2')).not.toHaveProperty('truncated')
    expect(await since(t, '?channel=agent:never')).not.toHaveProperty('truncated')
    expect((await since(t, '?channel=org:local')).truncated).toBe(true)

    // The WebSocket replay says the same in `subscribed`.
    const socket = await TestSocket.open(t.wsUrl)
    sockets.push(socket)
    const truncated = await socket.request({ type: 'subscribe', channelId: 'agent:a', since: 0 }, 'subscribed')
    expect(truncated).toMatchObject({ channelId: 'agent:a', truncated: true })
    expect((await socket.events('agent:a', 1))[0].seq).toBe(3)
    const whole2 = await socket.request({ type: 'subscribe', channelId: 'org:local', since: 2 }, 'subscribed')
    expect(whole2).not.toHaveProperty('truncated')
    expect((await socket.events('org:local', 2)).map((f) => f.seq)).toEqual([3, 4])
  })
})

describe('in-process publish', () => {
  test('fills id, timestamp, orgId and userId; stores and delivers the event', async () => {
    const t = await start()
    const socket = await TestSocket.open(t.wsUrl)
    sockets.push(socket)
    await socket.request({ type: 'subscribe', channelId: 'agent:coder' }, 'subscribed')
    const before = Date.now()
    const payload = { agentId: 'a1', agentName: 'coder', taskId: 't1' }
    expect(await t.server.publish({ type: 'agent.spawned', payload })).toEqual({ stored: 1, duplicates: 0 })
    const [frame] = await socket.events('agent:coder', 1)
    expect(frame).toEqual({
      type: 'agent.spawned',
      id: expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/),
      seq: 1,
      channelId: 'agent:coder',
      orgId: 'local',
      userId: 'local',
      timestamp: expect.any(Number),
      payload,
    })
    expect(frame.timestamp).toBeGreaterThanOrEqual(before)
    expect(frame.timestamp).toBeLessThanOrEqual(Date.now())
    const page = await since(t)
    const { channelId: _channelId, ...event } = frame
    expect(page.events).toEqual([{ ...event, channels: ['org:local', 'agent:coder', 'task:t1'] }])
    expect(await stored(t)).toBe(1)
  })

  test('a batch, explicit ids (deduplicated like ingest) and explicit channels', async () => {
    const t = await start()
    const id = crypto.randomUUID()
    const result = await t.server.publish([
      { type: 'test.one', payload: { n: 1 }, id },
      { type: 'test.two', payload: { n: 2 }, channels: ['custom:x'] },
      { type: 'test.one', payload: { n: 3 }, id: id.toUpperCase() },
    ])
    expect(result).toEqual({ stored: 2, duplicates: 1 })
    expect(await t.server.publish({ type: 'test.one', payload: {}, id })).toEqual({ stored: 0, duplicates: 1 })
    // An HTTP ingest of the same id is a duplicate too.
    expect((await ingest(t.url, makeEvent({ id }))).body).toEqual({ stored: 0, duplicates: 1 })
    const page = await since(t)
    expect(page.events.map((e: any) => [e.type, e.payload.n, e.channels])).toEqual([
      ['test.one', 1, ['org:local']],
      ['test.two', 2, ['custom:x']],
    ])
    expect(page.events[0].id).toBe(id)
    expect(await stored(t)).toBe(2)
  })

  test('invalid publish rejects with an error naming the field and stores nothing', async () => {
    const t = await start()
    const socket = await TestSocket.open(t.wsUrl)
    sockets.push(socket)
    await socket.request({ type: 'subscribe', channelId: 'org:local' }, 'subscribed')
    await expect(t.server.publish({ type: 'Agent', payload: {} })).rejects.toThrow(/^type: /)
    await expect(
      t.server.publish({ type: 'agent.completed', payload: { agentId: 'a', agentName: 'b', taskId: 'c', result: 1, duration: '5' } }),
    ).rejects.toThrow(/payload\.duration/)
    await expect(t.server.publish({ type: 'test.x', payload: {}, id: 'not-a-uuid' })).rejects.toThrow(/^id: /)
    await expect(t.server.publish({ type: 'test.x', payload: 'text' as unknown as Record<string, unknown> })).rejects.toThrow(/^payload/)
    await expect(
      t.server.publish([
        { type: 'test.ok', payload: {} },
        { type: 'agent.spawned', payload: { agentId: 'a' } },
      ]),
    ).rejects.toThrow(/^events\[1\]\.payload\.agentName/)
    expect(await stored(t)).toBe(0)
    expect((await since(t)).events).toEqual([])
    // Nothing was delivered: the next good event is the first frame.
    await t.server.publish({ type: 'test.ok', payload: { last: true } })
    const [frame] = await socket.events('org:local', 1)
    expect(frame).toMatchObject({ type: 'test.ok', seq: 1, payload: { last: true } })
    expect(socket.frames.filter((f) => typeof f.seq === 'number')).toEqual([])
  })

  test('publish after stop rejects', async () => {
    const t = await start()
    await t.server.stop()
    await expect(t.server.publish({ type: 'test.x', payload: {} })).rejects.toThrow('stopped')
  })
})
