import { afterEach, describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import { z } from 'zod'
import { createRealtimeClient, type RealtimeClient, type RealtimeClientOptions, RpcCallError } from '../../src/client'
import { openDatabase } from '../../src/db/client'
import type { RealtimeServerOptions } from '../../src/server'
import { ApiKeyStore } from '../../src/store/api-key-store'
import { getJson, startServer, tempDir, type TestServer, waitFor } from '../helpers/server'
import { TestSocket } from '../helpers/ws'
import { jwt, SECRET } from '../sse/support'

/**
 * RPC between a user's clients (src/realtime/rpc.ts, session.ts, modules/rpc, modules/presence):
 * `hello` → `welcome`; `call` routed by clientId or kind to another connection of the same
 * organisation and user; `result` back. Every failure path (target_not_connected and
 * method_not_offered at once, timeout, target_gone at once, call_failed, too_many_calls,
 * unknown_call), pending calls released when either side goes, no call across users or
 * organisations, rate limits, POST /api/rpc with a JWT or an API key, presence — over raw sockets
 * and through the typed client (handle / call with zod schemas, RpcCallError).
 */

const servers: TestServer[] = []
const sockets: TestSocket[] = []
const clients: RealtimeClient[] = []
const dirs: Array<() => void> = []

afterEach(async () => {
  for (const client of clients.splice(0)) client.close()
  for (const socket of sockets.splice(0)) socket.close()
  for (const server of servers.splice(0)) await server.close()
  for (const cleanup of dirs.splice(0)) cleanup()
})

async function start(options: RealtimeServerOptions = {}): Promise<TestServer> {
  const server = await startServer(options)
  servers.push(server)
  return server
}

const jwtMode = { auth: { mode: 'jwt' as const, secret: SECRET } }

/** A socket; in jwt mode authenticated with `token` first. */
async function open(t: TestServer, token?: string): Promise<TestSocket> {
  const socket = await TestSocket.open(t.wsUrl)
  sockets.push(socket)
  if (token) await socket.request({ type: 'auth', token }, 'authenticated')
  return socket
}

/** A socket announced with hello; resolves with it once welcomed. */
async function endpoint(t: TestServer, clientId: string, kind: string | undefined, methods: string[], token?: string): Promise<TestSocket> {
  const socket = await open(t, token)
  const welcome = await socket.request({ type: 'hello', clientId, ...(kind ? { kind } : {}), methods }, 'welcome')
  expect(welcome).toEqual({ type: 'welcome', clientId, ...(kind ? { kind } : {}), methods })
  return socket
}

let callCounter = 0
/** Sends a call and resolves with its result frame and how long it took. */
async function call(
  socket: TestSocket,
  target: string,
  method: string,
  payload: unknown = {},
  timeoutMs?: number,
): Promise<{ result: any; ms: number }> {
  const id = `call-${++callCounter}`
  const started = Date.now()
  socket.send({ type: 'call', id, target, method, payload, ...(timeoutMs ? { timeoutMs } : {}) })
  const result = await socket.next((frame) => frame.type === 'result' && frame.id === id, 5000)
  return { result, ms: Date.now() - started }
}

const failure = (code: string, error: string) => ({ type: 'result', id: expect.any(String), success: false, code, error })
const unknownCall = (id: string) => ({
  type: 'error',
  code: 'unknown_call',
  message: `no call ${JSON.stringify(id)} is waiting for this connection's result (answered already, timed out, or never made)`,
})

/** A round trip on a socket: everything it was sent before has been handled. */
async function settled(socket: TestSocket): Promise<void> {
  expect(await socket.request({ type: 'ping' }, 'pong')).toEqual({ type: 'pong' })
}

describe('calls over raw sockets', () => {
  test('a web client calls a desktop client by clientId and by kind and gets the answer', async () => {
    const t = await start()
    const desktop = await endpoint(t, 'desk-1', 'desktop', ['files.list', 'files.read'])
    const web = await endpoint(t, 'web-1', 'web', [])

    const byId = call(web, 'desk-1', 'files.list', { dir: '/home' })
    const delivered = await desktop.next((frame) => frame.type === 'call')
    expect(delivered).toEqual({ type: 'call', id: expect.any(String), method: 'files.list', payload: { dir: '/home' }, from: { userId: 'local', clientId: 'web-1', kind: 'web' } })
    desktop.send({ type: 'result', id: delivered.id, success: true, data: { files: ['a.txt', 'b.txt'] } })
    expect((await byId).result).toEqual({ type: 'result', id: expect.stringMatching(/^call-/), success: true, data: { files: ['a.txt', 'b.txt'] } })

    const byKind = call(web, 'desktop', 'files.read', { path: 'a.txt' })
    const second = await desktop.next((frame) => frame.type === 'call')
    expect(second).toMatchObject({ method: 'files.read', payload: { path: 'a.txt' } })
    expect(second.id).not.toBe(delivered.id)
    // success without data → data null; the handler's error → call_failed with its message.
    desktop.send({ type: 'result', id: second.id, success: true })
    expect((await byKind).result).toMatchObject({ success: true, data: null })
    const failing = call(web, 'desk-1', 'files.read', { path: 'missing' })
    const third = await desktop.next((frame) => frame.type === 'call')
    desktop.send({ type: 'result', id: third.id, success: false, error: 'ENOENT: missing' })
    expect((await failing).result).toEqual(failure('call_failed', 'ENOENT: missing'))
    // A caller that never said hello is named by its user only; a null payload stays null.
    const anonymous = await open(t)
    const fromAnonymous = call(anonymous, 'desktop', 'files.list', null)
    const fourth = await desktop.next((frame) => frame.type === 'call')
    expect(fourth).toMatchObject({ payload: null, from: { userId: 'local' } })
    expect(Object.keys(fourth.from)).toEqual(['userId'])
    desktop.send({ type: 'result', id: fourth.id, success: true, data: [] })
    expect((await fromAnonymous).result).toMatchObject({ success: true, data: [] })
    // The web client got no call frame and no error along the way.
    expect(web.frames).toEqual([])
    expect(desktop.frames).toEqual([])
  })

  test('target_not_connected and method_not_offered come at once; a client cannot call itself', async () => {
    const t = await start()
    const desktop = await endpoint(t, 'desk-1', 'desktop', ['files.list'])
    const web = await endpoint(t, 'web-1', 'web', ['ui.notify'])
    for (const [target, method, code, error] of [
      ['nobody', 'files.list', 'target_not_connected', 'no connected client "nobody"'],
      ['tablet', 'files.list', 'target_not_connected', 'no connected client "tablet"'],
      ['web-1', 'ui.notify', 'target_not_connected', 'no connected client "web-1"'],
      ['web', 'ui.notify', 'target_not_connected', 'no connected client "web"'],
      ['desk-1', 'files.delete', 'method_not_offered', '"desk-1" does not offer "files.delete"'],
      ['desktop', 'files.delete', 'method_not_offered', '"desktop" does not offer "files.delete"'],
    ] as const) {
      const { result, ms } = await call(web, target, method, {}, 60_000)
      expect(result).toEqual(failure(code, error))
      expect(ms).toBeLessThan(1000)
    }
    await settled(desktop)
    expect(desktop.frames).toEqual([])
  })

  test('timeout after timeoutMs; the late result then gets unknown_call', async () => {
    const t = await start()
    const desktop = await endpoint(t, 'desk-1', 'desktop', ['slow'])
    const web = await endpoint(t, 'web-1', 'web', [])
    const pending = call(web, 'desk-1', 'slow', {}, 150)
    const delivered = await desktop.next((frame) => frame.type === 'call')
    const { result, ms } = await pending
    expect(result).toEqual(failure('timeout', 'no result within 150 ms'))
    expect(ms).toBeGreaterThanOrEqual(140)
    expect(ms).toBeLessThan(2000)
    desktop.send({ type: 'result', id: delivered.id, success: true, data: 'late' })
    expect(await desktop.next((frame) => frame.type === 'error')).toEqual(unknownCall(delivered.id))
    await settled(web)
    expect(web.frames).toEqual([])
  })

  test('target_gone at once when the target disconnects mid-call, well before the timeout', async () => {
    const t = await start()
    const desktop = await endpoint(t, 'desk-1', 'desktop', ['work'])
    const web = await endpoint(t, 'web-1', 'web', [])
    const pending = [call(web, 'desk-1', 'work', { n: 1 }, 30_000), call(web, 'desktop', 'work', { n: 2 }, 30_000)]
    await desktop.next((frame) => frame.type === 'call')
    await desktop.next((frame) => frame.type === 'call')
    const closedAt = Date.now()
    desktop.close()
    for (const { result } of await Promise.all(pending)) expect(result).toEqual(failure('target_gone', 'desk-1 disconnected before answering'))
    expect(Date.now() - closedAt).toBeLessThan(1000)
    // The endpoint is gone from routing too.
    expect((await call(web, 'desk-1', 'work')).result).toEqual(failure('target_not_connected', 'no connected client "desk-1"'))
  })

  test('too_many_calls past 100 waiting calls; answering, or the target going, releases them', async () => {
    const t = await start()
    const desktop = await endpoint(t, 'desk-1', 'desktop', ['hold'])
    const web = await endpoint(t, 'web-1', 'web', [])
    for (let i = 0; i < 100; i++) web.send({ type: 'call', id: `h${i}`, target: 'desk-1', method: 'hold', payload: { i }, timeoutMs: 60_000 })
    const { result, ms } = await call(web, 'desk-1', 'hold', { i: 100 }, 60_000)
    expect(result).toEqual(failure('too_many_calls', 'at most 100 calls may wait at once'))
    expect(ms).toBeLessThan(1000)
    const held: any[] = []
    for (let i = 0; i < 100; i++) held.push(await desktop.next((frame) => frame.type === 'call'))
    expect(held.map((frame) => frame.payload.i)).toEqual(Array.from({ length: 100 }, (_, i) => i))
    await settled(desktop)
    expect(desktop.frames).toEqual([]) // the 101st never reached it
    // One answered → room for one more, and only one.
    desktop.send({ type: 'result', id: held[0].id, success: true, data: 0 })
    expect(await web.next((frame) => frame.type === 'result' && frame.id === 'h0')).toEqual({ type: 'result', id: 'h0', success: true, data: 0 })
    web.send({ type: 'call', id: 'h100', target: 'desk-1', method: 'hold', payload: { i: 100 }, timeoutMs: 60_000 })
    held.push(await desktop.next((frame) => frame.type === 'call'))
    expect((await call(web, 'desk-1', 'hold', {}, 60_000)).result).toEqual(failure('too_many_calls', 'at most 100 calls may wait at once'))
    // The target goes: all 100 waiting calls fail with target_gone, and the caller has room for 100 again.
    desktop.close()
    const gone = []
    for (let i = 1; i <= 100; i++) gone.push(await web.next((frame) => frame.type === 'result' && frame.id === `h${i}`))
    expect(gone.every((frame) => frame.code === 'target_gone')).toBe(true)
    const again = await endpoint(t, 'desk-2', 'desktop', ['hold'])
    for (let i = 0; i < 100; i++) web.send({ type: 'call', id: `g${i}`, target: 'desk-2', method: 'hold', payload: { i }, timeoutMs: 60_000 })
    for (let i = 0; i < 100; i++) await again.next((frame) => frame.type === 'call')
    await settled(web)
    expect(web.frames).toEqual([])
  })

  test('unknown_call: a result nobody waits for, from a connection that never said hello, from the wrong endpoint, or twice', async () => {
    const t = await start()
    const desktop = await endpoint(t, 'desk-1', 'desktop', ['ask'])
    const other = await endpoint(t, 'desk-2', 'desktop', ['ask'])
    const web = await endpoint(t, 'web-1', 'web', [])
    const stranger = await open(t)

    desktop.send({ type: 'result', id: 'never-made', success: true })
    expect(await desktop.next((frame) => frame.type === 'error')).toEqual(unknownCall('never-made'))

    const pending = call(web, 'desk-1', 'ask')
    const delivered = await desktop.next((frame) => frame.type === 'call')
    // Another endpoint, or a socket without hello, cannot answer desk-1's call.
    other.send({ type: 'result', id: delivered.id, success: true, data: 'forged' })
    expect(await other.next((frame) => frame.type === 'error')).toEqual(unknownCall(delivered.id))
    stranger.send({ type: 'result', id: delivered.id, success: true, data: 'forged' })
    expect(await stranger.next((frame) => frame.type === 'error')).toEqual(unknownCall(delivered.id))
    desktop.send({ type: 'result', id: delivered.id, success: true, data: 'real' })
    expect((await pending).result).toMatchObject({ success: true, data: 'real' })
    desktop.send({ type: 'result', id: delivered.id, success: true, data: 'again' })
    expect(await desktop.next((frame) => frame.type === 'error')).toEqual(unknownCall(delivered.id))
    await settled(web)
    expect(web.frames).toEqual([])
  })

  test('the caller closing mid-call releases its calls: the target’s later result gets unknown_call', async () => {
    const t = await start()
    const desktop = await endpoint(t, 'desk-1', 'desktop', ['work'])
    const web = await endpoint(t, 'web-1', 'web', [])
    const anonymous = await open(t)
    web.send({ type: 'call', id: 'w1', target: 'desk-1', method: 'work', timeoutMs: 60_000 })
    anonymous.send({ type: 'call', id: 'a1', target: 'desktop', method: 'work', timeoutMs: 60_000 })
    const first = await desktop.next((frame) => frame.type === 'call')
    const second = await desktop.next((frame) => frame.type === 'call')
    web.close()
    anonymous.close()
    await web.waitClosed()
    await anonymous.waitClosed()
    // Wait until the server has seen both go: the web client disappears from presence.
    await waitFor(async () => !(await getJson(`${t.url}/api/presence`)).body.clients.some((c: any) => c.clientId === 'web-1' && c.socketOpen), 3000, 'web-1 gone')
    for (const frame of [first, second]) {
      desktop.send({ type: 'result', id: frame.id, success: true, data: 'late' })
      expect(await desktop.next((f) => f.type === 'error')).toEqual(unknownCall(frame.id))
    }
  })

  // Calls made before `hello` wait under the connection's anonymous caller; saying hello later must
  // not orphan them when the connection closes.
  test('a caller that said hello after calling: closing still releases the calls it made before', async () => {
    const t = await start()
    const desktop = await endpoint(t, 'desk-1', 'desktop', ['work'])
    const web = await open(t)
    web.send({ type: 'call', id: 'before-hello', target: 'desk-1', method: 'work', timeoutMs: 60_000 })
    const delivered = await desktop.next((frame) => frame.type === 'call')
    expect(await web.request({ type: 'hello', clientId: 'web-1', kind: 'web', methods: [] }, 'welcome')).toMatchObject({ clientId: 'web-1' })
    web.close()
    await waitFor(async () => !(await getJson(`${t.url}/api/presence`)).body.clients.some((c: any) => c.clientId === 'web-1' && c.socketOpen), 3000, 'web-1 gone')
    desktop.send({ type: 'result', id: delivered.id, success: true, data: 'late' })
    await settled(desktop)
    expect(desktop.frames).toEqual([unknownCall(delivered.id)])
  })

  test('a connection announcing the same clientId replaces the older one, whose calls fail with target_gone', async () => {
    const t = await start()
    const old = await endpoint(t, 'desk-1', 'desktop', ['work'])
    const web = await endpoint(t, 'web-1', 'web', [])
    const pending = call(web, 'desk-1', 'work', {}, 30_000)
    await old.next((frame) => frame.type === 'call')
    const fresh = await endpoint(t, 'desk-1', 'desktop', ['work'])
    expect((await pending).result).toEqual(failure('target_gone', 'desk-1 disconnected before answering'))
    const next = call(web, 'desk-1', 'work')
    const delivered = await fresh.next((frame) => frame.type === 'call')
    fresh.send({ type: 'result', id: delivered.id, success: true, data: 'fresh' })
    expect((await next).result).toMatchObject({ success: true, data: 'fresh' })
    await settled(old)
    expect(old.frames).toEqual([])
  })
})

describe('isolation and limits', () => {
  test('jwt mode: calls never cross users or organisations', async () => {
    const t = await start(jwtMode)
    const [aliceAcme, bobAcme, aliceGlobex] = await Promise.all([jwt('alice', 'acme'), jwt('bob', 'acme'), jwt('alice', 'globex')])
    const desktop = await endpoint(t, 'desk-a', 'desktop', ['files.list'], aliceAcme)
    const bob = await endpoint(t, 'bob-web', 'web', [], bobAcme)
    const otherOrg = await endpoint(t, 'web-g', 'web', [], aliceGlobex)
    for (const caller of [bob, otherOrg]) {
      for (const target of ['desk-a', 'desktop']) {
        const { result, ms } = await call(caller, target, 'files.list', {}, 60_000)
        expect(result).toEqual(failure('target_not_connected', `no connected client ${JSON.stringify(target)}`))
        expect(ms).toBeLessThan(1000)
      }
    }
    // Another user announcing the same clientId and kind does not take alice's place.
    const bobDesk = await endpoint(t, 'desk-a', 'desktop', ['files.list'], bobAcme)
    const web = await endpoint(t, 'web-a', 'web', [], aliceAcme)
    const pending = call(web, 'desk-a', 'files.list')
    const delivered = await desktop.next((frame) => frame.type === 'call')
    expect(delivered.from).toEqual({ userId: 'alice', clientId: 'web-a', kind: 'web' })
    desktop.send({ type: 'result', id: delivered.id, success: true, data: 'alice' })
    expect((await pending).result).toMatchObject({ success: true, data: 'alice' })
    // And bob's calls reach bob's desktop only.
    const bobs = call(bob, 'desktop', 'files.list')
    const toBob = await bobDesk.next((frame) => frame.type === 'call')
    expect(toBob.from).toEqual({ userId: 'bob', clientId: 'bob-web', kind: 'web' })
    bobDesk.send({ type: 'result', id: toBob.id, success: true, data: 'bob' })
    expect((await bobs).result).toMatchObject({ success: true, data: 'bob' })
    await settled(desktop)
    expect(desktop.frames).toEqual([])
  })

  test('the socket rate limit counts calls: past it the caller is closed with 4429', async () => {
    const t = await start({ rateLimit: { max: 5, windowMs: 60_000 } })
    const desktop = await endpoint(t, 'desk-1', 'desktop', ['tick'])
    const web = await endpoint(t, 'web-1', 'web', []) // message 1: hello
    for (let i = 0; i < 5; i++) web.send({ type: 'call', id: `t${i}`, target: 'desk-1', method: 'tick', payload: { i } })
    expect(await web.waitClosed()).toEqual({ code: 4429, reason: 'rate limit exceeded' })
    // Messages 2–5 were calls that went through; the fifth call (message 6) did not.
    const delivered = []
    for (let i = 0; i < 4; i++) delivered.push(await desktop.next((frame) => frame.type === 'call'))
    expect(delivered.map((frame) => frame.payload.i)).toEqual([0, 1, 2, 3])
    await settled(desktop)
    expect(desktop.frames).toEqual([])
    // The closed caller's calls were released: answering them is an unknown call.
    desktop.send({ type: 'result', id: delivered[0].id, success: true })
    expect(await desktop.next((frame) => frame.type === 'error')).toEqual(unknownCall(delivered[0].id))
  })
})

describe('POST /api/rpc', () => {
  async function post(t: TestServer, body: unknown, token?: string, signal?: AbortSignal) {
    const response = await fetch(`${t.url}/api/rpc`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify(body),
      signal,
    })
    return { status: response.status, body: (await response.json()) as any }
  }

  test('with a JWT: the caller’s own clients; each failure has its status; another user’s userId → 403', async () => {
    const t = await start(jwtMode)
    const alice = await jwt('alice', 'acme')
    const desktop = await endpoint(t, 'desk-a', 'desktop', ['files.list', 'fail', 'hang'], alice)

    const answered = post(t, { target: 'desktop', method: 'files.list', payload: { dir: '/' } }, alice)
    const delivered = await desktop.next((frame) => frame.type === 'call')
    expect(delivered).toEqual({ type: 'call', id: expect.any(String), method: 'files.list', payload: { dir: '/' }, from: { userId: 'alice' } })
    desktop.send({ type: 'result', id: delivered.id, success: true, data: { files: ['x'] } })
    expect(await answered).toEqual({ status: 200, body: { success: true, data: { files: ['x'] } } })
    // Naming oneself is allowed.
    const own = post(t, { target: 'desk-a', method: 'files.list', userId: 'alice' }, alice)
    const ownCall = await desktop.next((frame) => frame.type === 'call')
    desktop.send({ type: 'result', id: ownCall.id, success: true, data: 1 })
    expect(await own).toEqual({ status: 200, body: { success: true, data: 1 } })

    const error = (status: number, code: string, message: string) => ({ status, body: { error: { code, message } } })
    expect(await post(t, { target: 'nobody', method: 'files.list' }, alice)).toEqual(error(404, 'target_not_connected', 'no connected client "nobody"'))
    expect(await post(t, { target: 'desk-a', method: 'nope' }, alice)).toEqual(error(404, 'method_not_offered', '"desk-a" does not offer "nope"'))
    const timedOut = post(t, { target: 'desk-a', method: 'hang', timeoutMs: 100 }, alice)
    await desktop.next((frame) => frame.type === 'call' && frame.method === 'hang')
    expect(await timedOut).toEqual(error(504, 'timeout', 'no result within 100 ms'))
    const failed = post(t, { target: 'desk-a', method: 'fail' }, alice)
    const failing = await desktop.next((frame) => frame.type === 'call' && frame.method === 'fail')
    desktop.send({ type: 'result', id: failing.id, success: false, error: 'disk full' })
    expect(await failed).toEqual(error(502, 'call_failed', 'disk full'))
    expect(await post(t, { target: 'desk-a', method: 'files.list', userId: 'bob' }, alice)).toEqual(
      error(403, 'forbidden', "userId: calls reach only the caller's own clients"),
    )
    // Another user's or organisation's token does not reach alice's desktop.
    expect(await post(t, { target: 'desk-a', method: 'files.list' }, await jwt('bob', 'acme'))).toEqual(error(404, 'target_not_connected', 'no connected client "desk-a"'))
    expect(await post(t, { target: 'desk-a', method: 'files.list' }, await jwt('alice', 'globex'))).toEqual(error(404, 'target_not_connected', 'no connected client "desk-a"'))
    expect((await post(t, { target: 'desk-a', method: 'files.list' })).status).toBe(401)
    expect((await post(t, { target: 'desk-a' }, alice)).status).toBe(400)

    // The target going mid-call: 502 target_gone at once.
    const gone = post(t, { target: 'desk-a', method: 'hang', timeoutMs: 60_000 }, alice)
    await desktop.next((frame) => frame.type === 'call' && frame.method === 'hang')
    const closedAt = Date.now()
    desktop.close()
    expect(await gone).toEqual(error(502, 'target_gone', 'desk-a disconnected before answering'))
    expect(Date.now() - closedAt).toBeLessThan(1000)
  })

  test('an HTTP caller that goes away mid-call releases the call: the late result gets unknown_call', async () => {
    const t = await start(jwtMode)
    const alice = await jwt('alice', 'acme')
    const desktop = await endpoint(t, 'desk-a', 'desktop', ['hang'], alice)
    const abort = new AbortController()
    const request = post(t, { target: 'desk-a', method: 'hang', timeoutMs: 60_000 }, alice, abort.signal).catch((error) => error)
    const delivered = await desktop.next((frame) => frame.type === 'call')
    abort.abort()
    expect(await request).toBeInstanceOf(Error)
    await waitFor(
      async () => {
        desktop.send({ type: 'result', id: delivered.id, success: true, data: 'late' })
        const answer = await desktop.next(() => true, 1000).catch(() => undefined)
        return answer?.type === 'error' && answer.code === 'unknown_call'
      },
      3000,
      'the call released',
    )
  })

  test('with an API key: userId names the user (missing → 400); the key reaches its organisation only', async () => {
    const tmp = tempDir()
    dirs.push(tmp.cleanup)
    const dbPath = join(tmp.dir, 'realtime.db')
    const database = openDatabase(dbPath)
    const keys = new ApiKeyStore(database)
    const acmeKey = keys.create('acme', 'rpc service').secret
    const globexKey = keys.create('globex', 'other service').secret
    database.sqlite.close()
    const t = await start({ ...jwtMode, dbPath })
    const desktop = await endpoint(t, 'desk-a', 'desktop', ['files.list'], await jwt('alice', 'acme'))

    const answered = post(t, { target: 'desk-a', method: 'files.list', userId: 'alice', payload: 7 }, acmeKey)
    const delivered = await desktop.next((frame) => frame.type === 'call')
    expect(delivered).toEqual({ type: 'call', id: expect.any(String), method: 'files.list', payload: 7, from: { userId: 'alice' } })
    desktop.send({ type: 'result', id: delivered.id, success: true, data: 'ok' })
    expect(await answered).toEqual({ status: 200, body: { success: true, data: 'ok' } })

    expect(await post(t, { target: 'desk-a', method: 'files.list' }, acmeKey)).toEqual({
      status: 400,
      body: { error: { code: 'invalid_body', message: 'userId: an API key must name the user whose client it calls' } },
    })
    expect(await post(t, { target: 'desk-a', method: 'files.list', userId: 'bob' }, acmeKey)).toEqual({
      status: 404,
      body: { error: { code: 'target_not_connected', message: 'no connected client "desk-a"' } },
    })
    expect(await post(t, { target: 'desk-a', method: 'files.list', userId: 'alice' }, globexKey)).toEqual({
      status: 404,
      body: { error: { code: 'target_not_connected', message: 'no connected client "desk-a"' } },
    })
    await settled(desktop)
    expect(desktop.frames).toEqual([])
  })
})

describe('presence', () => {
  test('GET /api/presence shows kind and methods after hello, per user in jwt mode; an API key sees the organisation', async () => {
    const tmp = tempDir()
    dirs.push(tmp.cleanup)
    const dbPath = join(tmp.dir, 'realtime.db')
    const database = openDatabase(dbPath)
    const key = new ApiKeyStore(database).create('acme', 'presence').secret
    database.sqlite.close()
    const t = await start({ ...jwtMode, dbPath })
    const [alice, bob] = await Promise.all([jwt('alice', 'acme'), jwt('bob', 'acme')])
    const desktop = await endpoint(t, 'desk-a', 'desktop', ['files.list', 'files.read'], alice)
    await endpoint(t, 'web-a', undefined, [], alice)
    await endpoint(t, 'desk-b', 'desktop', ['shell.run'], bob)
    await endpoint(t, 'desk-g', 'desktop', [], await jwt('carol', 'globex'))
    const presence = async (token: string) => {
      const { status, body } = await getJson(`${t.url}/api/presence`, { authorization: `Bearer ${token}` })
      expect(status).toBe(200)
      return (body.clients as any[]).map(({ lastSeen, ...rest }) => rest).sort((a, b) => a.clientId.localeCompare(b.clientId))
    }
    expect(await presence(alice)).toEqual([
      { userId: 'alice', clientId: 'desk-a', kind: 'desktop', socketOpen: true, methods: ['files.list', 'files.read'] },
      { userId: 'alice', clientId: 'web-a', socketOpen: true, methods: [] },
    ])
    expect(await presence(bob)).toEqual([{ userId: 'bob', clientId: 'desk-b', kind: 'desktop', socketOpen: true, methods: ['shell.run'] }])
    expect((await presence(key)).map((entry) => entry.clientId)).toEqual(['desk-a', 'desk-b', 'web-a'])
    // hello again changes what is shown; a closed socket keeps its kind but offers nothing.
    expect(await desktop.request({ type: 'hello', clientId: 'desk-a', kind: 'laptop', methods: ['files.list'] }, 'welcome')).toMatchObject({ kind: 'laptop' })
    expect((await presence(alice))[0]).toEqual({ userId: 'alice', clientId: 'desk-a', kind: 'laptop', socketOpen: true, methods: ['files.list'] })
    desktop.close()
    await waitFor(async () => (await presence(alice))[0]!.socketOpen === false, 3000, 'the socket gone')
    expect((await presence(alice))[0]).toEqual({ userId: 'alice', clientId: 'desk-a', kind: 'laptop', socketOpen: false })
  })
})

describe('the typed client', () => {
  const methods = {
    'files.list': { request: z.object({ dir: z.string() }), response: z.object({ files: z.array(z.string()) }) },
    'math.add': { request: z.object({ a: z.number(), b: z.number() }), response: z.number() },
    'slow.op': { request: z.object({}), response: z.string() },
  }
  const FAST = { heartbeat: false, reconnect: false, ping: false, polling: false } satisfies Partial<RealtimeClientOptions>

  function typed(t: TestServer, options: Partial<RealtimeClientOptions<{}, typeof methods>> = {}) {
    const client = createRealtimeClient<{}, typeof methods>({ url: t.url, methods, ...FAST, ...options })
    clients.push(client)
    return client
  }

  /** The server shows `clientId` offering exactly `offered` (its hello was handled). */
  async function offering(t: TestServer, clientId: string, offered: string[]): Promise<void> {
    await waitFor(
      async () =>
        (await getJson(`${t.url}/api/presence`)).body.clients.some((c: any) => c.clientId === clientId && JSON.stringify(c.methods) === JSON.stringify(offered)),
      3000,
      `${clientId} offering ${offered.join(', ')}`,
    )
  }

  const rejection = async (promise: Promise<unknown>) => {
    const error = await promise.then(
      () => {
        throw new Error('expected a rejection')
      },
      (error: unknown) => error,
    )
    return error as Error & { code?: string }
  }

  test('a web client calls a desktop client (by clientId and by kind) and gets the typed answer', async () => {
    const t = await start()
    const desktop = typed(t, { clientId: 'desk-1', kind: 'desktop' })
    const origins: unknown[] = []
    desktop.handle('files.list', ({ dir }, from) => {
      origins.push(from)
      return { files: [`${dir}a.txt`] }
    })
    desktop.handle('math.add', async ({ a, b }) => a + b)
    const web = typed(t, { clientId: 'web-1', kind: 'web' })
    await waitFor(() => web.state.transport === 'websocket', 3000, 'the web client connected')
    await offering(t, 'desk-1', ['files.list', 'math.add'])

    const listing: { files: string[] } = await web.call('desk-1', 'files.list', { dir: '/tmp/' })
    expect(listing).toEqual({ files: ['/tmp/a.txt'] })
    const sum: number = await web.call('desktop', 'math.add', { a: 2, b: 40 })
    expect(sum).toBe(42)
    expect(origins).toEqual([{ userId: 'local', clientId: 'web-1', kind: 'web' }])
    expect(web.state.pendingRequests).toBe(0)
  })

  test('schemas on both ends: a bad payload rejects before sending, a bad answer is refused, a thrown error is call_failed — never a hang', async () => {
    const t = await start()
    const desktop = typed(t, { clientId: 'desk-1', kind: 'desktop' })
    let calls = 0
    desktop.handle('math.add', ({ a, b }) => {
      calls++
      if (a < 0) throw new Error('negative numbers are not supported')
      return (b > 100 ? 'too big' : a + b) as number
    })
    const web = typed(t, { clientId: 'web-1', kind: 'web' })
    await waitFor(() => web.state.transport === 'websocket', 3000, 'connected')
    await offering(t, 'desk-1', ['math.add'])

    const badPayload = await rejection(web.call('desk-1', 'math.add', { a: '1', b: 2 } as unknown as { a: number; b: number }))
    expect(badPayload).toBeInstanceOf(TypeError)
    expect(badPayload.message).toStartWith('math.add payload: ')
    expect(web.state.pendingRequests).toBe(0)

    // The handler's own answer fails its response schema: the desktop refuses to send it.
    const refused = await rejection(web.call('desk-1', 'math.add', { a: 1, b: 200 }))
    expect(refused).toBeInstanceOf(RpcCallError)
    expect(refused.code).toBe('call_failed')
    expect(refused.message).toContain('expected number')

    const thrown = await rejection(web.call('desk-1', 'math.add', { a: -1, b: 1 }))
    expect(thrown).toBeInstanceOf(RpcCallError)
    expect([thrown.code, thrown.message]).toEqual(['call_failed', 'negative numbers are not supported'])
    expect(calls).toBe(2) // the bad payload never reached the desktop

    // A target without schemas answering something else: refused on the caller's side.
    const raw = await endpoint(t, 'raw-1', 'raw', ['files.list'])
    const pending = rejection(web.call('raw-1', 'files.list', { dir: '/' }))
    const delivered = await raw.next((frame) => frame.type === 'call')
    raw.send({ type: 'result', id: delivered.id, success: true, data: { files: 'not a list' } })
    const invalid = await pending
    expect(invalid).toBeInstanceOf(RpcCallError)
    expect(invalid.code).toBe('invalid_response')
    expect(invalid.message).toStartWith('files.list answered: ')
    expect(web.state.pendingRequests).toBe(0)
  })

  test('failure codes through RpcCallError: target_not_connected, method_not_offered, timeout, target_gone', async () => {
    const t = await start()
    const desktop = typed(t, { clientId: 'desk-1', kind: 'desktop' })
    let started = 0
    desktop.handle('slow.op', () => {
      started++
      return new Promise<string>(() => {}) // never answers
    })
    const remove = desktop.handle('math.add', ({ a, b }) => a + b)
    const web = typed(t, { clientId: 'web-1', kind: 'web', requestTimeoutMs: 30_000 })
    await waitFor(() => web.state.transport === 'websocket', 3000, 'connected')
    await offering(t, 'desk-1', ['slow.op', 'math.add'])

    const codeOf = async (promise: Promise<unknown>) => {
      const error = await rejection(promise)
      expect(error).toBeInstanceOf(RpcCallError)
      return [error.code, error.message]
    }
    expect(await codeOf(web.call('tablet', 'math.add', { a: 1, b: 1 }))).toEqual(['target_not_connected', 'no connected client "tablet"'])
    remove()
    await offering(t, 'desk-1', ['slow.op'])
    expect(await codeOf(web.call('desk-1', 'math.add', { a: 1, b: 1 }))).toEqual(['method_not_offered', '"desk-1" does not offer "math.add"'])
    expect(await codeOf(web.call('desk-1', 'slow.op', {}, { timeoutMs: 100 }))).toEqual(['timeout', 'no result within 100 ms'])

    // The desktop goes mid-call: target_gone at once, long before the 30 s timeout.
    const pending = codeOf(web.call('desktop', 'slow.op', {}))
    await waitFor(() => started === 2, 3000, 'the call running on the desktop')
    const closedAt = Date.now()
    desktop.close()
    expect(await pending).toEqual(['target_gone', 'desk-1 disconnected before answering'])
    expect(Date.now() - closedAt).toBeLessThan(1000)
    expect(web.state.pendingRequests).toBe(0)
  })

  test('the caller closing rejects its pending calls at once with RpcCallError disconnected', async () => {
    const t = await start()
    const desktop = await endpoint(t, 'desk-1', 'desktop', ['slow.op'])
    const web = typed(t, { clientId: 'web-1', kind: 'web' })
    await waitFor(() => web.state.transport === 'websocket', 3000, 'connected')
    const pending = rejection(web.call('desk-1', 'slow.op', {}))
    const delivered = await desktop.next((frame) => frame.type === 'call')
    web.close()
    const error = await pending
    expect(error).toBeInstanceOf(RpcCallError)
    expect([error.code, error.message]).toEqual(['disconnected', 'client closed'])
    // On the server the call was released with the caller: the late answer is an unknown call.
    await waitFor(async () => !(await getJson(`${t.url}/api/presence`)).body.clients.some((c: any) => c.clientId === 'web-1' && c.socketOpen), 3000, 'web-1 gone')
    desktop.send({ type: 'result', id: delivered.id, success: true, data: 'late' })
    expect(await desktop.next((frame) => frame.type === 'error')).toEqual(unknownCall(delivered.id))
  })

  test('jwt mode through the typed client: the other user’s desktop is never reached', async () => {
    const t = await start(jwtMode)
    const desktop = typed(t, { clientId: 'desk-a', kind: 'desktop', token: () => jwt('alice', 'acme') })
    let calls = 0
    desktop.handle('math.add', ({ a, b }) => {
      calls++
      return a + b
    })
    const own = typed(t, { clientId: 'web-a', kind: 'web', token: () => jwt('alice', 'acme') })
    const other = typed(t, { clientId: 'web-b', kind: 'web', token: () => jwt('bob', 'acme') })
    await waitFor(() => own.state.transport === 'websocket' && other.state.transport === 'websocket', 3000, 'connected')
    await waitFor(async () => (await getJson(`${t.url}/api/presence`, { authorization: `Bearer ${await jwt('alice', 'acme')}` })).body.clients.some((c: any) => c.clientId === 'desk-a' && c.methods?.length === 1), 3000, 'the desktop announced')
    expect(await own.call('desktop', 'math.add', { a: 1, b: 2 })).toBe(3)
    const refused = await rejection(other.call('desktop', 'math.add', { a: 1, b: 2 }))
    expect([refused.code, refused.message]).toEqual(['target_not_connected', 'no connected client "desktop"'])
    expect(calls).toBe(1)
  })
})
