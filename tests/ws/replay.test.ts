import { afterEach, describe, expect, test } from 'bun:test'
import type { RealtimeServerOptions } from '../../src/server'
import { getJson, ingest, makeEvent, startServer, type TestServer } from '../helpers/server'
import { TestSocket } from '../helpers/ws'

/**
 * `subscribe` with `since`: `subscribed` first, then the stored events of the channel after the
 * cursor in ascending order, then live ones, with no gap and no duplicate — also while events are
 * being ingested during a multi-page replay. Plus the `truncated` cases and stopping a replay.
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

/** A socket whose every frame is also logged in arrival order (TestSocket.next consumes frames). */
async function open(server: TestServer): Promise<TestSocket & { log: any[] }> {
  const socket = (await TestSocket.open(server.wsUrl)) as TestSocket & { log: any[] }
  socket.log = []
  socket.ws.addEventListener('message', (message) => socket.log.push(JSON.parse(String(message.data))))
  sockets.push(socket)
  return socket
}

async function subscribe(socket: TestSocket, channelId: string, extra: Record<string, unknown> = {}) {
  socket.send({ type: 'subscribe', channelId, ...extra })
  return socket.next((f) => f.type === 'subscribed' && f.channelId === channelId)
}

async function roundTrip(socket: TestSocket): Promise<void> {
  expect(await socket.request({ type: 'ping' }, 'pong')).toEqual({ type: 'pong' })
}

const seqsOf = (frames: any[]) => frames.map((f) => f.seq)
const eventFrames = (socket: TestSocket) => socket.frames.filter((f) => typeof f.seq === 'number')

/** Every stored seq of a channel, via GET /api/events/since (paged). */
async function storedSeqs(server: TestServer, channel: string): Promise<number[]> {
  const seqs: number[] = []
  let since = 0
  for (let page = 0; page < 100; page++) {
    const { status, body } = await getJson(`${server.url}/api/events/since?channel=${encodeURIComponent(channel)}&since=${since}&limit=1000`)
    expect(status).toBe(200)
    seqs.push(...body.events.map((e: any) => e.seq))
    since = body.nextSeq
    if (!body.hasMore) return seqs
  }
  throw new Error('too many pages')
}

async function ingestAll(server: TestServer, events: unknown[]): Promise<void> {
  for (let i = 0; i < events.length; i += 1000) {
    const batch = events.slice(i, i + 1000)
    const { status, body } = await ingest(server.url, { events: batch })
    expect(status).toBe(200)
    expect(body).toEqual({ stored: batch.length, duplicates: 0 })
  }
}

describe('subscribe with since', () => {
  test('subscribed first, then stored events after since ascending, then live ones', async () => {
    const server = await start()
    // agent:r has seqs 1, 3, 4, 6; other channels in between.
    await ingestAll(server, [
      makeEvent({ channels: ['agent:r'] }),
      makeEvent({ channels: ['agent:other'] }),
      makeEvent({ channels: ['agent:r', 'task:x'] }),
      makeEvent({ channels: ['agent:r'] }),
      makeEvent({ channels: ['task:x'] }),
      makeEvent({ channels: ['agent:r'] }),
    ])
    const socket = await open(server)
    socket.send({ type: 'subscribe', channelId: 'agent:r', since: 0 })
    const replayed = await socket.events('agent:r', 4)
    expect(seqsOf(replayed)).toEqual([1, 3, 4, 6])
    expect(replayed.every((f) => f.channelId === 'agent:r')).toBe(true)
    expect(socket.log[0]).toEqual({ type: 'subscribed', channelId: 'agent:r', epoch: expect.any(String), since: 0 })
    expect(seqsOf(socket.log.slice(1))).toEqual([1, 3, 4, 6])

    const live = makeEvent({ channels: ['agent:r'] })
    await ingest(server.url, live)
    const [frame] = await socket.events('agent:r', 1)
    expect(frame).toEqual({ ...live, seq: 7, channelId: 'agent:r', channels: undefined })
    await roundTrip(socket)
    expect(eventFrames(socket)).toEqual([])

    // A cursor in the middle: only what follows it.
    const mid = await open(server)
    const subscribed = await subscribe(mid, 'agent:r', { since: 3 })
    expect(subscribed).toEqual({ type: 'subscribed', channelId: 'agent:r', epoch: expect.any(String), since: 3 })
    expect(seqsOf(await mid.events('agent:r', 3))).toEqual([4, 6, 7])
    await roundTrip(mid)
    expect(eventFrames(mid)).toEqual([])

    // A cursor at the newest seq: nothing replayed, not truncated, live events follow.
    const tail = await open(server)
    expect(await subscribe(tail, 'agent:r', { since: 7 })).toEqual({ type: 'subscribed', channelId: 'agent:r', epoch: subscribed.epoch, since: 7 })
    await roundTrip(tail)
    expect(eventFrames(tail)).toEqual([])
    await ingest(server.url, makeEvent({ channels: ['agent:r'] }))
    expect(seqsOf(await tail.events('agent:r', 1))).toEqual([8])
  })

  test('a replay of more than one page is complete and in order', async () => {
    const server = await start()
    const events = Array.from({ length: 1250 }, (_, i) => makeEvent({ channels: i % 5 === 0 ? ['task:noise'] : ['agent:long'] }))
    await ingestAll(server, events)
    const expected = await storedSeqs(server, 'agent:long')
    expect(expected.length).toBe(1000)
    const socket = await open(server)
    socket.send({ type: 'subscribe', channelId: 'agent:long', since: 0 })
    const frames = await socket.events('agent:long', 1000)
    expect(socket.log[0].type).toBe('subscribed')
    expect(seqsOf(frames)).toEqual(expected)
    await roundTrip(socket)
    expect(eventFrames(socket)).toEqual([])
  })

  test('since-replay racing concurrent ingest: every socket gets exactly the channel seqs, no gap, no duplicate', async () => {
    const server = await start()
    const CHANNEL = 'agent:race'
    const channelsFor = (i: number) => (i % 3 === 0 ? ['agent:noise'] : i % 3 === 1 ? [CHANNEL] : [CHANNEL, 'task:also'])

    // A live subscriber from the start sees every event as it is published.
    const watcher = await open(server)
    await subscribe(watcher, CHANNEL)

    // 1500 stored before the race (1000 on the channel: two full replay pages).
    let n = 0
    const preload = Array.from({ length: 1500 }, () => makeEvent({ channels: channelsFor(n++) }))
    await ingestAll(server, preload)

    // 1500 more while sockets subscribe with since=0 at different moments. Two producers run
    // concurrently: POST /ingest batches, and in-process publish batches.
    const racers: Array<Promise<{ socket: TestSocket & { log: any[] }; since: number }>> = []
    const subscribeRacer = (since: number) =>
      racers.push(
        (async () => {
          const socket = await open(server)
          socket.send({ type: 'subscribe', channelId: CHANNEL, since })
          return { socket, since }
        })(),
      )
    const BATCHES = 15
    const BATCH = 50
    const httpProducer = (async () => {
      for (let b = 0; b < BATCHES; b++) {
        if (b === 0 || b === 4 || b === 9 || b === 13) subscribeRacer(0)
        if (b === 7) subscribeRacer(700)
        const batch = Array.from({ length: BATCH }, () => makeEvent({ channels: channelsFor(n++) }))
        const { body } = await ingest(server.url, { events: batch })
        expect(body).toEqual({ stored: BATCH, duplicates: 0 })
      }
    })()
    const publishProducer = (async () => {
      for (let b = 0; b < BATCHES; b++) {
        if (b === 2 || b === 11) subscribeRacer(0)
        const batch = Array.from({ length: BATCH }, () => ({ type: 'test.published', payload: { b }, channels: channelsFor(n++) }))
        expect(await server.server.publish(batch)).toEqual({ stored: BATCH, duplicates: 0 })
      }
    })()
    await Promise.all([httpProducer, publishProducer])
    const subscribed = await Promise.all(racers)
    expect(subscribed.length).toBe(7)

    // A last event on the channel marks the end of the stream for every socket.
    const sentinel = makeEvent({ channels: [CHANNEL] })
    await ingest(server.url, sentinel)
    const all = await storedSeqs(server, CHANNEL)
    expect(all.length).toBe(2001)
    expect(all.at(-1)).toBeGreaterThan(all.at(-2)!)

    const watched = await watcher.events(CHANNEL, all.length)
    expect(seqsOf(watched)).toEqual(all)

    for (const { socket, since } of subscribed) {
      const expected = all.filter((seq) => seq > since)
      const frames = await socket.events(CHANNEL, expected.length)
      expect(frames.at(-1).id).toBe(sentinel.id)
      expect(seqsOf(frames)).toEqual(expected)
      expect(frames.every((f) => f.channelId === CHANNEL)).toBe(true)
      // subscribed came before every event frame, and was not truncated.
      expect(socket.log[0]).toEqual({ type: 'subscribed', channelId: CHANNEL, epoch: expect.any(String), since })
      await roundTrip(socket)
      expect(eventFrames(socket)).toEqual([])
    }
    await roundTrip(watcher)
    expect(eventFrames(watcher)).toEqual([])
  })
})

describe('truncated', () => {
  async function seedThree(server: TestServer) {
    await ingestAll(server, [
      makeEvent({ channels: ['agent:e'] }),
      makeEvent({ channels: ['agent:e'] }),
      makeEvent({ channels: ['agent:e'] }),
    ])
  }

  test('an epoch from another database: truncated:true and a replay from the start', async () => {
    const server = await start()
    await seedThree(server)
    const probe = await open(server)
    const epoch = (await subscribe(probe, 'agent:probe')).epoch

    const socket = await open(server)
    socket.send({ type: 'subscribe', channelId: 'agent:e', since: 2, epoch: 'another-database-epoch' })
    expect(await socket.next()).toEqual({ type: 'subscribed', channelId: 'agent:e', epoch, since: 0, truncated: true })
    expect(seqsOf(await socket.events('agent:e', 3))).toEqual([1, 2, 3])
    await ingest(server.url, makeEvent({ channels: ['agent:e'] }))
    expect(seqsOf(await socket.events('agent:e', 1))).toEqual([4])
    await roundTrip(socket)
    expect(eventFrames(socket)).toEqual([])

    // The right epoch: no truncation, replay after the cursor.
    const resumed = await open(server)
    resumed.send({ type: 'subscribe', channelId: 'agent:e', since: 2, epoch })
    expect(await resumed.next()).toEqual({ type: 'subscribed', channelId: 'agent:e', epoch, since: 2 })
    expect(seqsOf(await resumed.events('agent:e', 2))).toEqual([3, 4])
  })

  test('since greater than the last seq: truncated:true and a replay from the start', async () => {
    const server = await start()
    await seedThree(server)
    const socket = await open(server)
    socket.send({ type: 'subscribe', channelId: 'agent:e', since: 999 })
    const subscribed = await socket.next()
    expect(subscribed).toEqual({ type: 'subscribed', channelId: 'agent:e', epoch: expect.any(String), since: 0, truncated: true })
    expect(seqsOf(await socket.events('agent:e', 3))).toEqual([1, 2, 3])
    await ingest(server.url, makeEvent({ channels: ['agent:e'] }))
    expect(seqsOf(await socket.events('agent:e', 1))).toEqual([4])
    await roundTrip(socket)
    expect(eventFrames(socket)).toEqual([])
  })

  test('pruned history: truncated:true, replay of what is left; a cursor at the pruned edge is whole', async () => {
    const server = await start({ retentionHours: 1 })
    const old = Date.now() - 2 * 3_600_000
    await ingestAll(server, [
      makeEvent({ channels: ['agent:p'], timestamp: old }), // 1
      makeEvent({ channels: ['agent:p'], timestamp: old }), // 2
      makeEvent({ channels: ['task:q'], timestamp: old }), // 3
      makeEvent({ channels: ['agent:p'], timestamp: old + 1 }), // 4
      makeEvent({ channels: ['agent:p'] }), // 5
      makeEvent({ channels: ['task:fresh'] }), // 6
      makeEvent({ channels: ['agent:p'] }), // 7
    ])
    expect(await server.server.prune()).toBe(4)
    expect((await getJson(`${server.url}/health`)).body.eventsStored).toBe(3)

    const socket = await open(server)
    socket.send({ type: 'subscribe', channelId: 'agent:p', since: 0 })
    expect(await socket.next()).toEqual({ type: 'subscribed', channelId: 'agent:p', epoch: expect.any(String), since: 0, truncated: true })
    expect(seqsOf(await socket.events('agent:p', 2))).toEqual([5, 7])

    // A cursor inside the pruned range is truncated too.
    const inside = await open(server)
    inside.send({ type: 'subscribe', channelId: 'agent:p', since: 2 })
    expect((await inside.next()).truncated).toBe(true)
    expect(seqsOf(await inside.events('agent:p', 2))).toEqual([5, 7])

    // The newest pruned seq of the channel is 4: from there nothing is missing.
    const edge = await open(server)
    edge.send({ type: 'subscribe', channelId: 'agent:p', since: 4 })
    expect(await edge.next()).toEqual({ type: 'subscribed', channelId: 'agent:p', epoch: expect.any(String), since: 4 })
    expect(seqsOf(await edge.events('agent:p', 2))).toEqual([5, 7])

    // A channel that lost nothing is not truncated.
    const fresh = await open(server)
    fresh.send({ type: 'subscribe', channelId: 'task:fresh', since: 0 })
    expect(await fresh.next()).toEqual({ type: 'subscribed', channelId: 'task:fresh', epoch: expect.any(String), since: 0 })
    expect(seqsOf(await fresh.events('task:fresh', 1))).toEqual([6])

    for (const s of [socket, inside, edge, fresh]) {
      await roundTrip(s)
      expect(eventFrames(s)).toEqual([])
    }
  })
})

describe('resubscribe and unsubscribe', () => {
  test('subscribing again to the same channel restarts it, and live events still arrive once', async () => {
    const server = await start()
    await ingestAll(server, [makeEvent({ channels: ['agent:s'] }), makeEvent({ channels: ['agent:s'] })])
    const socket = await open(server)
    await subscribe(socket, 'agent:s', { since: 0 })
    expect(seqsOf(await socket.events('agent:s', 2))).toEqual([1, 2])

    // Again with since=0: the whole replay again.
    await subscribe(socket, 'agent:s', { since: 0 })
    expect(seqsOf(await socket.events('agent:s', 2))).toEqual([1, 2])
    await ingest(server.url, makeEvent({ channels: ['agent:s'] }))
    expect(seqsOf(await socket.events('agent:s', 1))).toEqual([3])
    await roundTrip(socket)
    expect(eventFrames(socket)).toEqual([])

    // Again with a cursor: only what follows it.
    await subscribe(socket, 'agent:s', { since: 2 })
    expect(seqsOf(await socket.events('agent:s', 1))).toEqual([3])
    // Again without since: no replay, live only, once.
    await subscribe(socket, 'agent:s')
    await ingest(server.url, makeEvent({ channels: ['agent:s'] }))
    expect(seqsOf(await socket.events('agent:s', 1))).toEqual([4])
    await roundTrip(socket)
    expect(eventFrames(socket)).toEqual([])

    const stats = await socket.request({ type: 'request', id: 's', action: 'stats' }, 'response')
    expect(stats.data.subscriptions).toEqual(['agent:s'])
    expect(stats.data.channels).toBe(1)
  })

  test('unsubscribing during a long replay stops it, and no live events follow', async () => {
    const server = await start()
    const TOTAL = 3000
    await ingestAll(server, Array.from({ length: TOTAL }, () => makeEvent({ channels: ['agent:big'] })))
    const socket = await open(server)
    await subscribe(socket, 'task:control')

    socket.send({ type: 'subscribe', channelId: 'agent:big', since: 0 })
    socket.send({ type: 'unsubscribe', channelId: 'agent:big' })
    expect(await socket.next((f) => f.type === 'unsubscribed')).toEqual({ type: 'unsubscribed', channelId: 'agent:big' })
    await roundTrip(socket)
    await Bun.sleep(150) // only to prove that no further replay page arrives
    await roundTrip(socket)

    const replayed = socket.log.filter((f) => typeof f.seq === 'number')
    expect(replayed.length).toBeLessThan(TOTAL)
    // What was sent is an in-order prefix, and all of it came before `unsubscribed`.
    expect(seqsOf(replayed)).toEqual(Array.from({ length: replayed.length }, (_, i) => i + 1))
    const unsubscribedAt = socket.log.findIndex((f) => f.type === 'unsubscribed')
    expect(socket.log.slice(unsubscribedAt).filter((f) => typeof f.seq === 'number')).toEqual([])

    // Live events of the channel do not arrive either (the control channel proves delivery works).
    await ingest(server.url, { events: [makeEvent({ channels: ['agent:big'] }), makeEvent({ channels: ['task:control'] })] })
    expect(seqsOf(await socket.events('task:control', 1))).toEqual([TOTAL + 2])
    await roundTrip(socket)
    expect(socket.log.slice(unsubscribedAt).filter((f) => f.channelId === 'agent:big' && f.type !== 'unsubscribed')).toEqual([])

    const stats = await socket.request({ type: 'request', id: 's', action: 'stats' }, 'response')
    expect(stats.data.subscriptions).toEqual(['task:control'])
    expect(stats.data.channels).toBe(1)
  })
})
