import { afterEach, beforeEach, describe, expect, test } from 'bun:test'
import { getJson, ingest, makeEvent, startServer, type TestServer, waitFor } from '../helpers/server'
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

async function since(query: string): Promise<{ status: number; body: any }> {
  return getJson(`${t.url}/api/events/since${query}`)
}

async function page(query: string): Promise<any> {
  const { status, body } = await since(query)
  expect(status).toBe(200)
  return body
}

async function ingestMany(count: number, overrides: Record<string, unknown> = {}): Promise<Array<ReturnType<typeof makeEvent>>> {
  const events = Array.from({ length: count }, () => makeEvent(overrides))
  for (let i = 0; i < events.length; i += 1000) {
    const response = await ingest(t.url, { events: events.slice(i, i + 1000) })
    expect(response.body).toEqual({ stored: Math.min(1000, events.length - i), duplicates: 0 })
  }
  return events
}

async function health(): Promise<any> {
  const { status, body } = await getJson(`${t.url}/health`)
  expect(status).toBe(200)
  return body
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i)

describe('GET /api/events/since', () => {
  test('returns events in ascending seq with their full shape', async () => {
    const first = makeEvent({ type: 'agent.spawned', payload: { agentId: 'a1', agentName: 'coder', taskId: 't1' } })
    const rest = [makeEvent(), makeEvent()]
    expect((await ingest(t.url, first)).body).toEqual({ stored: 1, duplicates: 0 })
    expect((await ingest(t.url, { events: rest })).body).toEqual({ stored: 2, duplicates: 0 })
    const body = await page('')
    expect(body.events).toEqual([
      { ...first, seq: 1, channels: ['org:local', 'agent:coder', 'task:t1'] },
      { ...rest[0], seq: 2, channels: ['org:local'] },
      { ...rest[1], seq: 3, channels: ['org:local'] },
    ])
    // The project may add fields to the page; these are the contract's.
    expect(body).toMatchObject({ nextSeq: 3, hasMore: false, epoch: expect.any(String) })
    expect(body).not.toHaveProperty('truncated')
    const after = await page('?since=1')
    expect(after.events.map((e: any) => e.seq)).toEqual([2, 3])
    expect(after.nextSeq).toBe(3)
  })

  test('an empty log answers no events, nextSeq = since, hasMore false', async () => {
    const empty = await page('')
    expect(empty.events).toEqual([])
    expect(empty).toMatchObject({ nextSeq: 0, hasMore: false })
    await ingestMany(2)
    const body = await page('?since=2')
    expect(body.events).toEqual([])
    expect(body.nextSeq).toBe(2)
    expect(body.hasMore).toBe(false)
  })

  test('limit defaults to 100', async () => {
    const events = await ingestMany(150)
    const first = await page('')
    expect(first.events).toHaveLength(100)
    expect(first.events.map((e: any) => e.seq)).toEqual(range(1, 100))
    expect(first.events.map((e: any) => e.id)).toEqual(events.slice(0, 100).map((e) => e.id))
    expect(first.nextSeq).toBe(100)
    expect(first.hasMore).toBe(true)
    const second = await page(`?since=${first.nextSeq}`)
    expect(second.events.map((e: any) => e.seq)).toEqual(range(101, 150))
    expect(second.nextSeq).toBe(150)
    expect(second.hasMore).toBe(false)
  })

  test('limit goes up to 1000; 1001, 0 and non-numbers → 400 naming limit', async () => {
    await ingestMany(1001)
    const body = await page('?limit=1000')
    expect(body.events).toHaveLength(1000)
    expect(body.events.at(-1).seq).toBe(1000)
    expect(body.nextSeq).toBe(1000)
    expect(body.hasMore).toBe(true)
    const last = await page('?since=1000&limit=1000')
    expect(last.events.map((e: any) => e.seq)).toEqual([1001])
    expect(last.hasMore).toBe(false)
    for (const bad of ['1001', '0', '-5', 'abc', '2.5']) {
      const response = await since(`?limit=${bad}`)
      expect(response.status).toBe(400)
      expect(response.body.error.code).toBe('invalid_query')
      expect(response.body.error.message).toContain('limit')
    }
  })

  test('a bad since → 400 naming since', async () => {
    for (const bad of ['-1', 'abc', '1.5']) {
      const response = await since(`?since=${bad}`)
      expect(response.status).toBe(400)
      expect(response.body.error.message).toContain('since')
    }
  })

  test('paging with nextSeq/hasMore reaches every event exactly once, then stops', async () => {
    const events = await ingestMany(25)
    const seen: any[] = []
    const sizes: number[] = []
    let cursor = 0
    for (let pages = 0; ; pages++) {
      expect(pages).toBeLessThan(10)
      const body = await page(`?since=${cursor}&limit=7`)
      seen.push(...body.events)
      sizes.push(body.events.length)
      expect(body.nextSeq).toBe(body.events.at(-1)?.seq ?? cursor)
      cursor = body.nextSeq
      if (!body.hasMore) break
    }
    expect(sizes).toEqual([7, 7, 7, 4])
    expect(seen.map((e) => e.id)).toEqual(events.map((e) => e.id))
    expect(seen.map((e) => e.seq)).toEqual(range(1, 25))
    expect(cursor).toBe(25)
    // Exhausted: asking again gives nothing and keeps the cursor.
    expect(await page(`?since=${cursor}&limit=7`)).toMatchObject({ events: [], nextSeq: 25, hasMore: false })
  })

  test('hasMore is false on a last page that is exactly full', async () => {
    await ingestMany(14)
    const first = await page('?limit=7')
    expect(first.hasMore).toBe(true)
    const second = await page('?since=7&limit=7')
    expect(second.events).toHaveLength(7)
    expect(second.hasMore).toBe(false)
    expect(second.nextSeq).toBe(14)
  })

  test('channel filter: only that channel, with channelId, ascending, pageable', async () => {
    const onA = (n: number) => makeEvent({ type: 'agent.status', payload: { agentId: 'x', agentName: 'a', status: 's', message: `${n}` } })
    const onB = () => makeEvent({ payload: { agentName: 'b' } })
    const batch = [onA(1), onB(), onA(2), onB(), onA(3), makeEvent({ channels: ['agent:a', 'custom:x'] })]
    expect((await ingest(t.url, { events: batch })).body).toEqual({ stored: 6, duplicates: 0 })
    const a = await page('?channel=agent:a')
    expect(a.events.map((e: any) => e.seq)).toEqual([1, 3, 5, 6])
    expect(a.events.every((e: any) => e.channelId === 'agent:a')).toBe(true)
    expect(a.events[0]).toEqual({ ...batch[0], seq: 1, channelId: 'agent:a', channels: ['org:local', 'agent:a'] })
    expect(a.hasMore).toBe(false)
    const b = await page('?channel=agent:b')
    expect(b.events.map((e: any) => e.seq)).toEqual([2, 4])
    const paged = await page('?channel=agent:a&since=1&limit=2')
    expect(paged.events.map((e: any) => e.seq)).toEqual([3, 5])
    expect(paged.nextSeq).toBe(5)
    expect(paged.hasMore).toBe(true)
    expect((await page('?channel=custom:x')).events.map((e: any) => e.seq)).toEqual([6])
    expect(await page('?channel=agent:nobody')).toMatchObject({ events: [], nextSeq: 0, hasMore: false })
    // The org channel holds only the events derived onto it, not the explicit-channel one.
    expect((await page('?channel=org:local')).events.map((e: any) => e.seq)).toEqual([1, 2, 3, 4, 5])
  })

  test('no channel = the whole organisation (every channel), and only it', async () => {
    await ingest(t.url, { events: [makeEvent({ channels: ['custom:x'] }), makeEvent({ payload: { taskId: 't' } })] })
    // The embedding process may publish for another organisation: it must not show up here.
    expect(await t.server.publish({ type: 'test.other', orgId: 'other', userId: 'u', payload: {} })).toEqual({ stored: 1, duplicates: 0 })
    await ingest(t.url, makeEvent())
    const body = await page('')
    expect(body.events.map((e: any) => e.seq)).toEqual([1, 2, 4])
    expect(body.events.every((e: any) => e.orgId === 'local' && !('channelId' in e))).toBe(true)
    expect(body.events.map((e: any) => e.channels)).toEqual([['custom:x'], ['org:local', 'task:t'], ['org:local']])
    expect((await health()).eventsStored).toBe(4)
  })

  test('an invalid channel id → 400 naming channel', async () => {
    for (const bad of ['Bad', 'agent', 'agent:', 'AGENT:x', ' agent:x', 'agent:x ', `agent:${'x'.repeat(300)}`, 'agent:a\nb']) {
      const response = await since(`?channel=${encodeURIComponent(bad)}`)
      expect(response.status).toBe(400)
      expect(response.body).toEqual({ error: { code: 'invalid_query', message: expect.stringContaining('channel') } })
    }
  })

  test('channel org:<other> → 403; org:local is allowed', async () => {
    await ingestMany(1)
    const response = await since('?channel=org:other')
    expect(response.status).toBe(403)
    expect(response.body).toEqual({ error: { code: 'forbidden', message: expect.stringContaining('org:other') } })
    expect((await page('?channel=org:local')).events).toHaveLength(1)
  })
})

describe('GET /health', () => {
  test('shape {status, connections, channels, eventsStored, uptime}', async () => {
    const body = await health()
    // (Checked before toMatchObject: Bun's toMatchObject writes asymmetric matchers into the object it checks.)
    expect(Number.isInteger(body.uptime)).toBe(true)
    expect(body.uptime).toBeGreaterThanOrEqual(0)
    expect(body.uptime).toBeLessThan(5)
    expect(body).toMatchObject({ status: 'ok', connections: 0, channels: 0, eventsStored: 0 })
    await ingestMany(3)
    expect((await health()).eventsStored).toBe(3)
  })

  test('connections and channels count real sockets and subscriptions, and drop when they go', async () => {
    const one = await TestSocket.open(t.wsUrl)
    const two = await TestSocket.open(t.wsUrl)
    sockets.push(one, two)
    await waitFor(async () => (await health()).connections === 2, 5000, 'two connections')
    expect((await health()).channels).toBe(0)

    await one.request({ type: 'subscribe', channelId: 'agent:a' }, 'subscribed')
    await one.request({ type: 'subscribe', channelId: 'org:local' }, 'subscribed')
    await one.request({ type: 'subscribe', channelId: 'agent:a' }, 'subscribed') // again: still one
    await two.request({ type: 'subscribe', channelId: 'agent:a' }, 'subscribed')
    await two.request({ type: 'subscribe', channelId: 'task:b' }, 'subscribed')
    expect(await health()).toMatchObject({ connections: 2, channels: 3 })

    await one.request({ type: 'unsubscribe', channelId: 'org:local' }, 'unsubscribed')
    expect(await health()).toMatchObject({ connections: 2, channels: 2 })

    two.close()
    await two.waitClosed()
    // two held task:b alone and shared agent:a with one.
    await waitFor(async () => (await health()).connections === 1, 5000, 'one connection')
    expect(await health()).toMatchObject({ connections: 1, channels: 1 })

    one.close()
    await one.waitClosed()
    await waitFor(async () => (await health()).connections === 0, 5000, 'no connections')
    expect(await health()).toMatchObject({ connections: 0, channels: 0 })
  })
})

test('an unknown path → 404 JSON error', async () => {
  for (const path of ['/nope', '/api/events', '/api/events/since/1']) {
    const response = await getJson(`${t.url}${path}`)
    expect(response.status).toBe(404)
    expect(response.body).toEqual({ error: { code: 'not_found', message: expect.any(String) } })
  }
})
