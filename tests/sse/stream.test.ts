import { afterEach, describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import { EventSource, type FetchLike } from 'eventsource'
import { createLogger } from '../../src/log'
import type { RealtimeServerOptions } from '../../src/server'
import { spawnService, type ServiceProcess } from '../helpers/process'
import { getJson, ingest, makeEvent, startServer, tempDir, type TestServer, waitFor } from '../helpers/server'
import { TestSocket } from '../helpers/ws'
import { type Block, jwt, SECRET, SseReader } from './support'

/**
 * GET /api/events/stream (src/realtime/sse.ts, src/modules/stream): the exact wire format, the
 * merged seq order across channels with one frame per followed channel (the id on the last), resuming (Last-Event-ID over ?since=),
 * truncated / epoch / snapshot starts, keep-alives, query errors, authentication, per-credential
 * limits, slow readers, /health and shutdown — and a standards-following EventSource (the
 * `eventsource` package) that reads across SIGTERM and SIGKILL restarts of a real service process
 * and resumes by itself with Last-Event-ID: every event exactly once, in seq order.
 */

const servers: TestServer[] = []
const readers: SseReader[] = []
const aborts: AbortController[] = []
const sockets: TestSocket[] = []
const sources: EventSource[] = []
const procs: ServiceProcess[] = []
const dirs: Array<() => void> = []

afterEach(async () => {
  for (const source of sources.splice(0)) source.close()
  for (const reader of readers.splice(0)) reader.close()
  for (const abort of aborts.splice(0)) abort.abort()
  for (const socket of sockets.splice(0)) socket.close()
  for (const service of procs.splice(0)) {
    if (service.proc.exitCode === null && service.proc.signalCode === null) service.proc.kill('SIGKILL')
    await service.exited
  }
  for (const server of servers.splice(0)) await server.close()
  for (const cleanup of dirs.splice(0)) cleanup()
})

async function start(options: RealtimeServerOptions = {}): Promise<TestServer> {
  const server = await startServer(options)
  servers.push(server)
  return server
}

async function stream(base: string, query: string, headers: Record<string, string> = {}): Promise<SseReader> {
  const reader = await SseReader.open(`${base}/api/events/stream${query}`, headers)
  readers.push(reader)
  return reader
}

type Ev = ReturnType<typeof makeEvent> & { channels: string[]; key?: string }

function ev(channels: string[], extra: Record<string, unknown> = {}): Ev {
  return { ...makeEvent(extra), channels } as Ev
}

async function store(url: string, events: Ev[], headers: Record<string, string> = {}): Promise<void> {
  for (let i = 0; i < events.length; i += 500) {
    const { status, body } = await ingest(url, { events: events.slice(i, i + 500) }, headers)
    expect(status).toBe(200)
    expect(body).toEqual({ stored: Math.min(500, events.length - i), duplicates: 0 })
  }
}

/** Every stored event of the organisation (seq order), via GET /api/events/since, paged. */
async function stored(url: string, headers: Record<string, string> = {}): Promise<any[]> {
  const out: any[] = []
  let since = 0
  for (let page = 0; page < 100; page++) {
    const { status, body } = await getJson(`${url}/api/events/since?since=${since}&limit=1000`, headers)
    expect(status).toBe(200)
    out.push(...body.events)
    if (!body.hasMore) return out
    since = body.nextSeq
  }
  throw new Error('too many pages')
}

const epochOf = async (url: string, headers: Record<string, string> = {}) =>
  (await getJson(`${url}/api/events/since?since=0&limit=1`, headers)).body.epoch as string

/** The seq, id and channel of each event block. */
const summary = (blocks: Block[]) =>
  blocks.map((block) => {
    const frame = JSON.parse(block.data!)
    return { seq: frame.seq as number, id: frame.id as string, channelId: frame.channelId as string }
  })

/**
 * What a stream following `following` must deliver of `events` (stored, seq order): one frame per
 * followed channel of each event, in the event's own channel order, as a socket gets them.
 */
const expected = (events: any[], following: string[]) =>
  events.flatMap((event) =>
    event.channels
      .filter((channel: string) => following.includes(channel))
      .map((channelId: string) => ({ seq: event.seq, id: event.id, channelId })),
  )

/** Only the last frame of each seq carries `id:` (a cut between them resumes before the event). */
function expectIdsOnLastFrames(blocks: Block[]): void {
  blocks.forEach((block, index) => {
    const seq = JSON.parse(block.data!).seq
    const next = blocks[index + 1]
    const last = !next || JSON.parse(next.data!).seq !== seq
    expect({ seq, id: block.id }).toEqual({ seq, id: last ? String(seq) : undefined })
  })
}

describe('wire format', () => {
  test('retry line, ready, then id / event / data per event, the data being the socket frame byte for byte', async () => {
    const t = await start()
    await store(t.url, [ev(['task:w']), ev(['task:w', 'task:x'], { key: 'entity-1' })])
    // The frames a WebSocket subscriber gets for the same events, as text.
    const socket = await TestSocket.open(t.wsUrl)
    sockets.push(socket)
    const socketFrames: string[] = []
    socket.ws.addEventListener('message', (message) => {
      const text = String(message.data)
      if (JSON.parse(text).seq !== undefined) socketFrames.push(text)
    })
    const subscribed = await socket.request({ type: 'subscribe', channelId: 'task:w', since: 0 }, 'subscribed')
    const reader = await stream(t.url, '?channel=task:w&since=0')
    expect(reader.response.status).toBe(200)
    expect(reader.response.headers.get('content-type')).toBe('text/event-stream; charset=utf-8')
    expect(reader.response.headers.get('cache-control')).toBe('no-cache, no-transform')
    expect(reader.response.headers.get('x-accel-buffering')).toBe('no')
    await reader.until(() => reader.events.length === 2, 3000, 'the replay')
    await store(t.url, [ev(['task:w'], { type: 'agent.started', payload: { agentName: 'w', model: 'm' } })])
    await reader.until(() => reader.events.length === 3, 3000, 'the live event')
    await waitFor(() => socketFrames.length === 3, 3000, 'the socket frames')

    const seqs = socketFrames.map((frame) => JSON.parse(frame).seq as number)
    const types = socketFrames.map((frame) => JSON.parse(frame).type as string)
    expect(types).toEqual(['test.happened', 'test.happened', 'agent.started'])
    expect(reader.raw).toBe(
      `retry: 2000\n\nevent: ready\ndata: {"epoch":${JSON.stringify(subscribed.epoch)},"channels":["task:w"]}\n\n` +
        socketFrames.map((frame, i) => `id: ${seqs[i]}\nevent: ${types[i]}\ndata: ${frame}\n\n`).join(''),
    )
  })
})

describe('order and resume', () => {
  test('two channels merged in seq order, one frame per followed channel with the id on the last, across replay pages and live ingest', async () => {
    const t = await start()
    const pattern = () => [ev(['task:a']), ev(['task:b']), ev(['task:a', 'task:b']), ev(['task:b', 'task:a']), ev(['task:c']), ev(['task:c', 'task:a']), ev(['org:local'])]
    // More than one replay page (500 events) of the followed channels.
    await store(t.url, Array.from({ length: 160 }, pattern).flat())
    const reader = await stream(t.url, '?channel=task:b&channel=task:a&since=0')
    // Live events, one at a time, while the replay runs.
    const live = Array.from({ length: 15 }, pattern).flat()
    for (const event of live) expect((await ingest(t.url, event)).status).toBe(200)
    const all = await stored(t.url)
    expect(all.length).toBe(160 * 7 + 15 * 7)
    const want = expected(all, ['task:b', 'task:a'])
    expect(want.length).toBe(175 * 7)
    await reader.until(() => reader.events.length >= want.length, 5000, 'every event')
    expect(summary(reader.events)).toEqual(want)
    expectIdsOnLastFrames(reader.events)
    // An event on both channels comes once per channel, in the event's own channel order.
    expect(want.filter((event) => all.find((e) => e.id === event.id).channels.length === 2).map((event) => event.channelId).slice(0, 4)).toEqual([
      'task:a',
      'task:b',
      'task:b',
      'task:a',
    ])
    // Nothing more than those (no duplicate trailing behind): a marker event arrives right after.
    const marker = ev(['task:a'])
    await store(t.url, [marker])
    await reader.until(() => reader.events.length === want.length + 1, 3000, 'the marker')
    expect(JSON.parse(reader.events.at(-1)!.data!).id).toBe(marker.id)
  })

  test('Last-Event-ID wins over ?since= (lower or higher); an empty one leaves ?since= in charge', async () => {
    const t = await start()
    await store(t.url, Array.from({ length: 6 }, () => ev(['task:r'])))
    const all = await stored(t.url)
    const seqs = all.map((event) => event.seq)
    const ids = all.map((event) => event.id)
    const cases: Array<[string, Record<string, string>, string[]]> = [
      [`&since=${seqs[0]}`, { 'last-event-id': String(seqs[3]) }, ids.slice(4)],
      [`&since=${seqs[4]}`, { 'last-event-id': String(seqs[1]) }, ids.slice(2)],
      ['', { 'last-event-id': String(seqs[5]) }, []],
      [`&since=${seqs[2]}`, { 'last-event-id': '' }, ids.slice(3)],
      [`&since=${seqs[2]}`, {}, ids.slice(3)],
    ]
    // Each case ends with a marker event; the markers of earlier cases are in later replays too.
    const markers: string[] = []
    for (const [query, headers, want] of cases) {
      const reader = await stream(t.url, `?channel=task:r${query}`, headers)
      expect(reader.response.status).toBe(200)
      const marker = ev(['task:r'])
      markers.push(marker.id)
      await store(t.url, [marker])
      await reader.next((block) => block.data?.includes(marker.id) ?? false, 3000)
      expect({ query, headers, got: reader.events.map((block) => JSON.parse(block.data!).id) }).toEqual({ query, headers, got: [...want, ...markers] })
      reader.close()
    }
  })

  test('a cursor before pruned events gets a truncated event, then what is left after it', async () => {
    const t = await start({ retentionHours: 1 })
    const old = Date.now() - 2 * 3_600_000
    await store(t.url, [...Array.from({ length: 3 }, () => ev(['task:p'], { timestamp: old })), ev(['task:p']), ev(['task:p'])])
    const [s1, s2, s3, s4, s5] = (await stored(t.url)).map((event) => event.seq)
    expect(await t.server.prune()).toBe(3)
    const epoch = await epochOf(t.url)

    const truncated = await stream(t.url, `?channel=task:p&since=${s1}`)
    const names = async (reader: SseReader, count: number) => {
      await reader.until(() => reader.events.length === count, 3000, 'the replay')
      return reader.blocks.map((block) => block.event ?? block.lines.join('|'))
    }
    expect(await names(truncated, 2)).toEqual(['retry: 2000', 'ready', 'truncated', 'test.happened', 'test.happened'])
    expect(JSON.parse(truncated.blocks[2]!.data!)).toEqual({ since: s1, epoch })
    expect(truncated.events.map((block) => Number(block.id))).toEqual([s4, s5])

    const fromZero = await stream(t.url, '?channel=task:p&since=0')
    expect(await names(fromZero, 2)).toEqual(['retry: 2000', 'ready', 'truncated', 'test.happened', 'test.happened'])
    expect(JSON.parse(fromZero.blocks[2]!.data!)).toEqual({ since: 0, epoch })

    // A cursor at or after the last pruned seq lost nothing: no truncated event.
    const whole = await stream(t.url, `?channel=task:p&since=${s3}`)
    expect(await names(whole, 2)).toEqual(['retry: 2000', 'ready', 'test.happened', 'test.happened'])
    expect(s2).toBe(s1! + 1)
  })

  test('another epoch: an epoch event, truncated, then the replay from the start; the same epoch resumes', async () => {
    const t = await start()
    await store(t.url, Array.from({ length: 4 }, () => ev(['task:e'])))
    const seqs = (await stored(t.url)).map((event) => event.seq)
    const epoch = await epochOf(t.url)

    const other = await stream(t.url, `?channel=task:e&since=${seqs[2]}&epoch=another-database`)
    await other.until(() => other.events.length === 4, 3000, 'the replay from the start')
    expect(other.blocks.slice(1, 4).map((block) => [block.event, JSON.parse(block.data!)])).toEqual([
      ['ready', { epoch, channels: ['task:e'] }],
      ['epoch', { epoch, previous: 'another-database' }],
      ['truncated', { since: 0, epoch }],
    ])
    expect(other.events.map((block) => Number(block.id))).toEqual(seqs)

    const same = await stream(t.url, `?channel=task:e&since=${seqs[2]}&epoch=${epoch}`)
    await same.until(() => same.events.length === 1, 3000, 'the resume')
    expect(same.blocks.map((block) => block.event ?? 'retry')).toEqual(['retry', 'ready', 'test.happened'])
    expect(Number(same.events[0]!.id)).toBe(seqs[3]!)

    // A cursor beyond the newest seq cannot come from this database: truncated, from the start.
    const beyond = await stream(t.url, `?channel=task:e&since=${seqs[3]! + 100}`)
    await beyond.until(() => beyond.events.length === 4, 3000, 'the replay from the start')
    expect(beyond.blocks.map((block) => block.event ?? 'retry').slice(0, 3)).toEqual(['retry', 'ready', 'truncated'])
  })

  test('snapshot=1: snapshot events (one per channel, same seq), an id line, then live events with no gap and no duplicate while ingesting', async () => {
    const t = await start()
    const keyed = (channel: string, i: number) => ev([channel], { key: `k${i % 7}`, payload: { i } })
    await store(t.url, [...Array.from({ length: 40 }, (_, i) => keyed('task:s', i)), ...Array.from({ length: 5 }, (_, i) => keyed('task:s2', i))])
    // A producer, one event at a time, running while the stream opens.
    let produced = 0
    const producer = (async () => {
      for (let i = 0; i < 80; i++) {
        expect((await ingest(t.url, keyed(i % 2 ? 'task:s' : 'task:s2', 100 + i))).status).toBe(200)
        produced++
      }
    })()
    await waitFor(() => produced >= 10, 3000, 'the producer running')
    const reader = await stream(t.url, '?channel=task:s&channel=task:s2&snapshot=1')
    await producer
    const all = await stored(t.url)
    const first = await reader.next((block) => block.event === 'snapshot', 3000)
    const second = await reader.next((block) => block.event === 'snapshot', 3000)
    const idLine = await reader.next((block) => block.event === undefined && block.id !== undefined, 3000)
    const [a, b] = [JSON.parse(first.data!), JSON.parse(second.data!)]
    const seq = a.seq as number
    expect(b.seq).toBe(seq)
    expect(idLine.lines).toEqual([`id: ${seq}`])
    expect([a.type, a.channelId, a.done, b.type, b.channelId, b.done]).toEqual(['snapshot', 'task:s', true, 'snapshot', 'task:s2', true])
    // Each snapshot is the channel's state at `seq`: the latest event of every key.
    const stateAt = (channel: string) => {
      const latest = new Map<string, any>()
      for (const event of all) if (event.seq <= seq && event.channels.includes(channel)) latest.set(event.key, event)
      return [...latest.values()].map((event) => event.id).sort()
    }
    expect(a.entities.map((entity: any) => entity.id).sort()).toEqual(stateAt('task:s'))
    expect(b.entities.map((entity: any) => entity.id).sort()).toEqual(stateAt('task:s2'))
    expect(a.entities.every((entity: any) => entity.channelId === 'task:s' && entity.seq <= seq)).toBe(true)
    // Then every later event exactly once, in order, and nothing at or before the snapshot's seq.
    const want = expected(all.filter((event) => event.seq > seq), ['task:s', 'task:s2'])
    expect(want.length).toBeGreaterThan(0)
    await reader.until(() => reader.events.length >= want.length, 3000, 'the live events')
    expect(summary(reader.events)).toEqual(want)
    // The snapshot came first, before any event.
    expect(reader.blocks.findIndex((block) => block.event === 'snapshot')).toBeLessThan(reader.blocks.indexOf(reader.events[0]!))

    // With a cursor whose replay is smaller than the state: the replay is sent instead.
    const last = all.at(-1)!.seq
    const resumed = await stream(t.url, `?channel=task:s&channel=task:s2&snapshot=1&since=${last - 1}`)
    await resumed.until(() => resumed.events.length === 1, 3000, 'the replay')
    expect(resumed.blocks.map((block) => block.event ?? 'retry')).toEqual(['retry', 'ready', all.at(-1)!.type])
    expect(Number(resumed.events[0]!.id)).toBe(last)
  })

  test('keep-alive comments every sseKeepAliveMs on an idle stream', async () => {
    const t = await start({ sseKeepAliveMs: 40 })
    const reader = await stream(t.url, '?channel=task:k')
    await reader.until(() => reader.comments.length >= 3, 3000, 'three keep-alives')
    expect(reader.comments.slice(0, 3)).toEqual(['keep-alive', 'keep-alive', 'keep-alive'])
    expect(reader.raw).toContain('\n\n: keep-alive\n\n: keep-alive\n\n')
    // Keep-alives do not disturb events.
    await store(t.url, [ev(['task:k'])])
    await reader.until(() => reader.events.length === 1, 3000, 'the event')
  })
})

describe('requests refused', () => {
  test('bad queries are answered with JSON errors', async () => {
    const t = await start()
    const many = Array.from({ length: 101 }, (_, i) => `channel=task:${i}`).join('&')
    const cases: Array<[string, Record<string, string>, number, string, string]> = [
      ['', {}, 400, 'invalid_query', 'query.channel: name at least one channel (repeat channel= for more)'],
      ['?since=1', {}, 400, 'invalid_query', 'query.channel: name at least one channel (repeat channel= for more)'],
      ['?channel=nocolon', {}, 400, 'invalid_query', 'query.channel: channel id must be <kind>:<name> (kind: a-z 0-9 _ -, name: no control characters)'],
      ['?channel=task:a&channel=Task:b', {}, 400, 'invalid_query', 'query.channel: channel id must be <kind>:<name> (kind: a-z 0-9 _ -, name: no control characters)'],
      [`?channel=task:${'x'.repeat(300)}`, {}, 400, 'invalid_query', 'query.channel: channel id is longer than 256 characters'],
      [`?${many}`, {}, 400, 'invalid_query', 'query.channel: at most 100 channels per stream'],
      ['?channel=task:a&since=abc', {}, 400, 'invalid_query', 'query.since: must be a seq (a whole number ≥ 0)'],
      ['?channel=task:a&since=-1', {}, 400, 'invalid_query', 'query.since: must be a seq (a whole number ≥ 0)'],
      ['?channel=task:a&since=1.5', {}, 400, 'invalid_query', 'query.since: must be a seq (a whole number ≥ 0)'],
      ['?channel=task:a&since=1234567890123456', {}, 400, 'invalid_query', 'query.since: must be a seq (a whole number ≥ 0)'],
      ['?channel=task:a', { 'last-event-id': 'abc' }, 400, 'invalid_query', 'Last-Event-ID: must be a seq (a whole number ≥ 0)'],
      ['?channel=task:a&since=1', { 'last-event-id': '-3' }, 400, 'invalid_query', 'Last-Event-ID: must be a seq (a whole number ≥ 0)'],
      ['?channel=task:a&snapshot=yes', {}, 400, 'invalid_query', 'query.snapshot: must be 1, true, 0 or false'],
      [`?channel=task:a&since=1&epoch=${'e'.repeat(65)}`, {}, 400, 'invalid_query', 'query.epoch: at most 64 characters'],
      ['?channel=org:other', {}, 403, 'forbidden', 'query.channel "org:other" belongs to another organisation'],
      ['?channel=task:a&channel=org:other', {}, 403, 'forbidden', 'query.channel "org:other" belongs to another organisation'],
    ]
    for (const [query, headers, status, code, message] of cases) {
      const response = await fetch(`${t.url}/api/events/stream${query}`, { headers })
      expect({ query, status: response.status, type: response.headers.get('content-type'), body: await response.json() }).toEqual({
        query,
        status,
        type: 'application/json;charset=utf-8',
        body: { error: { code, message } },
      })
    }
    // The limits themselves are fine: 100 channels, the own org channel, snapshot=0 / false.
    const ok = Array.from({ length: 100 }, (_, i) => `channel=task:${i}`).join('&')
    for (const query of [`?${ok}`, '?channel=org:local', '?channel=task:a&snapshot=0', '?channel=task:a&snapshot=false', '?channel=task:a&since=0&epoch=x']) {
      const reader = await stream(t.url, query)
      expect([query, reader.response.status]).toEqual([query, 200])
      await reader.next((block) => block.event === 'ready', 3000)
      reader.close()
    }
    // A channel named twice is followed once.
    const twice = await stream(t.url, '?channel=task:a&channel=task:b&channel=task:a')
    expect(JSON.parse((await twice.next((block) => block.event === 'ready', 3000)).data!).channels).toEqual(['task:a', 'task:b'])
  })

  test('jwt mode: a Bearer header or ?token= opens a stream; no or a bad token → 401; ?token= works on this path only', async () => {
    const t = await start({ auth: { mode: 'jwt', secret: SECRET } })
    const token = await jwt('alice', 'acme')
    const header = await stream(t.url, '?channel=org:acme', { authorization: `Bearer ${token}` })
    expect(header.response.status).toBe(200)
    const query = await stream(t.url, `?channel=org:acme&token=${encodeURIComponent(token)}`)
    expect(query.response.status).toBe(200)
    await header.next((block) => block.event === 'ready', 3000)
    await query.next((block) => block.event === 'ready', 3000)
    // Events of the token's organisation reach both.
    const event = { ...makeEvent({ orgId: 'acme', userId: 'alice' }), channels: ['org:acme'] }
    expect((await ingest(t.url, event, { authorization: `Bearer ${token}` })).status).toBe(200)
    for (const reader of [header, query]) expect(JSON.parse((await reader.next((block) => block.id !== undefined, 3000)).data!).id).toBe(event.id)

    const refused = async (url: string, headers: Record<string, string> = {}) => {
      const response = await fetch(url, { headers })
      return { status: response.status, auth: response.headers.get('www-authenticate'), body: await response.json() }
    }
    expect(await refused(`${t.url}/api/events/stream?channel=org:acme`)).toEqual({
      status: 401,
      auth: 'Bearer',
      body: { error: { code: 'unauthorized', message: 'missing token' } },
    })
    expect(await refused(`${t.url}/api/events/stream?channel=org:acme&token=nonsense`)).toEqual({
      status: 401,
      auth: 'Bearer',
      body: { error: { code: 'unauthorized', message: 'invalid token' } },
    })
    expect(await refused(`${t.url}/api/events/stream?channel=org:acme`, { authorization: `Bearer ${await jwt('alice', 'acme', 'x'.repeat(40))}` })).toEqual({
      status: 401,
      auth: 'Bearer',
      body: { error: { code: 'unauthorized', message: 'invalid token' } },
    })
    expect(await refused(`${t.url}/api/events/since?since=0&token=${encodeURIComponent(token)}`)).toEqual({
      status: 401,
      auth: 'Bearer',
      body: { error: { code: 'unauthorized', message: 'missing token' } },
    })
    // Another organisation's channel: 403.
    const other = await fetch(`${t.url}/api/events/stream?channel=org:globex`, { headers: { authorization: `Bearer ${token}` } })
    expect(other.status).toBe(403)
  })

  test('streams per credential over maxStreamsPerCredential → 429 too_many_streams; a closed stream frees its place', async () => {
    const t = await start({ auth: { mode: 'jwt', secret: SECRET }, maxStreamsPerCredential: 2 })
    const alice = { authorization: `Bearer ${await jwt('alice', 'acme')}` }
    const bob = { authorization: `Bearer ${await jwt('bob', 'acme')}` }
    const first = await stream(t.url, '?channel=org:acme', alice)
    const second = await stream(t.url, '?channel=task:x', alice)
    expect([first.response.status, second.response.status]).toEqual([200, 200])
    const third = await fetch(`${t.url}/api/events/stream?channel=org:acme`, { headers: alice })
    expect({ status: third.status, retry: third.headers.get('retry-after'), body: await third.json() }).toEqual({
      status: 429,
      retry: '5',
      body: { error: { code: 'too_many_streams', message: 'at most 2 open streams per credential' } },
    })
    // Another credential (another user's token) has places of its own.
    const bobs = await stream(t.url, '?channel=org:acme', bob)
    expect(bobs.response.status).toBe(200)
    // Closing one of alice's streams frees a place (as soon as the server sees it go).
    first.close()
    let fourth: SseReader | undefined
    await waitFor(
      async () => {
        const attempt = await stream(t.url, '?channel=org:acme', alice)
        if (attempt.response.status === 200) fourth = attempt
        else {
          expect(attempt.response.status).toBe(429)
          attempt.close()
        }
        return fourth
      },
      3000,
      'a freed place',
    )
    await fourth!.next((block) => block.event === 'ready', 3000)
    expect((await fetch(`${t.url}/api/events/stream?channel=org:acme`, { headers: alice })).status).toBe(429)
  })
})

describe('resources', () => {
  test('a reader that stops reading is cut off with slow_consumer while another stream keeps receiving; it resumes from its last id', async () => {
    const warnings: any[] = []
    const logger = createLogger('warn', (line) => warnings.push(JSON.parse(line)))
    const t = await start({ slowConsumerBytes: 65_536, logger })
    // The slow one's body is not read until it was cut off.
    const stalled = new AbortController()
    const slow = await fetch(`${t.url}/api/events/stream?channel=task:f`, { signal: stalled.signal })
    aborts.push(stalled)
    const fast = await stream(t.url, '?channel=task:f')
    await fast.next((block) => block.event === 'ready', 3000)
    // Bursts of 24 KB (well under the limit), until the stalled reader's buffers are full (a few MB).
    const pad = 'x'.repeat(12_000)
    let published = 0
    // Paced, so the 250 ms sweep sees the stalled queue stay over the limit (a reading stream's
    // queue never does).
    for (let batch = 0; batch < 1000 && !warnings.some((line) => line.event === 'slow_consumers_closed'); batch++) {
      await t.server.publish(Array.from({ length: 2 }, () => ({ type: 'test.flood', payload: { pad }, channels: ['task:f'] })))
      published += 2
      await Bun.sleep(5)
    }
    expect(warnings.filter((line) => line.event === 'slow_consumers_closed')).toEqual([
      expect.objectContaining({ level: 'warn', closed: 1, transport: 'sse', limitBytes: 65_536 }),
    ])
    // The fast stream got everything so far and keeps receiving.
    await fast.until(() => fast.events.length === published, 5000, 'the flood on the fast stream')
    await t.server.publish({ type: 'test.after', payload: {}, channels: ['task:f'] })
    await fast.until(() => fast.events.length === published + 1, 3000, 'an event after the cut')
    const seqs = fast.events.map((block) => Number(block.id))
    expect(seqs).toEqual(seqs.map((_, i) => seqs[0]! + i))

    // The slow body ends with the slow_consumer event; what it got is a gap-free prefix.
    const text = await slow.text()
    expect(text.endsWith('event: slow_consumer\ndata: {"reason":"resume from your last event id"}\n\n')).toBe(true)
    const got = [...text.matchAll(/^id: (\d+)$/gm)].map((match) => Number(match[1]))
    expect(got.length).toBeGreaterThan(0)
    // Cut off once its queue stayed over the limit across a sweep: it never holds more than was published.
    expect(got.length).toBeLessThanOrEqual(published)
    expect(got).toEqual(seqs.slice(0, got.length))
    // Resuming from its last id delivers the rest.
    const resumed = await stream(t.url, '?channel=task:f', { 'last-event-id': String(got.at(-1)) })
    await resumed.until(() => resumed.events.length === published + 1 - got.length, 5000, 'the rest')
    expect(resumed.events.map((block) => Number(block.id))).toEqual(seqs.slice(got.length))
  })

  // The limit is for readers that stopped reading. One synchronous burst — a replay page of up to
  // 500 events, or one commit's events — is queued whole before the reader can take any of it, so
  // it must not count as a reader falling behind.
  test('a reader that keeps reading is not cut off by a replay bigger than slowConsumerBytes', async () => {
    const t = await start({ slowConsumerBytes: 65_536 })
    // 400 events of about 400 bytes: 160 KB of replay, under one page.
    const pad = 'y'.repeat(250)
    await store(t.url, Array.from({ length: 400 }, () => ev(['task:burst'], { payload: { pad } })))
    const reader = await stream(t.url, '?channel=task:burst&since=0')
    await reader.until(() => reader.events.length === 400 || reader.blocks.some((block) => block.event === 'slow_consumer'), 5000, 'the replay')
    expect(reader.blocks.filter((block) => block.event === 'slow_consumer')).toEqual([])
    expect(reader.events.length).toBe(400)
  })

  test('a reader that keeps reading is not cut off by one ingest batch bigger than slowConsumerBytes', async () => {
    const t = await start({ slowConsumerBytes: 65_536 })
    const reader = await stream(t.url, '?channel=task:batch')
    await reader.next((block) => block.event === 'ready', 3000)
    await waitFor(async () => (await getJson(`${t.url}/health`)).body.channels === 1, 3000, 'the stream listening')
    // One POST /ingest of 200 events of about 500 bytes (100 KB, a tenth of the default body limit).
    const pad = 'z'.repeat(400)
    await store(t.url, Array.from({ length: 200 }, () => ev(['task:batch'], { payload: { pad } })))
    await reader.until(() => reader.events.length === 200 || reader.blocks.some((block) => block.event === 'slow_consumer'), 5000, 'the batch')
    expect(reader.blocks.filter((block) => block.event === 'slow_consumer')).toEqual([])
    expect(reader.events.length).toBe(200)
  })

  test('/health counts the channels streams follow and drops them when the streams close', async () => {
    const t = await start()
    const channels = async () => (await getJson(`${t.url}/health`)).body.channels as number
    expect(await channels()).toBe(0)
    const first = await stream(t.url, '?channel=task:h1&channel=task:h2')
    await waitFor(async () => (await channels()) === 2, 3000, 'two channels')
    const second = await stream(t.url, '?channel=task:h1&channel=task:h3')
    await waitFor(async () => (await channels()) === 3, 3000, 'three channels')
    // A socket on a channel a stream follows does not count it twice.
    const socket = await TestSocket.open(t.wsUrl)
    sockets.push(socket)
    await socket.request({ type: 'subscribe', channelId: 'task:h3' }, 'subscribed')
    expect(await channels()).toBe(3)
    first.close()
    await waitFor(async () => (await channels()) === 2, 3000, 'task:h2 dropped')
    second.close()
    await waitFor(async () => (await channels()) === 1, 3000, 'only the socket channel left')
    socket.close()
    await waitFor(async () => (await channels()) === 0, 3000, 'no channel left')
  })

  test('shutdown ends open streams promptly', async () => {
    const t = await start()
    const readers = [await stream(t.url, '?channel=task:z'), await stream(t.url, '?channel=task:z&channel=task:y&since=0')]
    for (const reader of readers) await reader.next((block) => block.event === 'ready', 3000)
    const started = Date.now()
    await t.server.stop()
    for (const reader of readers) await reader.waitEnded(3000)
    expect(Date.now() - started).toBeLessThan(3000)
    expect(readers.map((reader) => reader.failed)).toEqual([undefined, undefined])
  })
})

describe('EventSource across server restarts', () => {
  test('the eventsource package reconnects by itself with Last-Event-ID across SIGTERM and SIGKILL: every event of both channels once, in seq order', async () => {
    const tmp = tempDir()
    dirs.push(tmp.cleanup)
    const env = { REALTIME_DB: join(tmp.dir, 'realtime.db') }
    let service = await spawnService(env)
    procs.push(service)
    const { port, url } = service
    const restart = async (signal: 'SIGTERM' | 'SIGKILL') => {
      service.proc.kill(signal)
      const code = await service.exited
      expect(code).toBe(signal === 'SIGTERM' ? 0 : 137)
      service = await spawnService({ ...env, REALTIME_PORT: String(port) })
      procs.push(service)
      expect(service.port).toBe(port)
    }

    // The Last-Event-ID each connection of the EventSource sent.
    const sent: Array<string | undefined> = []
    const recordingFetch: FetchLike = (input, init) => {
      sent.push(init.headers['Last-Event-ID'])
      return fetch(input, init) as ReturnType<FetchLike>
    }
    const source = new EventSource(`${url}/api/events/stream?channel=task:a&channel=task:b&since=0`, { fetch: recordingFetch })
    sources.push(source)
    const got: Array<{ seq: number; id: string; channelId: string; lastEventId: string }> = []
    let readies = 0
    source.addEventListener('ready', () => readies++)
    source.addEventListener('test.happened', (message) => {
      const frame = JSON.parse(message.data)
      got.push({ seq: frame.seq, id: frame.id, channelId: frame.channelId, lastEventId: message.lastEventId })
    })
    await waitFor(() => readies === 1, 5000, 'the first connection')

    // A bounded producer: each event retried (same id) until the service accepts it.
    const channelsOf = (i: number) => [['task:a'], ['task:b'], ['task:b', 'task:a'], ['task:c']][i % 4]!
    let produced = 0
    let refused = 0
    const produce = async (count: number, paceMs = 0) => {
      for (let n = 0; n < count; n++, produced++) {
        if (paceMs) await Bun.sleep(paceMs) // a steady producer, so that the stop falls mid-way
        const event = ev(channelsOf(produced))
        const deadline = Date.now() + 10_000
        for (;;) {
          const status = await ingest(url, event).then(
            (answer) => answer.status,
            () => 0,
          )
          if (status === 200) break
          refused++
          expect([0, 503]).toContain(status)
          if (Date.now() > deadline) throw new Error('the service did not come back')
          await Bun.sleep(20) // retry back-off while the service is down
        }
      }
    }
    await produce(20)
    // 20 events: 5 of task:c (not followed), 5 on both channels (a frame each): 20 frames.
    await waitFor(() => got.length === 20, 5000, 'the first events')
    let connections = 1
    for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
      // Stopped while events flow: the producer keeps going (retrying) while the service is down.
      const running = produce(40, 5)
      const from = got.length
      const refusedBefore = refused
      await waitFor(() => got.length >= from + 5, 5000, 'events flowing before the stop')
      await restart(signal)
      await running
      expect(refused).toBeGreaterThan(refusedBefore) // some events were sent while the service was down
      // The EventSource notices, waits the server's retry (2 s) and reconnects with Last-Event-ID.
      connections++
      await waitFor(() => readies === connections, 8000, `the reconnect after ${signal}`)
    }
    await produce(20)

    const all = await stored(url)
    expect(all.length).toBe(120)
    const want = expected(all, ['task:a', 'task:b'])
    expect(want.length).toBe(120)
    await waitFor(() => got.length >= want.length, 10_000, 'every event through the EventSource')
    expect(got.map(({ seq, id, channelId }) => ({ seq, id, channelId }))).toEqual(want)
    // The id (so the cursor) moves on with the last frame of each event.
    got.forEach((event, index) => {
      if (got[index + 1]?.seq !== event.seq) expect(event.lastEventId).toBe(String(event.seq))
    })
    // One connection per service run: the first without Last-Event-ID, each later one resuming.
    expect(readies).toBe(3)
    expect(sent.length).toBe(3)
    expect(sent[0]).toBeUndefined()
    expect(sent.slice(1).every((id) => id !== undefined && got.some((event) => String(event.seq) === id))).toBe(true)
    expect(Number(sent[2])).toBeGreaterThan(Number(sent[1]))
  }, 20_000)
})
