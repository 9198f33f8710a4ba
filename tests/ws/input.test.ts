import { afterEach, describe, expect, test } from 'bun:test'
import type { RealtimeServerOptions } from '../../src/server'
import { getJson, startServer, type TestServer } from '../helpers/server'
import { TestSocket } from '../helpers/ws'

/**
 * Bad WebSocket input: each kind is answered with {"type":"error","code","message"} and the
 * connection stays open (proved with a ping/pong afterwards); nothing is stored. Oversized frames
 * close 1009, and the rate limit closes 4429.
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

async function open(server: TestServer): Promise<TestSocket> {
  const socket = await TestSocket.open(server.wsUrl)
  sockets.push(socket)
  return socket
}

/** The connection is open and serving: a ping gets its pong, and nothing else was queued. */
async function expectOpen(socket: TestSocket): Promise<void> {
  socket.send({ type: 'ping' })
  expect(await socket.next()).toEqual({ type: 'pong' })
  expect(socket.closed).toBeNull()
}

/** Sends one frame and returns the next frame, which must be an error frame with `code`. */
async function expectError(socket: TestSocket, frame: string | Uint8Array<ArrayBuffer> | Record<string, unknown>, code: string) {
  if (frame instanceof Uint8Array) socket.ws.send(frame)
  else socket.send(frame)
  const error = await socket.next()
  // (Not toMatchObject: with asymmetric matchers, Bun 1.4's toMatchObject overwrites the received fields.)
  expect([error.type, error.code, typeof error.message]).toEqual(['error', code, 'string'])
  expect(error.message.length).toBeGreaterThan(0)
  // Only the documented fields (channelId / requestId when they apply).
  for (const key of Object.keys(error)) expect(['type', 'code', 'message', 'channelId', 'requestId']).toContain(key)
  await expectOpen(socket)
  return error
}

async function eventsStored(server: TestServer): Promise<number> {
  const { status, body } = await getJson(`${server.url}/health`)
  expect(status).toBe(200)
  return body.eventsStored
}

describe('bad input gets an error frame and the connection stays open', () => {
  test('not JSON → invalid_json', async () => {
    const server = await start()
    const socket = await open(server)
    for (const text of ['hello', '', ' ', '{"type":"ping"', '{type:ping}', '[1,2', '"unterminated', '{"type":"subscribe",}', "{'type':'ping'}"]) {
      const error = await expectError(socket, text, 'invalid_json')
      expect(error).toEqual({ type: 'error', code: 'invalid_json', message: error.message })
    }
    expect(await eventsStored(server)).toBe(0)
  })

  test('JSON that is not an object → invalid_message', async () => {
    const server = await start()
    const socket = await open(server)
    for (const text of ['42', '-1.5', '1e3', ' 42', 'true', 'false', 'null', '[]', ' []', '[{"type":"ping"}]']) {
      const error = await expectError(socket, text, 'invalid_message')
      expect(error).toEqual({ type: 'error', code: 'invalid_message', message: expect.stringContaining('object') })
    }
    expect(await eventsStored(server)).toBe(0)
  })

  test('invalid_json vs invalid_message follows the frame text: JSON strings are JSON, number-like text is not', async () => {
    const server = await start()
    const socket = await open(server)
    const cases: Array<[string, string]> = [
      ['"123"', 'invalid_message'],
      ['"{\\"type\\":\\"ping\\"}"', 'invalid_message'],
      ['"ping"', 'invalid_message'],
      ['"hello world"', 'invalid_message'],
      ['0x10', 'invalid_json'],
      ['Infinity', 'invalid_json'],
      ['.5', 'invalid_json'],
      ['+1', 'invalid_json'],
    ]
    const got: Array<[string, string]> = []
    for (const [text, expected] of cases) {
      let isJson = true
      try {
        JSON.parse(text)
      } catch {
        isJson = false
      }
      expect(isJson).toBe(expected === 'invalid_message')
      socket.send(text)
      const error = await socket.next()
      expect(error.type).toBe('error')
      got.push([text, error.code])
      await expectOpen(socket)
    }
    expect(got).toEqual(cases)
  })

  test('a JSON object with insignificant whitespace around it is a valid message', async () => {
    const server = await start()
    const socket = await open(server)
    for (const text of ['{"type":"ping"}\n', '{ "type" : "ping" }', ' {"type":"ping"}', '\n{"type":"ping"}', '\t {"type" : "ping"} \r\n']) {
      expect(JSON.parse(text)).toEqual({ type: 'ping' })
      socket.send(text)
      expect([text, await socket.next()]).toEqual([text, { type: 'pong' }])
    }
    await expectOpen(socket)
  })

  test('a binary frame → invalid_message', async () => {
    const server = await start()
    const socket = await open(server)
    const error = await expectError(socket, new Uint8Array([1, 2, 3, 255]), 'invalid_message')
    expect(error.message).toContain('binary')
    // Even when the bytes spell a valid JSON message.
    const json = await expectError(socket, new TextEncoder().encode('{"type":"ping"}'), 'invalid_message')
    expect(json.message).toContain('binary')
    expect(await eventsStored(server)).toBe(0)
  })

  test('an unknown or missing type → unknown_type', async () => {
    const server = await start()
    const socket = await open(server)
    for (const frame of [
      { type: 'nope' },
      { type: 'PING' },
      { type: 'subscribed', channelId: 'agent:a' },
      { type: 42 },
      { type: null },
      {},
      { channelId: 'agent:a' },
    ]) {
      const error = await expectError(socket, frame, 'unknown_type')
      expect(error).toEqual({ type: 'error', code: 'unknown_type', message: error.message })
    }
    // An event sent over the socket is not ingested: its type is not a message type.
    const error = await expectError(
      socket,
      { type: 'agent.spawned', id: crypto.randomUUID(), orgId: 'local', userId: 'local', timestamp: Date.now(), payload: { agentId: 'a', agentName: 'b', taskId: 'c' } },
      'unknown_type',
    )
    expect(error.message).toContain('agent.spawned')
    expect(await eventsStored(server)).toBe(0)
  })

  test('missing or invalid fields → invalid_message naming the field', async () => {
    const server = await start()
    const socket = await open(server)
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ type: 'auth' }, 'token'],
      [{ type: 'auth', token: '' }, 'token'],
      [{ type: 'auth', token: 42 }, 'token'],
      [{ type: 'subscribe', channelId: 'agent:a', since: -1 }, 'since'],
      [{ type: 'subscribe', channelId: 'agent:a', since: 1.5 }, 'since'],
      [{ type: 'subscribe', channelId: 'agent:a', since: '3' }, 'since'],
      [{ type: 'subscribe', channelId: 'agent:a', since: null }, 'since'],
      [{ type: 'subscribe', channelId: 'agent:a', since: 0, epoch: '' }, 'epoch'],
      [{ type: 'subscribe', channelId: 'agent:a', since: 0, epoch: 7 }, 'epoch'],
      [{ type: 'request', action: 'stats' }, 'id'],
      [{ type: 'request', id: '', action: 'stats' }, 'id'],
      [{ type: 'request', id: 'r1' }, 'action'],
      [{ type: 'request', id: 'r1', action: 'stats', payload: 'x' }, 'payload'],
      [{ type: 'request', id: 'r1', action: 'stats', payload: [1] }, 'payload'],
    ]
    for (const [frame, field] of cases) {
      const error = await expectError(socket, frame, 'invalid_message')
      expect(error.message).toStartWith(`${field}:`)
    }
    // A request whose id is readable carries it back, so the caller can match the failure.
    const withId = await expectError(socket, { type: 'request', id: 'r-bad', action: 5 }, 'invalid_message')
    expect(withId).toEqual({ type: 'error', code: 'invalid_message', message: expect.stringMatching(/^action:/), requestId: 'r-bad' })
    // Nothing was subscribed by the rejected subscribes.
    const stats = await socket.request({ type: 'request', id: 's', action: 'stats' }, 'response')
    expect(stats.data.subscriptions).toEqual([])
    expect(stats.data.channels).toBe(0)
  })

  test('a missing channelId is named in the error', async () => {
    const server = await start()
    const socket = await open(server)
    for (const frame of [{ type: 'subscribe' }, { type: 'unsubscribe' }, { type: 'subscribe', channelId: 5 }]) {
      socket.send(frame)
      const error = await socket.next()
      expect(error.type).toBe('error')
      expect(['invalid_message', 'invalid_channel']).toContain(error.code)
      expect(error.message).toStartWith('channelId:')
      await expectOpen(socket)
    }
  })

  test('bad channel ids → invalid_channel, for subscribe and unsubscribe', async () => {
    const server = await start()
    const socket = await open(server)
    const bad = [
      '', // empty
      'agent:', // empty name
      'agent', // no kind separator
      ':name', // empty kind
      'Agent:x', // uppercase kind
      'AGENT:x',
      '1agent:x', // kind must start with a letter
      'ag ent:x', // space in kind
      'agent:a\u0001b', // control character
      'agent:a\nb',
      'agent:a\u007fb',
      'agent: leading', // leading space in the name
      'agent:trailing ', // trailing space in the name
      `agent:${'x'.repeat(251)}`, // 257 characters
      `${'k'.repeat(33)}:x`, // kind longer than 32
    ]
    expect(`agent:${'x'.repeat(251)}`.length).toBe(257)
    for (const channelId of bad) {
      for (const type of ['subscribe', 'unsubscribe']) {
        const error = await expectError(socket, { type, channelId }, 'invalid_channel')
        expect(error.message).toStartWith('channelId:')
      }
    }
    // The boundary cases are accepted: 256 characters, a 32-character kind, any name characters.
    for (const channelId of [`agent:${'x'.repeat(250)}`, `${'k'.repeat(32)}:x`, 'agent:My Agent/ü:1', 'k_-9:x']) {
      const subscribed = await socket.request({ type: 'subscribe', channelId }, 'subscribed')
      expect(subscribed).toEqual({ type: 'subscribed', channelId, epoch: expect.any(String), lastSeq: 0 })
    }
    const stats = await socket.request({ type: 'request', id: 's', action: 'stats' }, 'response')
    expect(stats.data.subscriptions.length).toBe(4)
    expect(await eventsStored(server)).toBe(0)
  })

  test("another organisation's org channel → forbidden; its own is allowed", async () => {
    const server = await start()
    const socket = await open(server)
    const error = await expectError(socket, { type: 'subscribe', channelId: 'org:other' }, 'forbidden')
    expect(error).toEqual({ type: 'error', code: 'forbidden', message: expect.stringContaining('org:other'), channelId: 'org:other' })
    const withSince = await expectError(socket, { type: 'subscribe', channelId: 'org:other', since: 0 }, 'forbidden')
    expect(withSince.channelId).toBe('org:other')
    // Prefix tricks do not help.
    await expectError(socket, { type: 'subscribe', channelId: 'org:local-not' }, 'forbidden')
    await expectError(socket, { type: 'subscribe', channelId: 'org:loca' }, 'forbidden')

    expect(await socket.request({ type: 'subscribe', channelId: 'org:local' }, 'subscribed')).toEqual({
      type: 'subscribed',
      channelId: 'org:local',
      epoch: expect.any(String),
      lastSeq: 0,
    })
    const stats = await socket.request({ type: 'request', id: 's', action: 'stats' }, 'response')
    expect(stats.data.subscriptions).toEqual(['org:local'])
    expect(await eventsStored(server)).toBe(0)
  })

  test('a long run of bad input stores nothing and leaves every connection open', async () => {
    const server = await start()
    const a = await open(server)
    const b = await open(server)
    const junk: Array<string | Record<string, unknown>> = [
      'x',
      '[]',
      { type: 'publish', event: {} },
      { type: 'ingest', events: [] },
      { type: 'subscribe', channelId: 'nope' },
      { type: 'request', id: 'r', action: 'publish', payload: { type: 'a.b' } },
    ]
    for (let round = 0; round < 5; round++) {
      for (const frame of junk) {
        a.send(frame)
        b.send(frame)
      }
    }
    for (const socket of [a, b]) {
      // One answer per frame, each a refusal, then the connection still serves a ping.
      const answers: any[] = []
      for (let i = 0; i < 5 * junk.length; i++) answers.push(await socket.next())
      for (const answer of answers) {
        if (answer.type === 'response') expect(answer).toEqual({ type: 'response', requestId: 'r', success: false, error: expect.any(String) })
        else expect([answer.type, typeof answer.code, typeof answer.message]).toEqual(['error', 'string', 'string'])
      }
      expect(answers.filter((f) => f.type === 'error').length).toBe(25)
      await expectOpen(socket)
      expect(socket.frames).toEqual([])
    }
    expect(await eventsStored(server)).toBe(0)
    const health = (await getJson(`${server.url}/health`)).body
    expect(health.connections).toBe(2)
  })
})

describe('limits', () => {
  test('a frame larger than maxFrameBytes closes the connection with 1009', async () => {
    const server = await start({ maxFrameBytes: 256 })
    const socket = await open(server)
    // Up to the limit is fine.
    const fits = JSON.stringify({ type: 'ping', pad: 'x'.repeat(200) })
    expect(fits.length).toBeLessThanOrEqual(256)
    socket.send(fits)
    expect(await socket.next()).toEqual({ type: 'pong' })
    const other = await open(server)

    socket.send(JSON.stringify({ type: 'ping', pad: 'x'.repeat(300) }))
    const closed = await socket.waitClosed()
    expect(closed.code).toBe(1009)
    // Only that connection.
    await expectOpen(other)
    await (async () => {
      for (let i = 0; i < 100; i++) {
        if ((await getJson(`${server.url}/health`)).body.connections === 1) return
        await Bun.sleep(10)
      }
      throw new Error('closed connection still counted')
    })()
  })

  test('a binary frame larger than maxFrameBytes closes with 1009 too', async () => {
    const server = await start({ maxFrameBytes: 256 })
    const socket = await open(server)
    socket.ws.send(new Uint8Array(1024))
    expect((await socket.waitClosed()).code).toBe(1009)
  })

  test('rate limit: the 6th message within the window closes with 4429', async () => {
    const server = await start({ rateLimit: { max: 5, windowMs: 60_000 } })
    const socket = await open(server)
    for (let i = 0; i < 5; i++) {
      socket.send({ type: 'ping' })
      expect(await socket.next()).toEqual({ type: 'pong' })
    }
    expect(socket.closed).toBeNull()
    socket.send({ type: 'ping' })
    const closed = await socket.waitClosed()
    expect(closed.code).toBe(4429)
    expect(socket.frames).toEqual([])

    // The limit is per connection: a new one starts with a fresh allowance.
    const fresh = await open(server)
    for (let i = 0; i < 5; i++) {
      fresh.send({ type: 'ping' })
      expect(await fresh.next()).toEqual({ type: 'pong' })
    }
    expect(fresh.closed).toBeNull()
  })

  test('rate limit: bad input counts too', async () => {
    const server = await start({ rateLimit: { max: 5, windowMs: 60_000 } })
    const socket = await open(server)
    for (const frame of ['nope', { type: 'x' }, { type: 'subscribe', channelId: '' }, { type: 'ping' }, { type: 'subscribe', channelId: 'agent:a' }]) {
      socket.send(frame)
    }
    const codes: string[] = []
    for (let i = 0; i < 5; i++) {
      const frame = await socket.next()
      codes.push(frame.code ?? frame.type)
    }
    expect(codes).toEqual(['invalid_json', 'unknown_type', 'invalid_channel', 'pong', 'subscribed'])
    socket.send('still junk')
    expect((await socket.waitClosed()).code).toBe(4429)
  })
})
