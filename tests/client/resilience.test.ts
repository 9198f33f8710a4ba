import { afterEach, describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import { createRealtimeClient, type KnownFrame, type RealtimeClient, type RealtimeClientOptions } from '../../src/client'
import { spawnService, type ServiceProcess } from '../helpers/process'
import { startProxy, type Proxy } from '../helpers/proxy'
import { ingest, makeEvent, startServer, tempDir, type TestServer, waitFor } from '../helpers/server'

/**
 * The typed client against the real server when the connection goes away under it: the server
 * killed with SIGKILL and restarted on the same port and database, a connection dropped without a
 * close frame, a connection that goes silent, a graceful restart, and a replaced database. In every
 * case the subscriber must end with every event exactly once and in seq order.
 */

const FAST = {
  heartbeat: false,
  reconnect: { baseMs: 20, maxMs: 200, jitterMs: 10 },
  ping: { intervalMs: 50, timeoutMs: 100 },
  polling: false,
} satisfies Partial<RealtimeClientOptions>

const clients: RealtimeClient[] = []
const cleanups: Array<() => unknown> = []

afterEach(async () => {
  for (const client of clients.splice(0)) client.close()
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

function client(url: string, options: Partial<RealtimeClientOptions> = {}): RealtimeClient {
  const created = createRealtimeClient({ url, ...FAST, ...options })
  clients.push(created)
  return created
}

async function spawn(env: Record<string, string>): Promise<ServiceProcess> {
  const service = await spawnService(env)
  cleanups.push(async () => {
    if (service.proc.exitCode === null && service.proc.signalCode === null) service.proc.kill(9)
    await service.exited
  })
  return service
}

/** agent.completed events on agent:stream (and org:local, task:t<i>); payload.duration numbers them. */
function streamEvents(count: number) {
  return Array.from({ length: count }, (_, i) =>
    makeEvent({
      type: 'agent.completed',
      payload: { agentId: 'a1', agentName: 'stream', taskId: `t${i}`, result: 'ok', duration: i },
    }),
  )
}

/**
 * Ingests the events one after another. A failed attempt (server down, connection reset, 5xx) is
 * retried with the same event (same id) until it is answered 200: dedup makes that safe even when
 * the first attempt was committed and only its answer was lost. `after(i)` runs once event i is stored.
 */
async function produce(url: () => string, events: unknown[], after: (i: number) => unknown = () => {}): Promise<void> {
  for (const [i, event] of events.entries()) {
    const deadline = Date.now() + 15_000
    for (let attempt = 0; ; attempt++) {
      try {
        const { status } = await ingest(url(), event)
        if (status === 200) break
      } catch {
        // the server is down or the connection was reset: retry
      }
      if (Date.now() > deadline) throw new Error(`event ${i} not ingested within 15 s (${attempt + 1} attempts)`)
      await Bun.sleep(10) // retry pacing, not a wait for a condition
    }
    await after(i)
  }
}

/** Collects what a subscription delivers, per channel. */
function recorder(subject: RealtimeClient, channelId: string) {
  const got: Array<{ id: string; seq: number; n: number; channelId: string }> = []
  subject.subscribe(channelId, (event: KnownFrame) => {
    if (event.type === 'agent.completed') got.push({ id: event.id, seq: event.seq, n: event.payload.duration, channelId: event.channelId })
  })
  return got
}

/** Every event exactly once, in the order produced (which is seq order), through that channel. */
function expectExactlyOnceInOrder(got: Array<{ id: string; seq: number; channelId: string }>, events: Array<{ id: string }>, channelId: string) {
  expect(got.map((e) => e.id)).toEqual(events.map((e) => e.id))
  for (let i = 1; i < got.length; i++) expect(got[i]!.seq).toBeGreaterThan(got[i - 1]!.seq)
  expect(new Set(got.map((e) => e.seq)).size).toBe(got.length)
  expect(got.every((e) => e.channelId === channelId)).toBe(true)
}

describe('server killed and restarted', () => {
  test('SIGKILL mid-stream twice, restart on the same port and database: every event exactly once, in order', async () => {
    const tmp = tempDir()
    cleanups.push(tmp.cleanup)
    const env = { REALTIME_DB: join(tmp.dir, 'realtime.db') }
    let service = await spawn(env)
    const port = service.port
    const subject = client(service.url)
    const agent = recorder(subject, 'agent:stream')
    const org = recorder(subject, 'org:local')
    await waitFor(() => subject.state.status === 'open', 5000, 'first connection')

    const events = streamEvents(150)
    const restarts: Promise<void>[] = []
    const killAndRestart = async () => {
      service.proc.kill('SIGKILL')
      await service.exited
      expect(service.proc.signalCode).toBe('SIGKILL')
      await waitFor(() => subject.state.status === 'reconnecting', 5000, 'the client noticing the kill')
      service = await spawn({ ...env, REALTIME_PORT: String(port) })
      expect(service.port).toBe(port)
    }
    try {
      await produce(
        () => `http://127.0.0.1:${port}`,
        events,
        // Not awaited: the producer keeps ingesting (retrying) while the server is down and restarting.
        (i) => {
          if (i === 40 || i === 100) restarts.push(killAndRestart())
        },
      )
    } finally {
      // Even when the producer failed: a restart still under way must register its process for cleanup.
      await Promise.allSettled(restarts)
    }
    await Promise.all(restarts)

    await waitFor(() => agent.length >= events.length && org.length >= events.length, 10_000, 'every event on both channels')
    expectExactlyOnceInOrder(agent, events, 'agent:stream')
    expectExactlyOnceInOrder(org, events, 'org:local')
    expect(subject.state.status).toBe('open')
    expect(subject.state.reconnects).toBeGreaterThanOrEqual(2)
    expect(subject.cursor('agent:stream')).toBe(agent.at(-1)!.seq)
  }, 30_000)

  test('graceful restart (close 1001) on the same port and database resumes without gap or duplicate', async () => {
    const tmp = tempDir()
    cleanups.push(tmp.cleanup)
    const dbPath = join(tmp.dir, 'realtime.db')
    let server: TestServer = await startServer({ dbPath })
    cleanups.push(() => server.close())
    const { port } = server.server
    const subject = client(server.url)
    const got = recorder(subject, 'agent:stream')
    await waitFor(() => subject.state.status === 'open', 5000, 'first connection')
    const events = streamEvents(60)
    await produce(
      () => server.url,
      events,
      async (i) => {
        if (i !== 20) return
        await server.server.stop()
        // Events stored while the client is away arrive by replay.
        server = await startServer({ port, dbPath })
      },
    )
    await waitFor(() => got.length >= events.length, 5000, 'every event')
    expectExactlyOnceInOrder(got, events, 'agent:stream')
    expect(subject.state.reconnects).toBeGreaterThanOrEqual(1)
  })

  test('a replaced database (another epoch) is reported through onTruncated and replayed from its start', async () => {
    const first = await startServer()
    let firstRunning = true
    cleanups.push(() => firstRunning && first.close())
    const { port } = first.server
    const truncated: string[] = []
    const subject = client(first.url, { onTruncated: (channelId) => truncated.push(channelId) })
    const got = recorder(subject, 'agent:stream')
    await waitFor(() => subject.state.status === 'open' && subject.state.epoch !== null, 5000, 'first connection')
    const firstEpoch = subject.state.epoch
    const before = streamEvents(5)
    await produce(() => first.url, before)
    await waitFor(() => got.length === 5, 5000, 'events of the first database')
    firstRunning = false
    await first.close()

    // Another database on the same port: its seqs start again at 1, below the client's cursor.
    const second = await startServer({ port })
    cleanups.push(() => second.close())
    const after = streamEvents(3)
    await produce(() => second.url, after)
    await waitFor(() => got.length === 8, 5000, 'events of the new database')
    expect(truncated).toEqual(['agent:stream'])
    expect(subject.state.epoch).not.toBe(firstEpoch)
    expect(got.map((e) => e.id)).toEqual([...before, ...after].map((e) => e.id))
    expect(got.slice(5).map((e) => e.seq)).toEqual([1, 2, 3])
  })
})

describe('connection lost without the server going down', () => {
  let server: TestServer
  let proxy: Proxy

  async function setUp() {
    server = await startServer()
    proxy = startProxy(server.url)
    cleanups.push(() => server.close(), () => proxy.stop())
  }

  test('dropped connections (no close frame) mid-stream: every event exactly once, in order', async () => {
    await setUp()
    const subject = client(proxy.url)
    const got = recorder(subject, 'agent:stream')
    const task = recorder(subject, 'task:t77')
    await waitFor(() => subject.state.status === 'open', 5000, 'first connection')
    const events = streamEvents(150)
    await produce(
      () => server.url,
      events,
      async (i) => {
        if (i !== 30 && i !== 60 && i !== 90) return
        await waitFor(() => proxy.live > 0 && subject.state.status === 'open', 3000, 'a live connection to drop')
        proxy.dropAll()
        if (i !== 60) return
        // Once more right after the reconnect, while the re-subscribe and its replay are under way.
        await waitFor(() => proxy.live > 0 && subject.state.status === 'open', 3000, 'a live connection to drop')
        proxy.dropAll()
      },
    )
    await waitFor(() => got.length >= events.length && task.length >= 1, 5000, 'every event')
    expectExactlyOnceInOrder(got, events, 'agent:stream')
    expectExactlyOnceInOrder(task, [events[77]!], 'task:t77')
    expect(proxy.bridged).toBeGreaterThanOrEqual(5)
    expect(subject.state.reconnects).toBeGreaterThanOrEqual(4)
    expect(subject.state.status).toBe('open')
  })

  test('a connection that goes silent without closing is detected by the pong timeout and resumed without loss', async () => {
    await setUp()
    const subject = client(proxy.url)
    const errors: string[] = []
    subject.onState((state) => {
      if (state.lastError && errors.at(-1) !== state.lastError) errors.push(state.lastError)
    })
    const got = recorder(subject, 'agent:stream')
    await waitFor(() => subject.state.status === 'open', 5000, 'first connection')
    const events = streamEvents(60)
    await produce(
      () => server.url,
      events,
      async (i) => {
        if (i !== 20) return
        proxy.freezeAll()
        await waitFor(() => proxy.bridged === 2 && subject.state.status === 'open', 3000, 'a new connection after the pong timeout')
      },
    )
    await waitFor(() => got.length >= events.length, 5000, 'every event')
    expectExactlyOnceInOrder(got, events, 'agent:stream')
    expect(errors.some((error) => error.includes('pong timeout'))).toBe(true)
  })
})
