import { afterEach, describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import type { Server, Subprocess } from 'bun'
import { spawnService, type ServiceProcess } from '../helpers/process'
import { getJson, ingest, makeEvent, tempDir, waitFor } from '../helpers/server'
import { TestSocket } from '../helpers/ws'

const ROOT = join(import.meta.dir, '..', '..')

const procs: Subprocess[] = []
const sockets: TestSocket[] = []
const blockers: Server<undefined>[] = []
const dirs: Array<() => void> = []

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  for (const proc of procs.splice(0)) {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(9)
    await proc.exited
  }
  for (const blocker of blockers.splice(0)) await blocker.stop(true)
  for (const cleanup of dirs.splice(0)) cleanup()
})

function dbFile(): string {
  const tmp = tempDir()
  dirs.push(tmp.cleanup)
  return join(tmp.dir, 'realtime.db')
}

async function start(env: Record<string, string>, args: string[] = []): Promise<ServiceProcess> {
  const service = await spawnService(env, args)
  procs.push(service.proc)
  return service
}

async function openSocket(service: ServiceProcess): Promise<TestSocket> {
  const socket = await TestSocket.open(`${service.url.replace('http', 'ws')}/ws`)
  sockets.push(socket)
  return socket
}

/** Sends `signal` and resolves with the exit code (bounded: a hung process fails the test instead of hanging it). */
async function signalAndWait(service: ServiceProcess, signal: NodeJS.Signals): Promise<number> {
  service.proc.kill(signal)
  const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 8000).unref())
  const code = await Promise.race([service.exited, timeout])
  if (code === 'timeout') throw new Error(`service did not exit within 8 s of ${signal}`)
  return code
}

/**
 * Graceful stop of a service that has answered HTTP: one /health round trip first, because a signal
 * sent the instant the `listening` line appears is a separate case (see its own test below).
 */
async function terminate(service: ServiceProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<number> {
  expect((await getJson(`${service.url}/health`)).status).toBe(200)
  return signalAndWait(service, signal)
}

/** Runs main.ts with a setting expected to stop it; returns exit code and its JSON log lines. */
async function runToExit(env: Record<string, string | undefined>, args: string[] = []) {
  const base: Record<string, string | undefined> = { ...process.env }
  for (const name of Object.keys(base)) if (name.startsWith('REALTIME_')) delete base[name]
  const proc = Bun.spawn(['bun', join(ROOT, 'src/main.ts'), ...args], {
    cwd: ROOT,
    env: { ...base, REALTIME_HOST: '127.0.0.1', REALTIME_PORT: '0', REALTIME_DB: ':memory:', ...env },
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
  })
  procs.push(proc)
  const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 8000).unref())
  const code = await Promise.race([proc.exited, timeout])
  if (code === 'timeout') throw new Error('service did not exit on a bad setting')
  const stdout = await new Response(proc.stdout).text()
  const stderr = await new Response(proc.stderr).text()
  const lines = stdout.split('\n').filter(Boolean).map((line) => JSON.parse(line))
  return { code, lines, stderr }
}

async function history(service: ServiceProcess, query = ''): Promise<any> {
  const { status, body } = await getJson(`${service.url}/api/events/since${query}`)
  expect(status).toBe(200)
  return body
}

async function freePort(): Promise<number> {
  const probe = Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: () => new Response('') })
  const port = probe.port!
  await probe.stop(true)
  return port
}

test('prints one listening line with the real port and url', async () => {
  const service = await start({ REALTIME_DB: dbFile() })
  expect(service.port).toBeGreaterThan(0)
  expect(service.url).toBe(`http://127.0.0.1:${service.port}`)
  const listening = service.logs.filter((line) => line.event === 'listening')
  expect(listening).toHaveLength(1)
  expect(listening[0]).toMatchObject({ level: 'info', event: 'listening', port: service.port, url: service.url, ts: expect.any(String) })
  const health = await getJson(`${service.url}/health`)
  expect(health.status).toBe(200)
  expect(health.body).toMatchObject({ status: 'ok', eventsStored: 0 })
  expect(await terminate(service)).toBe(0)
})

test('restart replays every event with the same seqs; new events get larger seqs', async () => {
  const db = dbFile()
  const first = await start({ REALTIME_DB: db })
  const events = [
    makeEvent({ type: 'agent.spawned', payload: { agentId: 'a', agentName: 'coder', taskId: 't1' } }),
    makeEvent(),
    makeEvent({ channels: ['custom:x'] }),
    makeEvent(),
  ]
  expect((await ingest(first.url, events[0])).body).toEqual({ stored: 1, duplicates: 0 })
  expect((await ingest(first.url, { events: events.slice(1) })).body).toEqual({ stored: 3, duplicates: 0 })
  const before = await history(first)
  expect(before.events.map((e: any) => e.seq)).toEqual([1, 2, 3, 4])
  expect(await terminate(first)).toBe(0)
  await waitFor(() => first.logs.some((line) => line.event === 'stopped'), 2000, 'stopped log line')

  const second = await start({ REALTIME_DB: db })
  expect((await getJson(`${second.url}/health`)).body.eventsStored).toBe(4)
  const socket = await openSocket(second)
  const subscribed = await socket.request({ type: 'subscribe', channelId: 'org:local', since: 0 }, 'subscribed')
  expect(subscribed).toEqual({ type: 'subscribed', channelId: 'org:local', epoch: before.epoch, since: 0 })
  const replayed = await socket.events('org:local', 3)
  expect(replayed).toEqual([
    { ...events[0], seq: 1, channelId: 'org:local' },
    { ...events[1], seq: 2, channelId: 'org:local' },
    { ...events[3], seq: 4, channelId: 'org:local' },
  ])
  const custom = await socket.request({ type: 'subscribe', channelId: 'custom:x', since: 0 }, 'subscribed')
  expect(custom.truncated).toBeUndefined()
  const { channels: _channels, ...onCustom } = events[2] as Record<string, unknown>
  expect(await socket.events('custom:x', 1)).toEqual([{ ...onCustom, seq: 3, channelId: 'custom:x' }])
  expect((await history(second)).events).toEqual(before.events)

  // New events continue after the old ones; an old id is still a duplicate.
  const fresh = makeEvent()
  expect((await ingest(second.url, fresh)).body).toEqual({ stored: 1, duplicates: 0 })
  expect((await ingest(second.url, events[1])).body).toEqual({ stored: 0, duplicates: 1 })
  const [live] = await socket.events('org:local', 1)
  expect(live).toEqual({ ...fresh, seq: 5, channelId: 'org:local' })
  expect(await terminate(second)).toBe(0)

  // And once more: the seq counter survives a restart with nothing in between.
  const third = await start({ REALTIME_DB: db })
  const next = makeEvent()
  expect((await ingest(third.url, next)).body).toEqual({ stored: 1, duplicates: 0 })
  const all = await history(third)
  // (The duplicate above may have used up a seq: gaps are allowed, reuse is not.)
  expect(all.events.map((e: any) => e.seq).slice(0, 5)).toEqual([1, 2, 3, 4, 5])
  expect(all.events).toHaveLength(6)
  expect(all.events.at(-1).id).toBe(next.id)
  expect(all.events.at(-1).seq).toBeGreaterThan(5)
  expect(all.epoch).toBe(before.epoch)
  expect(await terminate(third)).toBe(0)
})

test('kill -9 right after a 200 from /ingest keeps the events', async () => {
  const db = dbFile()
  const first = await start({ REALTIME_DB: db })
  const single = makeEvent()
  const batch = Array.from({ length: 200 }, () => makeEvent())
  expect((await ingest(first.url, single)).status).toBe(200)
  const response = await ingest(first.url, { events: batch })
  expect(response).toMatchObject({ status: 200, body: { stored: 200, duplicates: 0 } })
  first.proc.kill(9)
  await first.exited
  expect(first.proc.signalCode).toBe('SIGKILL')

  const second = await start({ REALTIME_DB: db })
  expect((await getJson(`${second.url}/health`)).body.eventsStored).toBe(201)
  const body = await history(second, '?limit=1000')
  expect(body.events.map((e: any) => e.id)).toEqual([single, ...batch].map((e) => e.id))
  expect(body.events.at(-1).seq).toBe(201)
  expect(body.events[0]).toEqual({ ...single, seq: 1, channels: ['org:local'] })
  // The seq counter survived the crash too.
  const next = makeEvent()
  await ingest(second.url, next)
  expect((await history(second, '?since=201')).events.map((e: any) => [e.id, e.seq])).toEqual([[next.id, 202]])
  expect(await terminate(second)).toBe(0)
})

describe('graceful shutdown', () => {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    test(`${signal}: connected sockets get close 1001 and the process exits 0`, async () => {
      const service = await start({ REALTIME_DB: dbFile() })
      const subscribed = await openSocket(service)
      await subscribed.request({ type: 'subscribe', channelId: 'org:local' }, 'subscribed')
      const idle = await openSocket(service)
      await waitFor(async () => (await getJson(`${service.url}/health`)).body.connections === 2, 5000, 'two connections')
      const code = await terminate(service, signal)
      expect((await subscribed.waitClosed()).code).toBe(1001)
      expect((await idle.waitClosed()).code).toBe(1001)
      expect(code).toBe(0)
      await waitFor(() => service.logs.some((line) => line.event === 'stopped'), 2000, 'stopped log line')
      expect(service.logs.find((line) => line.event === 'shutdown')).toMatchObject({ level: 'info', signal })
      expect(service.logs.filter((line) => line.level === 'error')).toEqual([])
    })
  }
})

test('SIGTERM sent as soon as the listening line appears still shuts down gracefully (exit 0)', async () => {
  const codes: number[] = []
  for (let i = 0; i < 3; i++) {
    const service = await start({ REALTIME_DB: dbFile() })
    codes.push(await signalAndWait(service, 'SIGTERM'))
  }
  // 143 = killed by the default SIGTERM action: no 1001 close, no flush, no database close.
  expect(codes).toEqual([0, 0, 0])
})

test('port fallback: a taken port → the next free one (≤ +20) and a warn line', async () => {
  const blocker = Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: () => new Response('blocker') })
  blockers.push(blocker)
  const taken = blocker.port!
  const service = await start({ REALTIME_DB: dbFile(), REALTIME_PORT: String(taken) })
  expect(service.port).toBeGreaterThan(taken)
  expect(service.port).toBeLessThanOrEqual(taken + 20)
  expect(service.url).toBe(`http://127.0.0.1:${service.port}`)
  const warnings = service.logs.filter((line) => line.level === 'warn')
  expect(warnings.length).toBeGreaterThanOrEqual(1)
  expect(warnings.some((line) => JSON.stringify(line).includes(String(taken)))).toBe(true)
  expect(warnings.find((line) => line.event === 'port_fallback')).toMatchObject({ wanted: taken, port: service.port })
  // The service really answers there, and the blocker still owns its port.
  expect((await getJson(`${service.url}/health`)).body.status).toBe('ok')
  expect(await (await fetch(`http://127.0.0.1:${taken}/`)).text()).toBe('blocker')
  expect(await terminate(service)).toBe(0)
})

test('the --port flag mirrors REALTIME_PORT (and wins over it)', async () => {
  const port = await freePort()
  const service = await start({ REALTIME_DB: dbFile(), REALTIME_PORT: '0' }, ['--port', String(port)])
  expect(service.port).toBe(port)
  expect(service.url).toBe(`http://127.0.0.1:${port}`)
  expect(await terminate(service)).toBe(0)

  const blocker = Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: () => new Response('blocker') })
  blockers.push(blocker)
  const fallback = await start({ REALTIME_DB: dbFile() }, [`--port=${blocker.port}`])
  expect(fallback.port).toBeGreaterThan(blocker.port!)
  expect(fallback.port).toBeLessThanOrEqual(blocker.port! + 20)
  expect(fallback.logs.some((line) => line.level === 'warn')).toBe(true)
  expect(await terminate(fallback)).toBe(0)
})

describe('a bad setting stops the start: exit 2 and one error line naming it', () => {
  const cases: Array<[string, Record<string, string | undefined>, string[], string]> = [
    ['REALTIME_PORT=abc', { REALTIME_PORT: 'abc' }, [], 'REALTIME_PORT'],
    ['REALTIME_PORT=70000', { REALTIME_PORT: '70000' }, [], 'REALTIME_PORT'],
    ['REALTIME_RATE_LIMIT=lots', { REALTIME_RATE_LIMIT: 'lots' }, [], 'REALTIME_RATE_LIMIT'],
    ['REALTIME_AUTH=jwt without secret', { REALTIME_AUTH: 'jwt' }, [], 'REALTIME_JWT_SECRET'],
    ['REALTIME_AUTH=basic', { REALTIME_AUTH: 'basic' }, [], 'REALTIME_AUTH'],
    ['REALTIME_RETENTION_HOURS=-1', { REALTIME_RETENTION_HOURS: '-1' }, [], 'REALTIME_RETENTION_HOURS'],
    ['REALTIME_MAX_BODY_BYTES=100', { REALTIME_MAX_BODY_BYTES: '100' }, [], 'REALTIME_MAX_BODY_BYTES'],
    ['--port abc', {}, ['--port', 'abc'], 'REALTIME_PORT'],
    ['--rate-limit=lots', {}, ['--rate-limit=lots'], 'REALTIME_RATE_LIMIT'],
    ['unknown flag --nope', {}, ['--nope', '1'], '--nope'],
  ]
  for (const [name, env, args, setting] of cases) {
    test(name, async () => {
      const { code, lines, stderr } = await runToExit(env, args)
      expect(code).toBe(2)
      expect(lines).toHaveLength(1)
      expect(lines[0]).toMatchObject({ level: 'error', event: 'invalid_config', ts: expect.any(String) })
      expect(lines[0].message).toContain(setting)
      expect(stderr).toBe('')
    })
  }
})
