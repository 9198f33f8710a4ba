import { afterEach, describe, expect, test } from 'bun:test'
import type { Server, ServerWebSocket } from 'bun'
import { backoffDelay, type Clock, createRealtimeClient, DEFAULT_BACKOFF, type RealtimeClient, type RealtimeClientOptions } from '../../src/client'
import { PONG_TIMEOUT_CLOSE } from '../../src/client/realtime-client'
import { waitFor } from '../helpers/server'

/**
 * Time and randomness injected: the reconnect schedule (exponential, capped, jittered, reset after
 * a successful connect), which close codes stop it, close() during a backoff, and the default
 * ping / pong / heartbeat / polling timings, all with a fake clock. Sockets are real; only timers
 * are fake, so each step awaits the real I/O before firing the next timer.
 */

/** A clock whose timers run only when the test fires them. */
class FakeClock implements Clock {
  time = 1_700_000_000_000
  private nextId = 0
  readonly timers = new Map<number, { at: number; ms: number; fn: () => void }>()
  /** Every delay scheduled, in order. */
  readonly scheduled: number[] = []
  random: () => number = () => 0.5
  now = () => this.time
  setTimeout = (fn: () => void, ms: number) => {
    const id = ++this.nextId
    this.timers.set(id, { at: this.time + ms, ms, fn })
    this.scheduled.push(ms)
    return id
  }
  clearTimeout = (handle: unknown) => {
    this.timers.delete(handle as number)
  }
  /** Delays of the pending timers, soonest first. */
  pending(): number[] {
    return [...this.timers.values()].sort((a, b) => a.at - b.at).map((timer) => timer.ms)
  }
  /** Advances to the soonest pending timer scheduled with `ms` (any, when omitted), runs it, returns its delay. */
  fire(ms?: number): number {
    const entries = [...this.timers.entries()].filter(([, timer]) => ms === undefined || timer.ms === ms).sort(([, a], [, b]) => a.at - b.at)
    const [id, timer] = entries[0] ?? []
    if (id === undefined || !timer) throw new Error(`no pending timer${ms === undefined ? '' : ` of ${ms} ms`}; pending: ${this.pending()}`)
    this.timers.delete(id)
    this.time = Math.max(this.time, timer.at)
    timer.fn()
    return timer.ms
  }
}

/** A server whose upgrades are refused (503) or accepted, and whose sockets the test drives. */
function fakeServer() {
  const state = {
    refuse: true,
    answerPings: true,
    upgradeAttempts: 0,
    sockets: [] as ServerWebSocket<undefined>[],
    received: [] as any[],
    closes: [] as number[],
    url: '',
  }
  const server: Server<undefined> = Bun.serve({
    hostname: '127.0.0.1',
    port: 0,
    fetch(request, server) {
      const url = new URL(request.url)
      if (request.headers.get('upgrade')) {
        state.upgradeAttempts++
        if (state.refuse) return new Response('no upgrades', { status: 503 })
        return server.upgrade(request) ? undefined : new Response('bad upgrade', { status: 400 })
      }
      if (url.pathname === '/api/events/since') return Response.json({ events: [], nextSeq: 0, hasMore: false, lastSeq: 0, epoch: 'e1' })
      if (url.pathname === '/api/heartbeat') return Response.json({ ok: true, serverTime: 0 })
      return Response.json({ error: { code: 'not_found', message: 'fake' } }, { status: 404 })
    },
    websocket: {
      open(ws) {
        state.sockets.push(ws)
      },
      message(ws, raw) {
        const message = JSON.parse(String(raw))
        state.received.push(message)
        if (message.type === 'ping' && state.answerPings) ws.send(JSON.stringify({ type: 'pong' }))
      },
      close(_ws, code) {
        state.closes.push(code)
      },
    },
  })
  state.url = `http://127.0.0.1:${server.port}`
  cleanups.push(() => server.stop(true))
  return state
}

const clients: RealtimeClient[] = []
const cleanups: Array<() => unknown> = []

afterEach(async () => {
  for (const client of clients.splice(0)) client.close()
  for (const cleanup of cleanups.splice(0)) await cleanup()
})

function client(url: string, clock: FakeClock, options: Partial<RealtimeClientOptions> = {}): RealtimeClient {
  const created = createRealtimeClient({ url, clock, heartbeat: false, polling: false, ...options })
  clients.push(created)
  return created
}

/** Waits for the failed attempt to schedule its retry, fires it, and returns the delay it had. */
async function nextRetry(clock: FakeClock, subject: RealtimeClient, reconnects: number): Promise<number> {
  await waitFor(() => subject.state.reconnects === reconnects && clock.timers.size === 1, 3000, `reconnect attempt ${reconnects}`)
  return clock.fire()
}

describe('backoffDelay', () => {
  const options = DEFAULT_BACKOFF

  test('defaults: base 1 s, doubling, capped at 30 s, jitter ±1 s', () => {
    expect(DEFAULT_BACKOFF).toEqual({ baseMs: 1000, maxMs: 30_000, jitterMs: 1000 })
    const noJitter = () => 0.5
    expect([0, 1, 2, 3, 4, 5, 6, 20, 1000].map((attempt) => backoffDelay(attempt, options, noJitter))).toEqual([
      1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000, 30_000,
    ])
  })

  test('jitter stays within ±jitterMs of the exponential delay, never below 0 nor above the cap', () => {
    let seed = 42
    const random = () => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31
      return seed / 2 ** 31
    }
    const samples = [0, 1e-9, 0.25, 0.5, 0.75, 1 - 1e-9, ...Array.from({ length: 200 }, random)]
    for (const custom of [options, { baseMs: 20, maxMs: 200, jitterMs: 10 }, { baseMs: 100, maxMs: 1000, jitterMs: 500 }]) {
      for (let attempt = 0; attempt <= 40; attempt++) {
        const exponential = Math.min(custom.baseMs * 2 ** attempt, custom.maxMs)
        const seen = new Set<number>()
        for (const r of samples) {
          const delay = backoffDelay(attempt, custom, () => r)
          expect(Number.isInteger(delay)).toBe(true)
          expect(delay).toBeGreaterThanOrEqual(Math.max(0, exponential - custom.jitterMs))
          expect(delay).toBeLessThanOrEqual(Math.min(custom.maxMs, exponential + custom.jitterMs))
          seen.add(delay)
        }
        // The injected randomness really spreads the delays (clients do not retry in step).
        expect(seen.size).toBeGreaterThan(5)
      }
    }
    // The extremes of random() reach both ends of the jitter range.
    expect(backoffDelay(1, options, () => 0)).toBe(1000)
    expect(backoffDelay(1, options, () => 1 - 1e-9)).toBe(3000)
    expect(backoffDelay(0, { baseMs: 100, maxMs: 1000, jitterMs: 500 }, () => 0)).toBe(0)
    expect(backoffDelay(10, options, () => 1 - 1e-9)).toBe(30_000)
  })
})

describe('the client reconnect schedule (fake clock)', () => {
  test('exponential from 1 s to the 30 s cap, reset to 1 s after a successful connect', async () => {
    const server = fakeServer()
    const clock = new FakeClock()
    const subject = client(server.url, clock)
    const delays: number[] = []
    for (let attempt = 1; attempt <= 7; attempt++) delays.push(await nextRetry(clock, subject, attempt))
    expect(delays).toEqual([1000, 2000, 4000, 8000, 16_000, 30_000, 30_000])
    // The 8th connection (the 7th retry) fails too and schedules the 8th retry, still at the cap.
    await waitFor(() => subject.state.reconnects === 8 && clock.timers.size === 1, 3000, 'retry 8 scheduled')
    expect(server.upgradeAttempts).toBe(8)
    expect(subject.state.status).toBe('reconnecting')
    expect(clock.pending()).toEqual([30_000])

    // The server accepts again: retry 8 connects.
    server.refuse = false
    clock.fire()
    await waitFor(() => subject.state.status === 'open', 3000, 'open')
    // The server restarts: the first retry waits the base delay again, then doubles.
    server.refuse = true
    server.sockets.at(-1)!.close(1001, 'going away')
    expect([await nextRetry(clock, subject, 9), await nextRetry(clock, subject, 10)]).toEqual([1000, 2000])
  })

  test('each delay carries the jitter of the injected random, within ±jitterMs', async () => {
    const server = fakeServer()
    const clock = new FakeClock()
    const randoms = [0, 1 - 1e-9, 0.25, 0.75, 0.1, 0.9, 0.5]
    let calls = 0
    clock.random = () => randoms[calls++ % randoms.length]!
    const subject = client(server.url, clock)
    const delays: number[] = []
    for (let attempt = 1; attempt <= 7; attempt++) delays.push(await nextRetry(clock, subject, attempt))
    // base·2^n + (2r − 1)·1000, capped at 30 s.
    expect(delays).toEqual([0, 3000, 3500, 8500, 15_200, 30_000, 30_000])
    expect(calls).toBe(7)
  })

  test('small timings: base 20 ms, cap 200 ms, jitter 10 ms', async () => {
    const server = fakeServer()
    const clock = new FakeClock()
    let seed = 7
    clock.random = () => (seed = (seed * 48_271) % 2_147_483_647) / 2_147_483_647
    const subject = client(server.url, clock, { reconnect: { baseMs: 20, maxMs: 200, jitterMs: 10 } })
    for (let attempt = 1; attempt <= 8; attempt++) {
      const exponential = Math.min(20 * 2 ** (attempt - 1), 200)
      const delay = await nextRetry(clock, subject, attempt)
      expect(delay).toBeGreaterThanOrEqual(exponential - 10)
      expect(delay).toBeLessThanOrEqual(Math.min(200, exponential + 10))
    }
  })

  test('close() during a backoff cancels the retry: nothing is scheduled and no attempt follows', async () => {
    const server = fakeServer()
    const clock = new FakeClock()
    const subject = client(server.url, clock, { polling: { afterMs: 5000 } })
    await waitFor(() => clock.pending().length === 2, 3000, 'a retry and the polling start scheduled')
    subject.close()
    expect(clock.timers.size).toBe(0)
    expect(subject.state.status).toBe('closed')
    expect(server.upgradeAttempts).toBe(1)
  })

  for (const code of [4401, 4002]) {
    test(`close ${code}: offline, no retry and no polling scheduled`, async () => {
      const server = fakeServer()
      server.refuse = false
      const clock = new FakeClock()
      const subject = client(server.url, clock, { polling: { afterMs: 5000 } })
      await waitFor(() => subject.state.status === 'open', 3000, 'open')
      server.sockets[0]!.close(code, 'no')
      await waitFor(() => subject.state.status === 'offline', 3000, 'offline')
      expect(subject.state.lastError).toBe(`closed ${code}: no`)
      expect(clock.timers.size).toBe(0)
      expect(server.upgradeAttempts).toBe(1)
    })
  }

  for (const code of [1001, 1011, 4408, 4429]) {
    test(`close ${code}: reconnects after the base delay`, async () => {
      const server = fakeServer()
      server.refuse = false
      const clock = new FakeClock()
      const subject = client(server.url, clock)
      await waitFor(() => subject.state.status === 'open', 3000, 'open')
      server.sockets[0]!.close(code, 'again')
      expect(await nextRetry(clock, subject, 1)).toBe(1000)
      await waitFor(() => subject.state.status === 'open' && server.sockets.length === 2, 3000, 'reconnected')
    })
  }
})

describe('default timings (fake clock)', () => {
  test('a ping every 25 s; no pong within 10 s closes the socket (4000) and reconnects', async () => {
    const server = fakeServer()
    server.refuse = false
    const clock = new FakeClock()
    const subject = client(server.url, clock)
    await waitFor(() => subject.state.status === 'open', 3000, 'open')
    expect(clock.pending()).toEqual([25_000])
    clock.fire(25_000)
    await waitFor(() => server.received.filter((m) => m.type === 'ping').length === 1, 3000, 'the first ping')
    await waitFor(() => clock.timers.size === 1, 3000, 'the pong answered')
    expect(clock.pending()).toEqual([25_000]) // the pong cleared its timeout

    server.answerPings = false
    clock.fire(25_000)
    await waitFor(() => server.received.filter((m) => m.type === 'ping').length === 2, 3000, 'the second ping')
    expect(clock.pending()).toEqual([10_000, 25_000])
    clock.fire(10_000)
    expect(subject.state).toMatchObject({ status: 'reconnecting', lastError: `closed ${PONG_TIMEOUT_CLOSE}: pong timeout` })
    await waitFor(() => server.closes.length === 1, 3000, 'the socket closed')
    expect(server.closes).toEqual([PONG_TIMEOUT_CLOSE])
    expect(clock.pending()).toEqual([1000])
  })

  test('an upgrade nobody answers is given up after the pong timeout (10 s) and retried', async () => {
    // A TCP server that accepts the connection and never answers the upgrade request.
    const silent = Bun.listen({ hostname: '127.0.0.1', port: 0, socket: { data() {} } })
    cleanups.push(() => silent.stop(true))
    const clock = new FakeClock()
    const subject = client(`http://127.0.0.1:${silent.port}`, clock)
    expect(clock.pending()).toEqual([10_000])
    clock.fire(10_000)
    expect(subject.state).toMatchObject({ status: 'reconnecting', reconnects: 1, lastError: `closed ${PONG_TIMEOUT_CLOSE}: connect timeout` })
    expect(clock.pending()).toEqual([1000])
    clock.fire(1000)
    expect(clock.pending()).toEqual([10_000])
    clock.fire(10_000)
    expect(clock.pending()).toEqual([2000])
  })

  test('a silent server is detected even when pings come more often than the pong timeout', async () => {
    const server = fakeServer()
    server.refuse = false
    server.answerPings = false
    const clock = new FakeClock()
    const subject = client(server.url, clock, { ping: { intervalMs: 50, timeoutMs: 100 } })
    await waitFor(() => subject.state.status === 'open', 3000, 'open')
    // Pings at 50, 100, 150 ms: the timeout of the first unanswered one fires at 150 ms.
    for (let i = 0; i < 3 && subject.state.status === 'open'; i++) clock.fire()
    expect(subject.state).toMatchObject({ status: 'reconnecting', lastError: `closed ${PONG_TIMEOUT_CLOSE}: pong timeout` })
  })

  test('heartbeat right away then every 30 s; polling after 10 s without a socket, every 5 s backing off to 30 s', async () => {
    const server = fakeServer()
    const clock = new FakeClock()
    const subject = client(server.url, clock, { heartbeat: undefined, polling: undefined, sse: false, clientId: 'c1' })
    subject.subscribe('agent:x', () => {}, { since: 0 })
    await waitFor(() => subject.state.heartbeat.lastOkAt !== null, 3000, 'the first heartbeat')
    // The heartbeat, the first retry, and the polling start.
    await waitFor(() => clock.timers.size === 3, 3000, 'three timers')
    expect(clock.pending()).toEqual([1000, 10_000, 30_000])
    clock.fire(1000)
    await waitFor(() => subject.state.reconnects === 2 && clock.timers.size === 3, 3000, 'the second retry')
    clock.fire(10_000)
    // Polls: the first at once, then idle ones at 10 s, 20 s, 30 s, 30 s.
    const polls: number[] = []
    for (const expected of [10_000, 20_000, 30_000, 30_000]) {
      await waitFor(() => clock.pending().includes(expected), 3000, `a poll in ${expected} ms`)
      polls.push(clock.fire(expected))
    }
    expect(polls).toEqual([10_000, 20_000, 30_000, 30_000])
    expect(subject.state).toMatchObject({ status: 'open', transport: 'polling' })
    expect(clock.pending()).toContain(30_000) // the heartbeat is still due
  })
})
