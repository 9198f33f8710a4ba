import { afterEach, describe, expect, test } from 'bun:test'
import { type Clock, createRealtimeClient, type KnownFrame, type RealtimeClient, type RealtimeClientOptions } from '../../src/client'
import { startProxy, type Proxy } from '../helpers/proxy'
import { ingest, makeEvent, startServer, type TestServer, waitFor } from '../helpers/server'

/**
 * The polling fallback: when the WebSocket cannot be established (a proxy that refuses upgrades),
 * the client polls GET /api/events/since per channel through the same handlers, backing off while
 * idle, and goes back to the socket once upgrades work, without gap or duplicate across the switch.
 */

const FAST = {
  heartbeat: false,
  reconnect: { baseMs: 20, maxMs: 200, jitterMs: 10 },
  ping: { intervalMs: 50, timeoutMs: 100 },
  polling: { afterMs: 100, minMs: 50, maxMs: 200 },
  // These tests are about polling; Server-Sent Events (tried first by default) have their own.
  sse: false,
} satisfies Partial<RealtimeClientOptions>

const clients: RealtimeClient[] = []
let server: TestServer | undefined
let proxy: Proxy | undefined

afterEach(async () => {
  for (const client of clients.splice(0)) client.close()
  await proxy?.stop()
  await server?.close()
  proxy = server = undefined
})

/** A real server behind a proxy that refuses WebSocket upgrades. */
async function blocked(): Promise<{ server: TestServer; proxy: Proxy }> {
  server = await startServer()
  proxy = startProxy(server.url)
  proxy.refuseUpgrades = true
  return { server, proxy }
}

function client(url: string, options: Partial<RealtimeClientOptions> = {}): RealtimeClient {
  const created = createRealtimeClient({ url, ...FAST, ...options })
  clients.push(created)
  return created
}

/** The real clock, logging the delay of every timer the client schedules and tracking live ones. */
function recordingClock() {
  const delays: number[] = []
  const live = new Map<unknown, number>()
  const clock: Clock = {
    now: () => Date.now(),
    random: () => Math.random(),
    setTimeout(fn, ms) {
      delays.push(ms)
      const handle = setTimeout(() => {
        live.delete(handle)
        fn()
      }, ms)
      live.set(handle, ms)
      return handle
    },
    clearTimeout(handle) {
      live.delete(handle)
      clearTimeout(handle as ReturnType<typeof setTimeout>)
    },
  }
  return { clock, delays, live }
}

function events(channel: string, count: number) {
  return Array.from({ length: count }, () => ({
    ...makeEvent({ type: 'task.status_changed', payload: { taskId: 't', oldStatus: 'a', newStatus: 'b' } }),
    channels: [channel],
  }))
}

async function store(url: string, batch: unknown[]): Promise<void> {
  for (const event of batch) expect((await ingest(url, event)).status).toBe(200)
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

const pollsOf = (proxy: Proxy) => proxy.requests.filter((path) => path === '/api/events/since').length

describe('polling fallback', () => {
  test('upgrades refused: polling delivers through the same handlers, then the client returns to the WebSocket', async () => {
    const { server, proxy } = await blocked()
    const stored = events('task:p', 3)
    await store(server.url, stored)
    const { clock, live } = recordingClock()
    const subject = client(proxy.url, { clock, ping: { intervalMs: 1000, timeoutMs: 1000 } })
    const replayed = recorder(subject, 'task:p', { since: 0 })
    const liveOnly = recorder(subject, 'task:live')
    await waitFor(() => subject.state.status === 'open' && subject.state.transport === 'polling', 3000, 'polling')
    await waitFor(() => replayed.length === 3, 3000, 'the stored events, by polling')
    expect(proxy.bridged).toBe(0)

    const polled = [...events('task:p', 5), ...events('task:live', 2)]
    await store(server.url, polled)
    await waitFor(() => replayed.length === 8 && liveOnly.length === 2, 3000, 'new events, by polling')

    // Upgrades work again while events keep coming: the switch loses and repeats nothing.
    const during = events('task:p', 40)
    proxy.refuseUpgrades = false
    for (const [i, event] of during.entries()) {
      expect((await ingest(server.url, event)).status).toBe(200)
      if (i === 20) await waitFor(() => subject.state.transport === 'websocket', 3000, 'back on the WebSocket')
    }
    const after = [...events('task:p', 3), ...events('task:live', 1)]
    await store(server.url, after)
    await waitFor(() => replayed.length >= 51 && liveOnly.length >= 3, 3000, 'every event')

    const all = [...stored, ...polled, ...during, ...after]
    expect(replayed.map((e) => e.id)).toEqual(all.filter((e) => e.channels[0] === 'task:p').map((e) => e.id))
    expect(liveOnly.map((e) => e.id)).toEqual(all.filter((e) => e.channels[0] === 'task:live').map((e) => e.id))
    expect(liveOnly.every((e) => e.channelId === 'task:live')).toBe(true)
    expect(subject.state).toMatchObject({ status: 'open', transport: 'websocket' })
    expect(proxy.bridged).toBe(1)
    expect(pollsOf(proxy)).toBeGreaterThan(0)
    // Polling stopped: no poll timer (50, 100 or 200 ms; the ping runs at 1000) is left.
    expect([...live.values()].filter((ms) => ms < 1000)).toEqual([])
  })

  test('upgrades held unanswered: the client gives up on the handshake, polls, and returns to the WebSocket', async () => {
    const { server, proxy } = await blocked()
    proxy.refuseUpgrades = false
    proxy.hangUpgrades = true
    const subject = client(proxy.url)
    const errors = new Set<string | null>()
    subject.onState((state) => errors.add(state.lastError))
    const got = recorder(subject, 'task:h', { since: 0 })
    const first = events('task:h', 2)
    await store(server.url, first)
    // Each attempt is given up after ping.timeoutMs (100 ms); after polling.afterMs, polling starts.
    await waitFor(() => subject.state.transport === 'polling' && got.length === 2, 3000, 'polling')
    expect(subject.state.lastError).toBe('closed 4000: connect timeout')
    await waitFor(() => proxy.upgradeAttempts >= 2, 3000, 'a second attempt after the first was given up')
    proxy.hangUpgrades = false
    await waitFor(() => subject.state.transport === 'websocket', 3000, 'back on the WebSocket')
    const second = events('task:h', 2)
    await store(server.url, second)
    await waitFor(() => got.length === 4, 3000, 'events over the WebSocket')
    expect(got.map((e) => e.id)).toEqual([...first, ...second].map((e) => e.id))
    expect([...errors]).toEqual([null, 'closed 4000: connect timeout'])
  })

  test('a live-only subscription starts polling at the newest event, not at the beginning', async () => {
    const { server, proxy } = await blocked()
    await store(server.url, events('task:old', 4))
    const subject = client(proxy.url)
    const got = recorder(subject, 'task:old')
    await waitFor(() => subject.state.transport === 'polling' && pollsOf(proxy) >= 2, 3000, 'two polls')
    const fresh = events('task:old', 2)
    await store(server.url, fresh)
    await waitFor(() => got.length >= 2, 3000, 'the new events')
    expect(got.map((e) => e.id)).toEqual(fresh.map((e) => e.id))
  })

  test('while polling, the status stays open across the reconnect attempts that keep failing', async () => {
    const { proxy } = await blocked()
    const subject = client(proxy.url)
    subject.subscribe('task:s', () => {})
    await waitFor(() => subject.state.status === 'open' && subject.state.transport === 'polling', 3000, 'polling')
    const seen: string[] = []
    subject.onState((state) => seen.push(`${state.status}/${state.transport}`))
    const attempts = proxy.upgradeAttempts
    await waitFor(() => proxy.upgradeAttempts >= attempts + 3, 3000, 'three more refused upgrades')
    expect(new Set(seen)).toEqual(new Set(['open/polling']))
  })

  test('idle polls back off from minMs to maxMs; a delivery brings them back to minMs', async () => {
    const { server, proxy } = await blocked()
    const { clock, delays } = recordingClock()
    // Reconnect attempts once a second, so that polls (20, 40, 80 ms) are the only short timers.
    const subject = client(proxy.url, {
      clock,
      ping: false,
      reconnect: { baseMs: 1000, maxMs: 1000, jitterMs: 0 },
      polling: { afterMs: 10, minMs: 20, maxMs: 80 },
    })
    const got = recorder(subject, 'task:b')
    const polls = () => delays.filter((ms) => ms === 20 || ms === 40 || ms === 80)
    await waitFor(() => polls().length >= 3, 3000, 'three idle polls')
    expect(polls().slice(0, 3)).toEqual([40, 80, 80])
    await store(server.url, events('task:b', 1))
    await waitFor(() => got.length === 1, 3000, 'the event')
    const from = polls().length
    await waitFor(() => polls().length >= from + 3, 3000, 'three more polls')
    // The poll that delivered schedules the next after minMs, then idle ones back off again.
    expect(polls().slice(from - 1, from + 2)).toEqual([20, 40, 80])
  })

  test('failed polls are reported and retried; delivery resumes when HTTP works again', async () => {
    const { server, proxy } = await blocked()
    const subject = client(proxy.url)
    const got = recorder(subject, 'task:f', { since: 0 })
    await waitFor(() => subject.state.transport === 'polling' && subject.state.status === 'open', 3000, 'polling')
    proxy.refuseHttp = true
    const batch = events('task:f', 3)
    await store(server.url, batch)
    await waitFor(() => subject.state.lastError?.startsWith('polling failed'), 3000, 'a failed poll')
    // Nothing is delivered any more: the state must not say open.
    expect(subject.state).toMatchObject({ status: 'reconnecting', transport: 'polling' })
    expect(got).toEqual([])
    proxy.refuseHttp = false
    await waitFor(() => got.length === 3, 3000, 'the events after recovery')
    expect(got.map((e) => e.id)).toEqual(batch.map((e) => e.id))
    expect(subject.state).toMatchObject({ status: 'open', transport: 'polling' })
  })

  test('close() while polling stops it: no timer left, no request after', async () => {
    const { proxy } = await blocked()
    const { clock, live } = recordingClock()
    const subject = client(proxy.url, { clock })
    subject.subscribe('task:x', () => {})
    await waitFor(() => subject.state.transport === 'polling' && pollsOf(proxy) >= 2, 3000, 'polling')
    subject.close()
    await waitFor(() => live.size === 0, 1000, 'no timer left') // a poll in flight schedules nothing
    const requests = proxy.requests.length
    const attempts = proxy.upgradeAttempts
    expect(subject.state).toMatchObject({ status: 'closed', transport: null })
    // One more round trip through the proxy shows nothing else was sent meanwhile.
    expect((await fetch(`${proxy.url}/health`)).status).toBe(200)
    expect(proxy.requests.length).toBe(requests + 1)
    expect(proxy.upgradeAttempts).toBe(attempts)
  })
})

describe('a cursor the server cannot honour', () => {
  // A since beyond the newest seq cannot come from this database: the server says truncated and
  // starts from its oldest event. Both transports must report it and deliver the same events.
  for (const transport of ['websocket', 'polling'] as const) {
    test(`is reported through onTruncated and replayed from the start (${transport})`, async () => {
      const { server, proxy } = await blocked()
      proxy.refuseUpgrades = transport === 'polling'
      const batch = events('task:c', 3)
      await store(server.url, batch)
      const truncated: string[] = []
      const subject = client(proxy.url, { onTruncated: (channelId) => truncated.push(channelId) })
      const got = recorder(subject, 'task:c', { since: 1000 })
      await waitFor(() => got.length === 3 && subject.state.transport === transport, 3000, 'the replay')
      expect(got.map((e) => e.id)).toEqual(batch.map((e) => e.id))
      expect(truncated).toEqual(['task:c'])
      const more = events('task:c', 1)
      await store(server.url, more)
      await waitFor(() => got.length === 4, 3000, 'a later event')
      expect(got[3]!.id).toBe(more[0]!.id)
      expect(truncated).toEqual(['task:c'])
    })
  }
})
