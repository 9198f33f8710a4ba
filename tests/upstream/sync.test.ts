/**
 * Upstream sync between two real Switchboard processes on loopback: a downstream with
 * REALTIME_UPSTREAM_URL polls an upstream's GET /api/events/since and ingests what it gets.
 */
import { afterEach, describe, expect, test } from 'bun:test'
import { getJson, ingest, makeEvent } from '../helpers/server'
import { TestSocket } from '../helpers/ws'
import { allEvents, asIngested, FAST, Fixture, freePort, sinceRequests, terminate, waitForEvents, waitForLog, waitForLogs } from './support'

const fixture = new Fixture()
const sockets: TestSocket[] = []

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  await fixture.cleanup()
})

async function subscribe(url: string, channelId: string): Promise<TestSocket> {
  const socket = await TestSocket.open(`${url.replace('http', 'ws')}/ws`)
  sockets.push(socket)
  await socket.request({ type: 'subscribe', channelId }, 'subscribed')
  return socket
}

async function ingestOk(url: string, body: unknown) {
  const answer = await ingest(url, body)
  expect(answer.status).toBe(200)
  return answer.body
}

describe('upstream sync', () => {
  test('events ingested upstream reach the downstream store, paged, unchanged, and its WebSocket subscribers', async () => {
    const upstream = await fixture.service({ REALTIME_DB: fixture.dbFile() })
    // A backlog larger than one page (1000): the first poll pages through it.
    const backlog = Array.from({ length: 1203 }, () => makeEvent())
    await ingestOk(upstream.url, { events: backlog.slice(0, 1000) })
    await ingestOk(upstream.url, { events: backlog.slice(1000) })

    const downstream = await fixture.service({ REALTIME_DB: fixture.dbFile(), REALTIME_UPSTREAM_URL: `${upstream.url}/`, ...FAST })
    expect(await waitForLog(downstream, (line) => line.event === 'upstream_started', 'upstream_started')).toMatchObject({ url: upstream.url, since: 0, epoch: null })
    const synced = await waitForEvents(downstream.url, 1203)
    expect(synced.map((event) => event.id)).toEqual(backlog.map((event) => event.id))
    expect(downstream.logs.filter((line) => line.event === 'upstream_synced').map((line) => line.events)).toEqual([1000, 203])

    // Live: a subscriber of the downstream gets what is ingested upstream, fields as sent.
    const socket = await subscribe(downstream.url, 'org:local')
    const special = [
      makeEvent({ key: 'thing:1', userId: 'someone', timestamp: 1_700_000_000_123 }),
      makeEvent({ channels: ['org:local', 'agent:bot'] }),
      makeEvent({ type: 'agent.spawned', payload: { agentId: 'a1', agentName: 'coder', taskId: 't1' } }),
    ]
    await ingestOk(upstream.url, { events: special })
    const frames = await socket.events('org:local', 3)
    expect(frames.map((frame) => frame.id)).toEqual(special.map((event) => event.id))
    expect(frames[0]).toMatchObject({ key: 'thing:1', userId: 'someone', timestamp: 1_700_000_000_123 })

    const upstreamEvents = (await allEvents(upstream.url)).map(asIngested)
    const downstreamEvents = await waitForEvents(downstream.url, 1206)
    expect(downstreamEvents.map(asIngested)).toEqual(upstreamEvents)
    expect(downstreamEvents.find((event) => event.type === 'agent.spawned').channels).toEqual(['org:local', 'agent:coder', 'task:t1'])

    expect(await terminate(downstream)).toBe(0)
    expect(downstream.logs.find((line) => line.event === 'upstream_stopped')).toMatchObject({ since: 1206 })
    expect(await terminate(upstream)).toBe(0)
  })

  test('an event both pushed to the downstream and pulled from the upstream is stored and delivered once', async () => {
    const upstream = await fixture.service({ REALTIME_DB: fixture.dbFile() })
    const downstream = await fixture.service({ REALTIME_DB: fixture.dbFile(), REALTIME_UPSTREAM_URL: upstream.url, ...FAST })
    const socket = await subscribe(downstream.url, 'org:local')
    const deliveredIds: string[] = []
    socket.ws.addEventListener('message', (message) => {
      const frame = JSON.parse(String(message.data))
      if (typeof frame.seq === 'number') deliveredIds.push(frame.id)
    })

    // Pushed first, then pulled: the poll finds a duplicate.
    const pushedFirst = makeEvent()
    expect(await ingestOk(downstream.url, pushedFirst)).toEqual({ stored: 1, duplicates: 0 })
    await ingestOk(upstream.url, pushedFirst)
    const marker = makeEvent()
    await ingestOk(upstream.url, marker)
    await socket.next((frame) => frame.id === marker.id)
    await waitForLog(downstream, (line) => line.event === 'upstream_synced' && line.duplicates === 1, 'a poll that found the duplicate')

    // Pulled first, then pushed: the push is the duplicate.
    const pulledFirst = makeEvent()
    await ingestOk(upstream.url, pulledFirst)
    await socket.next((frame) => frame.id === pulledFirst.id)
    expect(await ingestOk(downstream.url, pulledFirst)).toEqual({ stored: 0, duplicates: 1 })

    const events = await waitForEvents(downstream.url, 3)
    expect(events.map((event) => event.id)).toEqual([pushedFirst.id, marker.id, pulledFirst.id])
    // One more round trip through the upstream, then no frame may have come twice.
    const last = makeEvent()
    await ingestOk(upstream.url, last)
    await socket.next((frame) => frame.id === last.id)
    expect(deliveredIds).toEqual([pushedFirst, marker, pulledFirst, last].map((event) => event.id))
  })

  test('a restarted downstream resumes from its persisted cursor: nothing re-fetched from 0, nothing lost or duplicated', async () => {
    const upstream = await fixture.service({ REALTIME_DB: fixture.dbFile() })
    const epoch = upstream.logs.find((line) => line.event === 'listening').epoch
    const proxy = fixture.proxy(upstream.url)
    const dbFile = fixture.dbFile()
    const env = { REALTIME_DB: dbFile, REALTIME_UPSTREAM_URL: proxy.url, ...FAST }

    const first = await fixture.service(env)
    const before = Array.from({ length: 5 }, () => makeEvent())
    await ingestOk(upstream.url, { events: before })
    await waitForEvents(first.url, 5)
    expect(await terminate(first)).toBe(0)
    const stopped = first.logs.find((line) => line.event === 'upstream_stopped')
    expect(stopped).toMatchObject({ since: 5, epoch })

    // Ingested upstream while the downstream is down.
    const during = Array.from({ length: 5 }, () => makeEvent())
    await ingestOk(upstream.url, { events: during })

    const seen = proxy.requests.length
    const second = await fixture.service(env)
    expect(await waitForLog(second, (line) => line.event === 'upstream_started', 'upstream_started')).toMatchObject({ since: 5, epoch })
    const events = await waitForEvents(second.url, 10)
    expect(events.map((event) => event.id)).toEqual([...before, ...during].map((event) => event.id))
    const after = sinceRequests(proxy, seen)
    expect(after[0]).toEqual({ since: '5', epoch })
    expect(after.some((request) => request.since === '0')).toBe(false)
    await waitForLog(second, (line) => line.event === 'upstream_synced' && line.seq === 10, 'the cursor at 10')
    expect(second.logs.filter((line) => line.event === 'upstream_synced').map((line) => [line.stored, line.duplicates])).toEqual([[5, 0]])
  })

  test('an upstream that goes away and comes back with a new database (new epoch): failures backed off, then sync continues', async () => {
    const first = await fixture.service({ REALTIME_DB: fixture.dbFile() })
    const firstEpoch = first.logs.find((line) => line.event === 'listening').epoch
    const proxy = fixture.proxy(first.url)
    const downstream = await fixture.service({ REALTIME_DB: fixture.dbFile(), REALTIME_UPSTREAM_URL: proxy.url, ...FAST })
    const old = Array.from({ length: 3 }, () => makeEvent())
    await ingestOk(first.url, { events: old })
    await waitForEvents(downstream.url, 3)

    // The upstream goes away: its gateway answers 502.
    expect(await terminate(first)).toBe(0)
    const mark = downstream.logs.length
    const failures = await waitForLogs(downstream, (line) => line.event === 'upstream_failed', 4, 'upstream_failed', mark)
    expect(failures.every((line) => line.level === 'warn' && line.status === 502)).toBe(true)
    const waits = failures.map((line) => line.retryInMs)
    // Idle polls already backed off; failures keep the wait at the 200 ms cap (± 10 ms jitter).
    for (const wait of waits) expect(wait).toBeGreaterThanOrEqual(90)
    for (const wait of waits) expect(wait).toBeLessThanOrEqual(200)
    expect(waits.at(-1)).toBeGreaterThanOrEqual(190)

    // Back, with a fresh database: its seqs restart below the downstream's cursor.
    const second = await fixture.service({ REALTIME_DB: fixture.dbFile() })
    const secondEpoch = second.logs.find((line) => line.event === 'listening').epoch
    expect(secondEpoch).not.toBe(firstEpoch)
    const fresh = Array.from({ length: 2 }, () => makeEvent())
    await ingestOk(second.url, { events: [old[0], ...fresh] }) // one already known downstream
    proxy.target = second.url

    const changed = await waitForLog(downstream, (line) => line.event === 'upstream_epoch_changed', 'upstream_epoch_changed', mark)
    expect(changed).toMatchObject({ level: 'warn', from: firstEpoch, to: secondEpoch, since: 3 })
    await waitForLog(downstream, (line) => line.event === 'upstream_recovered', 'upstream_recovered', mark)
    const events = await waitForEvents(downstream.url, 5)
    expect(events.map((event) => event.id)).toEqual([...old, ...fresh].map((event) => event.id))
    await waitForLog(downstream, (line) => line.event === 'upstream_synced' && line.epoch === secondEpoch && line.duplicates === 1, 'the new epoch synced', mark)

    // The cursor now belongs to the new database.
    const newer = makeEvent()
    const requestsBefore = proxy.requests.length
    await ingestOk(second.url, newer)
    await waitForEvents(downstream.url, 6)
    expect(sinceRequests(proxy, requestsBefore).at(-1)).toMatchObject({ epoch: secondEpoch })
  })

  test('an unreachable upstream (connection refused) is logged and retried with backoff until it listens', async () => {
    const port = freePort()
    const downstream = await fixture.service({ REALTIME_DB: fixture.dbFile(), REALTIME_UPSTREAM_URL: `http://127.0.0.1:${port}`, ...FAST })
    const failures = await waitForLogs(downstream, (line) => line.event === 'upstream_failed', 3, 'upstream_failed')
    expect(failures[0]).toMatchObject({ level: 'warn', url: `http://127.0.0.1:${port}`, failures: 1 })
    expect(failures[0].status).toBeUndefined()
    expect(typeof failures[0].message).toBe('string')
    expect(failures[2].retryInMs).toBeGreaterThan(failures[0].retryInMs)
    expect((await getJson(`${downstream.url}/health`)).status).toBe(200)

    const upstream = await fixture.service({ REALTIME_DB: fixture.dbFile(), REALTIME_PORT: String(port) })
    expect(upstream.port).toBe(port)
    const event = makeEvent()
    await ingestOk(upstream.url, event)
    const [synced] = await waitForEvents(downstream.url, 1)
    expect(synced.id).toBe(event.id)
    await waitForLog(downstream, (line) => line.event === 'upstream_recovered', 'upstream_recovered')
  })
})
