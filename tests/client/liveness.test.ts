import { afterEach, describe, expect, test } from 'bun:test'
import type { Server, ServerWebSocket } from 'bun'
import { SignJWT } from 'jose'
import { type Clock, createRealtimeClient, type KnownFrame, type RealtimeClient, type RealtimeClientOptions } from '../../src/client'
import { PONG_TIMEOUT_CLOSE } from '../../src/client/realtime-client'
import { startProxy, type Proxy } from '../helpers/proxy'
import { ingest, makeEvent, startServer, type TestServer, waitFor } from '../helpers/server'

/**
 * Keeping a connection honest: the ping/pong timeout, requests (answers, timeouts, cleanup on
 * disconnect and on close), 4401, the observable connection state, the HTTP heartbeat and presence.
 * Fake servers are small Bun.serve WebSocket servers that misbehave on purpose.
 */

const FAST = {
  heartbeat: false,
  reconnect: { baseMs: 20, maxMs: 200, jitterMs: 10 },
  ping: { intervalMs: 50, timeoutMs: 100 },
  polling: false,
} satisfies Partial<RealtimeClientOptions>

const SECRET = 'switchboard-test-secret-0123456789abcdef'

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

async function realServer(options: Parameters<typeof startServer>[0] = {}): Promise<TestServer> {
  const server = await startServer(options)
  cleanups.push(() => server.close())
  return server
}

function proxyTo(server: TestServer): Proxy {
  const proxy = startProxy(server.url)
  cleanups.push(() => proxy.stop())
  return proxy
}

/** The real clock, keeping track of the timers the client has scheduled and not yet run or cleared. */
function recordingClock() {
  const live = new Map<unknown, number>()
  const clock: Clock = {
    now: () => Date.now(),
    random: () => Math.random(),
    setTimeout(fn, ms) {
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
  return { clock, live }
}

interface FakeConnection {
  ws: ServerWebSocket<{ index: number }>
  index: number
  received: any[]
  closed?: { code: number; reason: string }
}

/**
 * A WebSocket server that accepts every upgrade (any path) and lets the test decide how each
 * message is answered. `answer(connection, message)` runs for every parsed message.
 */
function fakeServer(answer: (connection: FakeConnection, message: any) => void) {
  const connections: FakeConnection[] = []
  const server: Server<{ index: number }> = Bun.serve<{ index: number }>({
    hostname: '127.0.0.1',
    port: 0,
    fetch(request, server) {
      if (server.upgrade(request, { data: { index: connections.length } })) return undefined
      return Response.json({ error: { code: 'not_found', message: 'fake server' } }, { status: 404 })
    },
    websocket: {
      open(ws) {
        connections[ws.data.index] = { ws, index: ws.data.index, received: [] }
      },
      message(ws, raw) {
        const connection = connections[ws.data.index]!
        const message = JSON.parse(String(raw))
        connection.received.push(message)
        answer(connection, message)
      },
      close(ws, code, reason) {
        connections[ws.data.index]!.closed = { code, reason }
      },
    },
  })
  cleanups.push(() => server.stop(true))
  return { url: `http://127.0.0.1:${server.port}`, connections }
}

interface RawConnection {
  index: number
  send(message: unknown): void
  closeFrames: number
  closeCode?: number
}

/**
 * A WebSocket server written on raw TCP, for what a well-behaved server library never does:
 * it answers the handshake and sends text frames, but never answers (nor honours) a close frame.
 */
function rawWebSocketServer(onMessage: (connection: RawConnection, message: { opcode: number; text: string }) => void) {
  const connections: RawConnection[] = []
  type State = { buffer: Buffer; connection?: RawConnection }
  const listener = Bun.listen<State>({
    hostname: '127.0.0.1',
    port: 0,
    socket: {
      open(socket) {
        socket.data = { buffer: Buffer.alloc(0) }
      },
      data(socket, chunk) {
        const state = socket.data
        state.buffer = Buffer.concat([state.buffer, chunk])
        if (!state.connection) {
          const end = state.buffer.indexOf('\r\n\r\n')
          if (end < 0) return
          const head = state.buffer.subarray(0, end).toString()
          state.buffer = state.buffer.subarray(end + 4)
          const key = /sec-websocket-key: *(.+)/i.exec(head)?.[1]?.trim() ?? ''
          const accept = new Bun.CryptoHasher('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64')
          socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`)
          state.connection = {
            index: connections.length,
            closeFrames: 0,
            send(message) {
              const payload = Buffer.from(JSON.stringify(message))
              const header = payload.length < 126 ? Buffer.from([0x81, payload.length]) : Buffer.from([0x81, 126, payload.length >> 8, payload.length & 0xff])
              socket.write(Buffer.concat([header, payload]))
            },
          }
          connections.push(state.connection)
        }
        // Client frames are masked; this reads lengths up to 64 KiB, plenty for the client's messages.
        for (;;) {
          const buffer = state.buffer
          if (buffer.length < 2) return
          const opcode = buffer[0]! & 0x0f
          let length = buffer[1]! & 0x7f
          let offset = 2
          if (length === 126) {
            if (buffer.length < 4) return
            length = buffer.readUInt16BE(2)
            offset = 4
          }
          if (buffer.length < offset + 4 + length) return
          const mask = buffer.subarray(offset, offset + 4)
          const payload = Buffer.from(buffer.subarray(offset + 4, offset + 4 + length))
          for (let i = 0; i < payload.length; i++) payload[i]! ^= mask[i % 4]!
          state.buffer = buffer.subarray(offset + 4 + length)
          const connection = state.connection!
          if (opcode === 8) {
            connection.closeFrames++
            connection.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : undefined
          }
          onMessage(connection, { opcode, text: opcode === 1 ? payload.toString() : '' })
        }
      },
    },
  })
  cleanups.push(() => listener.stop(true))
  return { url: `http://127.0.0.1:${listener.port}`, connections }
}

const pong = (connection: FakeConnection, message: any) => {
  if (message.type === 'ping') connection.ws.send(JSON.stringify({ type: 'pong' }))
}

async function signed(sub: string, org: string): Promise<string> {
  return new SignJWT({ org })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(sub)
    .setExpirationTime(Math.floor(Date.now() / 1000) + 3600)
    .sign(new TextEncoder().encode(SECRET))
}

describe('ping and pong', () => {
  test('no pong within timeoutMs: the client closes the socket itself (4000) and reconnects', async () => {
    // The first connection swallows pings without closing; later ones answer them.
    const fake = fakeServer((connection, message) => {
      if (connection.index > 0) pong(connection, message)
    })
    const subject = client(fake.url)
    await waitFor(() => fake.connections.length === 2 && subject.state.status === 'open', 3000, 'a second connection')
    await waitFor(() => fake.connections[0]!.closed, 1000, 'the silent connection closed')
    expect(fake.connections[0]!.closed!.code).toBe(PONG_TIMEOUT_CLOSE)
    expect(fake.connections[0]!.received.filter((m) => m.type === 'ping').length).toBeGreaterThanOrEqual(1)
    expect(subject.state.reconnects).toBe(1)
    expect(subject.state.lastError).toBeNull() // cleared by the successful reconnect
  })

  test('pings go out every intervalMs, and a server that answers them keeps the socket', async () => {
    const fake = fakeServer(pong)
    const subject = client(fake.url)
    await waitFor(() => subject.state.status === 'open', 3000, 'open')
    // Five pings at 50 ms span well over the 100 ms pong timeout.
    await waitFor(() => (fake.connections[0]?.received.filter((m) => m.type === 'ping').length ?? 0) >= 5, 3000, 'five pings')
    expect(fake.connections).toHaveLength(1)
    expect(fake.connections[0]!.closed).toBeUndefined()
    expect(subject.state).toMatchObject({ status: 'open', reconnects: 0 })
  })

  test('a hung server that ignores even the close frame: the client moves on and nothing more from it is delivered', async () => {
    // Connection 0 ignores pings and the client's close frame, and once the client has given up on
    // it, sends an event far ahead. It must not be delivered nor move the cursor, or the next
    // connection's replay (1, 2, 3) would be dropped as already delivered. (A WebSocket drops
    // messages once close() was called, so the client relies on that.)
    const frame = (seq: number) => ({
      type: 'task.started', id: crypto.randomUUID(), seq, channelId: 'task:t', orgId: 'local', userId: 'local', timestamp: 1, payload: { taskId: 't' },
    })
    const raw = rawWebSocketServer((connection, message) => {
      if (message.opcode === 8) {
        if (connection.index === 0) connection.send(frame(99))
        return
      }
      const parsed = JSON.parse(message.text)
      if (parsed.type === 'ping' && connection.index > 0) connection.send({ type: 'pong' })
      if (parsed.type === 'subscribe') {
        connection.send({ type: 'subscribed', channelId: parsed.channelId, epoch: 'e1', ...(parsed.since === undefined ? { lastSeq: 0 } : { since: parsed.since }) })
        if (connection.index > 0) for (const seq of [1, 2, 3]) connection.send(frame(seq))
      }
    })
    const subject = client(raw.url)
    const seqs: number[] = []
    subject.subscribe('task:t', (event) => seqs.push(event.seq))
    await waitFor(() => raw.connections[0]?.closeFrames, 3000, 'the client giving up on connection 0')
    await waitFor(() => seqs.length >= 3, 3000, 'the replay of the second connection')
    expect(seqs).toEqual([1, 2, 3])
    expect(subject.cursor('task:t')).toBe(3)
    expect(raw.connections[0]!.closeFrames).toBe(1)
    expect(raw.connections[0]!.closeCode).toBe(PONG_TIMEOUT_CLOSE)
  })
})

describe('dedup guard', () => {
  test('events at or below the last delivered seq are dropped, whatever the server replays', async () => {
    // A server that ignores `since` and replays everything on every subscribe, then drops the
    // connection after the first subscribe: the handler must still see each seq once.
    const frame = (seq: number) => ({
      type: 'task.started', id: `00000000-0000-4000-8000-${String(seq).padStart(12, '0')}`, seq, channelId: 'task:d', orgId: 'local', userId: 'local', timestamp: 1, payload: { taskId: 'd' },
    })
    const fake = fakeServer((connection, message) => {
      pong(connection, message)
      if (message.type !== 'subscribe') return
      connection.ws.send(JSON.stringify({ type: 'subscribed', channelId: message.channelId, epoch: 'e1', ...(message.since === undefined ? { lastSeq: 0 } : { since: message.since }) }))
      const upTo = connection.index === 0 ? 3 : 5
      for (let seq = 1; seq <= upTo; seq++) connection.ws.send(JSON.stringify(frame(seq)))
      connection.ws.send(JSON.stringify(frame(2))) // a stray repeat on the same connection
      if (connection.index === 0) connection.ws.terminate()
    })
    const subject = client(fake.url)
    const seqs: number[] = []
    subject.subscribe('task:d', (event) => seqs.push(event.seq))
    await waitFor(() => seqs.length >= 5 && fake.connections.length === 2, 3000, 'five events over two connections')
    expect(seqs).toEqual([1, 2, 3, 4, 5])
    // The second subscribe resumed from the last delivered seq.
    expect(fake.connections[1]!.received.find((m) => m.type === 'subscribe')).toEqual({ type: 'subscribe', channelId: 'task:d', since: 3, epoch: 'e1' })
  })
})

describe('requests', () => {
  test('answers are matched to requests by id, whatever their order', async () => {
    const fake = fakeServer((connection, message) => {
      if (message.type !== 'request') return
      const requests = connection.received.filter((m) => m.type === 'request')
      if (requests.length < 3) return
      for (const request of requests.reverse()) {
        connection.ws.send(JSON.stringify({ type: 'response', requestId: request.id, success: true, data: { action: request.action, payload: request.payload } }))
      }
    })
    const subject = client(fake.url)
    await waitFor(() => subject.state.status === 'open', 3000, 'open')
    const answers = await Promise.all([subject.request('a', { n: 1 }), subject.request('b'), subject.request('c', { n: 3 })])
    expect(answers).toEqual([
      { action: 'a', payload: { n: 1 } },
      { action: 'b' },
      { action: 'c', payload: { n: 3 } },
    ])
    const ids = fake.connections[0]!.received.filter((m) => m.type === 'request').map((m) => m.id)
    expect(new Set(ids).size).toBe(3)
    expect(subject.state.pendingRequests).toBe(0)
  })

  test('history and stats against the real server; an error answer rejects with its message', async () => {
    const server = await realServer()
    const subject = client(server.url)
    await waitFor(() => subject.state.status === 'open', 3000, 'open')
    const events = [makeEvent({ channels: ['agent:h'] }), makeEvent({ channels: ['agent:h'] })]
    expect((await ingest(server.url, { events })).status).toBe(200)
    const page = await subject.request<{ events: Array<{ id: string }>; hasMore: boolean }>('history', { channelId: 'agent:h', since: 0, limit: 10 })
    expect(page.events.map((e) => e.id)).toEqual(events.map((e) => e.id))
    expect(page.hasMore).toBe(false)
    expect(await subject.request('stats')).toMatchObject({ status: 'ok', eventsStored: 2 })
    await expect(subject.request('no_such_action')).rejects.toThrow(/unknown action/)
    await waitFor(() => subject.state.pendingRequests === 0, 1000, 'nothing pending')
  })

  test('a request without an answer rejects after timeoutMs (or requestTimeoutMs) and leaves nothing behind', async () => {
    const fake = fakeServer(pong) // answers pings, never requests
    const { clock, live } = recordingClock()
    const subject = client(fake.url, { clock, requestTimeoutMs: 80 })
    await waitFor(() => subject.state.status === 'open', 3000, 'open')
    const started = Date.now()
    const explicit = subject.request('slow', {}, { timeoutMs: 40 })
    const byDefault = subject.request('slower')
    expect(subject.state.pendingRequests).toBe(2)
    await expect(explicit).rejects.toThrow('request slow timed out after 40 ms')
    await expect(byDefault).rejects.toThrow('request slower timed out after 80 ms')
    expect(Date.now() - started).toBeGreaterThanOrEqual(75)
    expect(subject.state.pendingRequests).toBe(0)
    expect([...live.values()].filter((ms) => ms === 40 || ms === 80)).toEqual([])
    // An answer arriving after the timeout is ignored.
    const [late] = fake.connections[0]!.received.filter((m) => m.type === 'request')
    fake.connections[0]!.ws.send(JSON.stringify({ type: 'response', requestId: late.id, success: true, data: 1 }))
    expect(await subject.request('stats', {}, { timeoutMs: 20 }).catch((error) => String(error))).toContain('timed out')
    expect(subject.state.status).toBe('open')
  })

  test('pending requests reject when the connection is lost; a request while disconnected rejects at once', async () => {
    // The server drops the connection (no close frame) when it sees a `drop` request.
    const fake = fakeServer((connection, message) => {
      if (message.type === 'ping' && connection.index > 0) pong(connection, message)
      if (message.type === 'request' && message.action === 'drop') connection.ws.terminate()
    })
    const { clock, live } = recordingClock()
    const subject = client(fake.url, { clock, reconnect: { baseMs: 300, maxMs: 300, jitterMs: 0 } })
    await waitFor(() => subject.state.status === 'open', 3000, 'open')
    const slow = subject.request('slow', {}, { timeoutMs: 5000 })
    const drop = subject.request('drop', {}, { timeoutMs: 5000 })
    const [slowError, dropError] = await Promise.all([slow.catch((error) => error), drop.catch((error) => error)])
    expect(String(slowError)).toMatch(/connection lost \(1006/)
    expect(String(dropError)).toMatch(/connection lost/)
    expect(subject.state.pendingRequests).toBe(0)
    expect([...live.values()]).not.toContain(5000)
    expect(subject.state.status).toBe('reconnecting')
    await expect(subject.request('meanwhile')).rejects.toThrow(/not connected/)
    await waitFor(() => subject.state.status === 'open', 3000, 'the reconnect')
    expect(fake.connections).toHaveLength(2)
  })

  test('close() rejects pending requests, clears every timer and never reconnects', async () => {
    const fake = fakeServer(pong)
    const { clock, live } = recordingClock()
    const subject = client(fake.url, { clock, heartbeat: { intervalMs: 50 } })
    subject.subscribe('agent:x', () => {})
    await waitFor(() => subject.state.status === 'open', 3000, 'open')
    const pending = subject.request('slow', {}, { timeoutMs: 5000 })
    subject.close()
    await expect(pending).rejects.toThrow('client closed')
    expect(subject.state).toMatchObject({ status: 'closed', transport: null, pendingRequests: 0 })
    await waitFor(() => fake.connections[0]!.closed, 1000, 'the socket closed')
    expect(fake.connections[0]!.closed!.code).toBe(1000)
    // A heartbeat in flight at close() must not schedule the next one.
    await waitFor(() => live.size === 0, 1000, 'no timer left')
    expect(fake.connections).toHaveLength(1)
    expect(() => subject.subscribe('agent:y', () => {})).toThrow(/closed/)
    await expect(subject.request('after')).rejects.toThrow(/not connected/)
  })
})

describe('authentication', () => {
  test('close 4401: the client stops, reports offline and does not retry', async () => {
    const server = await realServer({ auth: { mode: 'jwt', secret: SECRET } })
    const proxy = proxyTo(server)
    const { clock, live } = recordingClock()
    const subject = client(proxy.url, { clock, token: 'not-a-valid-token', polling: { afterMs: 50, minMs: 50, maxMs: 100 } })
    await waitFor(() => subject.state.status === 'offline', 3000, 'offline')
    expect(subject.state.lastError).toContain('4401')
    expect(subject.state.transport).toBeNull()
    expect(subject.state.reconnects).toBe(0)
    // Nothing scheduled: no reconnect, no polling fallback, so no hammering.
    expect(live.size).toBe(0)
    expect(proxy.upgradeAttempts).toBe(1)
    expect(proxy.requests).toEqual([])
  })

  test('jwt: the client authenticates again, with a fresh token, after every reconnect', async () => {
    const server = await realServer({ auth: { mode: 'jwt', secret: SECRET } })
    const proxy = proxyTo(server)
    let tokens = 0
    const subject = client(proxy.url, {
      token: () => {
        tokens++
        return signed('u1', 'acme')
      },
    })
    const got: string[] = []
    subject.subscribe('org:acme', (event: KnownFrame) => got.push(event.id), { onOther: (event) => got.push(event.id) })
    await waitFor(() => subject.state.status === 'open', 3000, 'open')
    const headers = { authorization: `Bearer ${await signed('producer', 'acme')}` }
    const first = makeEvent({ orgId: 'acme', userId: 'producer' })
    expect((await ingest(server.url, first, headers)).status).toBe(200)
    await waitFor(() => got.length === 1, 3000, 'the first event')
    const before = tokens
    proxy.dropAll()
    const second = makeEvent({ orgId: 'acme', userId: 'producer' })
    expect((await ingest(server.url, second, headers)).status).toBe(200)
    await waitFor(() => got.length === 2, 3000, 'the event stored while away')
    expect(got).toEqual([first.id, second.id])
    expect(tokens).toBeGreaterThan(before)
    expect(proxy.bridged).toBe(2)
  })
})

describe('connection state', () => {
  test('connecting → open → reconnecting → open → closed, with reconnect count and last error', async () => {
    const server = await realServer()
    const proxy = proxyTo(server)
    const subject = client(proxy.url)
    const seen: Array<{ status: string; transport: string | null; reconnects: number; lastError: string | null }> = []
    subject.onState(({ status, transport, reconnects, lastError }) => {
      const last = seen.at(-1)
      if (!last || last.status !== status || last.transport !== transport) seen.push({ status, transport, reconnects, lastError })
    })
    expect(subject.state.status).toBe('connecting')
    await waitFor(() => subject.state.status === 'open', 3000, 'open')
    const snapshot = subject.state
    expect(subject.state).toBe(snapshot) // the same object until something changes
    proxy.dropAll()
    await waitFor(() => proxy.bridged === 2 && subject.state.status === 'open', 3000, 'reconnected')
    expect(subject.state).not.toBe(snapshot)
    subject.close()
    expect(seen).toEqual([
      { status: 'open', transport: 'websocket', reconnects: 0, lastError: null },
      { status: 'reconnecting', transport: null, reconnects: 1, lastError: expect.stringContaining('1006') },
      { status: 'open', transport: 'websocket', reconnects: 1, lastError: null },
      { status: 'closed', transport: null, reconnects: 1, lastError: null },
    ])
  })

  test('reconnect: false reports offline after the first loss', async () => {
    const server = await realServer()
    const proxy = proxyTo(server)
    const subject = client(proxy.url, { reconnect: false })
    await waitFor(() => subject.state.status === 'open', 3000, 'open')
    proxy.dropAll()
    await waitFor(() => subject.state.status === 'offline', 3000, 'offline')
    expect(proxy.upgradeAttempts).toBe(1)
  })
})

describe('heartbeat and presence', () => {
  test('heartbeats every intervalMs name the client in presence, with or without a socket', async () => {
    const server = await realServer()
    const proxy = proxyTo(server)
    const subject = client(proxy.url, { clientId: 'desk-1', kind: 'desktop', heartbeat: { intervalMs: 50 } })
    await waitFor(() => subject.state.status === 'open' && subject.state.heartbeat.lastOkAt !== null, 3000, 'open and one heartbeat')
    const { clients: withSocket } = await subject.presence()
    // The client announces itself with hello on connect: no methods handled here.
    expect(withSocket).toEqual([{ userId: 'local', clientId: 'desk-1', kind: 'desktop', lastSeen: expect.any(Number), socketOpen: true, methods: [] }])
    await waitFor(() => proxy.requests.filter((path) => path === '/api/heartbeat').length >= 3, 3000, 'three heartbeats')

    // Without a socket the heartbeat keeps the client present (the HTTP half of the dual channel).
    proxy.refuseUpgrades = true
    proxy.dropAll()
    await waitFor(async () => (await subject.presence()).clients[0]?.socketOpen === false, 3000, 'socket closed in presence')
    const seenAt = (await subject.presence()).clients[0]!.lastSeen
    await waitFor(async () => (await subject.presence()).clients[0]!.lastSeen > seenAt, 3000, 'a heartbeat without a socket')

    // A failing heartbeat is reported in the state, not thrown.
    proxy.refuseHttp = true
    await waitFor(() => subject.state.heartbeat.lastError !== null, 3000, 'a failed heartbeat')
    proxy.refuseHttp = false
    await waitFor(() => subject.state.heartbeat.lastError === null, 3000, 'heartbeats recovering')
  })
})

test('onState works unbound, as useSyncExternalStore calls it', async () => {
  const server = await startServer()
  const client = createRealtimeClient({ url: server.url, heartbeat: false })
  try {
    const { onState } = client
    const seen: string[] = []
    const off = onState((state) => seen.push(state.status))
    await waitFor(() => seen.includes('open'), 5000, 'open state')
    off()
    client.close()
    expect(seen).not.toContain('closed')
  } finally {
    client.close()
    await server.close()
  }
})
