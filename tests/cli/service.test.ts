import { afterEach, describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import { SignJWT } from 'jose'
import { createRealtimeServer } from '../../src/server'
import { silentLogger } from '../../src/log'
import { getJson, ingest, makeEvent, startServer, tempDir, type TestServer } from '../helpers/server'
import { CliProcess, runCli } from './helpers'

/** serve, prune and keys (the database commands), jwt credentials, and tail across a restart. */

const HOUR = 3_600_000
const cleanups: Array<() => Promise<void> | void> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

function dbFile(): string {
  const tmp = tempDir()
  cleanups.push(tmp.cleanup)
  return join(tmp.dir, 'realtime.db')
}
async function server(options: Parameters<typeof startServer>[0] = {}): Promise<TestServer> {
  const t = await startServer(options)
  cleanups.push(() => t.close())
  return t
}
function spawn(args: string[], env: Record<string, string> = {}): CliProcess {
  const proc = new CliProcess(args, env)
  cleanups.push(() => proc.kill())
  return proc
}

describe('serve', () => {
  test('prints the listening line, serves, and exits 0 on SIGTERM after a graceful stop', async () => {
    const db = dbFile()
    const proc = spawn(['serve', '--port', '0', '--db', db], { REALTIME_HOST: '127.0.0.1', REALTIME_LOG_LEVEL: 'info' })
    const listening = JSON.parse(await proc.line('out', '"event":"listening"'))
    const url: string = listening.url
    expect(url).toBe(`http://127.0.0.1:${listening.port}`)
    expect(listening).toMatchObject({ level: 'info', host: '127.0.0.1', db, auth: 'none' })
    expect((await getJson(`${url}/health`)).status).toBe(200)

    // It is a real service: the client commands work against it.
    const published = await runCli(['publish', 'test.happened', '--payload', '{"n":1}', '--url', url])
    expect(published.code).toBe(0)

    expect(await proc.stop('SIGTERM')).toBe(0)
    const events = proc.out.map((line) => JSON.parse(line).event)
    expect(events.slice(-2)).toEqual(['shutdown', 'stopped'])
    expect(JSON.parse(proc.out.at(-2)!).signal).toBe('SIGTERM')
  })

  test('SIGINT also stops it with exit 0 (switchboard with only settings flags serves)', async () => {
    const proc = spawn(['--port', '0', '--db', ':memory:'], { REALTIME_HOST: '127.0.0.1' })
    await proc.line('out', '"event":"listening"')
    expect(await proc.stop('SIGINT')).toBe(0)
    expect(proc.out.some((line) => line.includes('"event":"stopped"'))).toBe(true)
  })
})

describe('prune', () => {
  test('removes events older than the retention window from the file, beside the running service', async () => {
    const dbPath = dbFile()
    const t = await server({ dbPath, retentionHours: 1 })
    const channel = 'agent:pruned'
    const old = [makeEvent({ timestamp: Date.now() - 3 * HOUR, channels: [channel] }), makeEvent({ timestamp: Date.now() - 2 * HOUR, channels: [channel] })]
    expect((await ingest(t.url, { events: old })).status).toBe(200)
    // An old event published through the CLI (--timestamp) and a recent one.
    const viaCli = await runCli(['publish', 'test.happened', '--channel', channel, '--timestamp', String(Date.now() - 5 * HOUR), '--url', t.url])
    expect(viaCli.code).toBe(0)
    const recent = makeEvent({ channels: [channel] })
    expect((await ingest(t.url, recent)).status).toBe(200)

    const pruned = await runCli(['prune', '--db', dbPath, '--retention-hours', '1'])
    expect(pruned.err).toBe('')
    expect(pruned.code).toBe(0)
    expect(pruned.out).toMatch(new RegExp(`^pruned 3 events older than \\S+Z \\(1 h\\) from ${dbPath.replaceAll('.', '\\.')}\\n$`))

    // The service still runs on the file and sees only the recent event.
    const page = (await getJson(`${t.url}/api/events/since?channel=${channel}`)).body
    expect(page.events.map((e: any) => e.id)).toEqual([recent.id])

    // Settings from the environment; --json; nothing left to prune.
    const again = await runCli(['prune', '--json'], { REALTIME_DB: dbPath, REALTIME_RETENTION_HOURS: '1' })
    expect(again.code).toBe(0)
    expect(JSON.parse(again.out)).toEqual({ pruned: 0, cutoff: expect.any(Number), db: dbPath })
  })

  test('no database file: exit 1, and none is created', async () => {
    const dbPath = dbFile()
    const { code, err } = await runCli(['prune', '--db', dbPath])
    expect(code).toBe(1)
    expect(err).toContain(`switchboard prune: no database at ${dbPath}`)
    expect(await Bun.file(dbPath).exists()).toBe(false)
  })
})

test('keys: routed to the existing keys command, on the same database', async () => {
  const db = dbFile()
  const created = await runCli(['keys', 'create', '--org', 'acme', '--label', 'cloud', '--db', db, '--json'])
  expect(created.code).toBe(0)
  const { key, id } = JSON.parse(created.out)
  expect(key).toStartWith('sbk_')
  const listed = await runCli(['keys', 'list', '--db', db])
  expect(listed.code).toBe(0)
  expect(listed.out).toContain(`${id}  active`)
  const revoked = await runCli(['keys', 'revoke', 'key_nope', '--db', db])
  expect(revoked.code).toBe(1)
  expect(revoked.err).toContain('no active key key_nope')
})

describe('jwt mode: --token / REALTIME_TOKEN', () => {
  const SECRET = 'switchboard-cli-test-secret-0123456789'
  const token = (org: string) =>
    new SignJWT({ org }).setProtectedHeader({ alg: 'HS256' }).setSubject('u1').setExpirationTime('1h').sign(new TextEncoder().encode(SECRET))

  test('without a token: refused in plain words (exit 1); with one: accepted', async () => {
    const t = await server({ auth: { mode: 'jwt', secret: SECRET } })
    const jwt = await token('acme')
    const [refused, tailRefused, published] = await Promise.all([
      runCli(['publish', 'test.happened', '--org', 'acme', '--url', t.url]),
      runCli(['tail', 'org:acme', '--url', t.url]),
      // org and user default to the token's claims.
      runCli(['publish', 'test.happened', '--payload', '{"k":"v"}', '--url', t.url, '--token', jwt]),
    ])
    expect(refused.code).toBe(1)
    expect(refused.err).toContain('switchboard publish: the server refused the credentials')
    expect(refused.err).toContain('--token or set REALTIME_TOKEN')
    expect(tailRefused.code).toBe(1)
    expect(tailRefused.err).toContain('switchboard tail: the server refused the credentials')
    expect(published.code).toBe(0)

    const [history, stats] = await Promise.all([
      runCli(['history', 'org:acme', '--json', '--url', t.url], { REALTIME_TOKEN: jwt }),
      runCli(['stats', '--json', '--url', t.url, '--token', jwt]),
    ])
    expect(JSON.parse(history.out)).toMatchObject({ orgId: 'acme', userId: 'u1', payload: { k: 'v' } })
    expect(stats.code).toBe(0)
    expect(JSON.parse(stats.out)).toMatchObject({ eventsStored: 1, lastSeq: 1 })

    // stats with a bad token: the open /health figures, then the refusal (exit 1).
    const badStats = await runCli(['stats', '--url', t.url, '--token', 'not-a-token'])
    expect(badStats.code).toBe(1)
    expect(badStats.out).toMatch(/^events stored +1$/m)
    expect(badStats.err).toContain('the WebSocket part failed (closed 4401')
  })
})

test('tail follows the service across a restart: reconnects and resumes with no gap', async () => {
  const dbPath = dbFile()
  const first = createRealtimeServer({ host: '127.0.0.1', port: 0, dbPath, logger: silentLogger, rateLimit: null, httpRateLimit: null })
  const { port, url } = await first.start()
  cleanups.push(() => first.stop())
  const proc = spawn(['tail', 'agent:restart', '--url', url])
  await proc.line('err', 'following agent:restart')
  await first.publish({ type: 'test.happened', channels: ['agent:restart'], payload: { n: 1 } })
  await proc.line('out', '{"n":1}')

  await first.stop()
  await proc.line('err', 'connection lost (closed 1001: server shutting down); reconnecting')
  const second = createRealtimeServer({ host: '127.0.0.1', port, dbPath, logger: silentLogger, rateLimit: null, httpRateLimit: null })
  cleanups.push(() => second.stop())
  expect((await second.start()).url).toBe(url)
  // Published while the tail is still disconnected: the resume replays it.
  await second.publish({ type: 'test.happened', channels: ['agent:restart'], payload: { n: 2 } })
  await proc.line('out', '{"n":2}', 8000)
  await proc.line('err', 'reconnected; resuming after seq')
  await second.publish({ type: 'test.happened', channels: ['agent:restart'], payload: { n: 3 } })
  await proc.line('out', '{"n":3}')
  expect(proc.out.map((line) => / #(\d+) /.exec(line)![1])).toEqual(['1', '2', '3'])
  expect(await proc.stop('SIGINT')).toBe(0)
})
