import { afterEach, describe, expect, test } from 'bun:test'
import { Database } from 'bun:sqlite'
import { createHash } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Subprocess } from 'bun'
import { runKeys } from '../../src/cli/keys'
import { getJson, ingest, makeEvent, startServer, tempDir, type TestServer } from '../helpers/server'
import { TestSocket } from '../helpers/ws'
import { bearer, exitWithin, killChild, SECRET } from './support'

/**
 * API keys end to end: the `keys` CLI as a real subprocess (create / list / revoke, exit codes
 * 0 / 1 / 2), what the database keeps (only a SHA-256), and a `jwt`-mode server on the same file
 * accepting, scoping, refusing (revoked, expired, garbage) keys over HTTP and WebSocket.
 */

const ROOT = join(import.meta.dir, '..', '..')
const KEY_PATTERN = /^sbk_[A-Za-z0-9_-]{43}$/
const ID_PATTERN = /^key_[0-9a-f]{12}$/
const DAY = 86_400_000

const children: Subprocess[] = []
const servers: TestServer[] = []
const sockets: TestSocket[] = []
const cleanups: Array<() => void> = []

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  for (const child of children.splice(0)) await killChild(child)
  for (const server of servers.splice(0)) await server.close()
  for (const cleanup of cleanups.splice(0)) cleanup()
})

/** A fresh database path in a temp dir owned by the test. */
function dbFile(): string {
  const tmp = tempDir()
  cleanups.push(tmp.cleanup)
  return join(tmp.dir, 'realtime.db')
}

/** The environment of a child: this one's, without any REALTIME_ setting, plus `extra`. */
function childEnv(extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [name, value] of Object.entries(process.env)) if (!name.startsWith('REALTIME_') && value !== undefined) env[name] = value
  return { ...env, ...extra }
}

/** `bun src/cli/keys.ts …args` with REALTIME_DB=db: exit code, stdout, stderr. */
async function keys(db: string, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const proc = Bun.spawn(['bun', join(ROOT, 'src/cli/keys.ts'), ...args], {
    cwd: ROOT,
    env: childEnv({ REALTIME_DB: db }),
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
  })
  children.push(proc)
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), exitWithin(proc, 10_000)])
  return { code, out, err }
}

interface Created {
  key: string
  id: string
  orgId: string
  label: string
  createdAt: number
  expiresAt: number | null
  lastUsedAt: number | null
  revokedAt: number | null
}

async function createKey(db: string, org = 'acme', label = 'cloud', ...extra: string[]): Promise<Created> {
  const result = await keys(db, 'create', '--org', org, '--label', label, '--json', ...extra)
  expect(result).toEqual({ code: 0, out: expect.any(String), err: '' })
  return JSON.parse(result.out)
}

async function listKeys(db: string, ...extra: string[]): Promise<any[]> {
  const result = await keys(db, 'list', '--json', ...extra)
  expect(result).toEqual({ code: 0, out: expect.any(String), err: '' })
  return JSON.parse(result.out)
}

async function jwtServer(dbPath: string): Promise<TestServer> {
  const server = await startServer({ dbPath, auth: { mode: 'jwt', secret: SECRET } })
  servers.push(server)
  return server
}

async function open(url: string): Promise<TestSocket> {
  const socket = await TestSocket.open(url)
  sockets.push(socket)
  return socket
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex')

describe('the keys CLI', () => {
  test('create prints the key once; the database keeps only its SHA-256', async () => {
    const db = dbFile()
    const before = Date.now()
    const created = await createKey(db)
    expect(created).toEqual({
      key: expect.stringMatching(KEY_PATTERN),
      id: expect.stringMatching(ID_PATTERN),
      orgId: 'acme',
      label: 'cloud',
      createdAt: expect.any(Number),
      expiresAt: null,
      lastUsedAt: null,
      revokedAt: null,
    })
    expect(created.createdAt).toBeGreaterThanOrEqual(before)
    expect(created.createdAt).toBeLessThanOrEqual(Date.now())

    // The human form: the key on exactly one line, once.
    const text = await keys(db, 'create', '--org', 'acme', '--label', 'second one')
    expect(text.code).toBe(0)
    expect(text.err).toBe('')
    const lines = text.out.trimEnd().split('\n')
    expect(lines).toHaveLength(3)
    expect(lines[0]).toMatch(/^created key_[0-9a-f]{12} for org acme \(second one\)$/)
    expect(lines[1]).toMatch(/^key: sbk_[A-Za-z0-9_-]{43}$/)
    expect(lines[2]).toContain('shown only now')
    const second = lines[1]!.slice('key: '.length)
    expect(text.out.split(second)).toHaveLength(2)
    expect(second).not.toBe(created.key)

    // What is on disk: the hash of each key, never the key nor its random part.
    const sqlite = new Database(db, { readonly: true })
    try {
      const rows = sqlite.query('SELECT id, org_id, label, hash FROM api_keys ORDER BY created_at').all() as any[]
      expect(rows).toEqual([
        { id: created.id, org_id: 'acme', label: 'cloud', hash: sha256(created.key) },
        { id: expect.stringMatching(ID_PATTERN), org_id: 'acme', label: 'second one', hash: sha256(second) },
      ])
      const tables = sqlite.query("SELECT name FROM sqlite_master WHERE type = 'table'").all() as Array<{ name: string }>
      expect(tables.map((t) => t.name)).toContain('api_keys')
      let values = 0
      for (const { name } of tables) {
        for (const row of sqlite.query(`SELECT * FROM "${name}"`).all() as Array<Record<string, unknown>>) {
          for (const value of Object.values(row)) {
            values++
            const text = value instanceof Uint8Array ? new TextDecoder().decode(value) : String(value)
            for (const key of [created.key, second]) {
              expect(text).not.toContain(key)
              expect(text).not.toContain(key.slice(4))
            }
          }
        }
      }
      expect(values).toBeGreaterThan(10)
    } finally {
      sqlite.close()
    }
    // …and not in the raw bytes either (the file and its WAL).
    for (const file of [db, `${db}-wal`]) {
      if (!existsSync(file)) continue
      const bytes = readFileSync(file).toString('latin1')
      for (const key of [created.key, second]) expect(bytes.includes(key.slice(4))).toBe(false)
    }
  })

  test('list never prints a key; --org filters; --json has no key and no hash', async () => {
    const db = dbFile()
    expect(await keys(db, 'list')).toEqual({ code: 0, out: 'no keys\n', err: '' })
    const acme = await createKey(db, 'acme', 'cloud')
    const other = await createKey(db, 'other', 'ci')

    const text = await keys(db, 'list')
    expect(text.code).toBe(0)
    expect(text.err).toBe('')
    const lines = text.out.trimEnd().split('\n')
    expect(lines).toHaveLength(2)
    expect(lines[0]).toMatch(new RegExp(`^${acme.id}  active   org=acme  label="cloud"  created=\\S+  expires=-  lastUsed=-$`))
    expect(lines[1]).toMatch(new RegExp(`^${other.id}  active   org=other  label="ci"  `))
    for (const key of [acme, other]) {
      expect(text.out).not.toContain(key.key.slice(4))
      expect(text.out).not.toContain(sha256(key.key))
    }

    const json = await keys(db, 'list', '--json')
    expect(json.code).toBe(0)
    const { key: _a, ...acmeRecord } = acme
    const { key: _o, ...otherRecord } = other
    expect(JSON.parse(json.out)).toEqual([acmeRecord, otherRecord])
    for (const key of [acme, other]) {
      expect(json.out).not.toContain(key.key.slice(4))
      expect(json.out).not.toContain(sha256(key.key))
    }
    expect(await listKeys(db, '--org', 'other')).toEqual([otherRecord])
    expect(await listKeys(db, '--org', 'nobody')).toEqual([])
  })

  test('bad usage exits 2 with a message, an unknown key id exits 1, --help exits 0', async () => {
    const db = dbFile()
    const cases: Array<[string[], string]> = [
      [[], 'usage: bun run keys <command>'],
      [['frobnicate'], 'unknown command "frobnicate"'],
      [['create', '--label', 'x'], 'create needs --org <orgId>'],
      [['create', '--org', 'not an org!', '--label', 'x'], 'create needs --org <orgId>'],
      [['create', '--org', 'acme'], 'create needs --label <text>'],
      [['create', '--org', 'acme', '--label', '   '], 'create needs --label <text>'],
      [['create', '--org', 'acme', '--label', 'x', '--expires-days', '0'], '--expires-days must be a positive number'],
      [['create', '--org', 'acme', '--label', 'x', '--expires-days', 'soon'], '--expires-days must be a positive number'],
      [['create', '--org', 'acme', '--label', 'x', '--bogus'], "Unknown option '--bogus'"],
      [['list', '--org', 'not an org!'], '--org is not a valid organisation id'],
      [['revoke'], 'revoke needs the key id'],
    ]
    const results = await Promise.all(cases.map(([args]) => keys(db, ...args)))
    results.forEach((result, i) => {
      const [args, message] = cases[i]!
      expect({ args, code: result.code, out: result.out }).toEqual({ args, code: 2, out: '' })
      expect(result.err).toContain(message)
      expect(result.err).toContain('usage: bun run keys')
    })
    // None of them created anything.
    expect(await listKeys(db)).toEqual([])

    expect(await keys(db, 'revoke', 'key_000000000000')).toEqual({ code: 1, out: '', err: 'no active key key_000000000000\n' })
    const help = await keys(db, '--help')
    expect(help.code).toBe(0)
    expect(help.err).toBe('')
    expect(help.out).toContain('usage: bun run keys <command>')
  })
})

describe('a jwt-mode server on the same database', () => {
  test('a key ingests for its own organisation (200), not another (403); lastUsedAt gets set', async () => {
    const db = dbFile()
    const created = await createKey(db)
    const t = await jwtServer(db)

    const own = makeEvent({ orgId: 'acme', userId: 'svc' })
    expect(await ingest(t.url, own, bearer(created.key))).toMatchObject({ status: 200, body: { stored: 1, duplicates: 0 } })
    const foreign = makeEvent({ orgId: 'other', userId: 'svc' })
    const refused = await ingest(t.url, foreign, bearer(created.key))
    expect(refused.status).toBe(403)
    expect(refused.body.error.code).toBe('forbidden')
    expect((await getJson(`${t.url}/health`)).body.eventsStored).toBe(1)

    // Reading is scoped to the key's organisation too.
    const page = await getJson(`${t.url}/api/events/since?since=0`, bearer(created.key))
    expect(page.status).toBe(200)
    expect(page.body.events.map((e: any) => e.id)).toEqual([own.id])
    expect((await getJson(`${t.url}/api/events/since?channel=org:other`, bearer(created.key))).status).toBe(403)

    const [record] = await listKeys(db)
    expect(record.id).toBe(created.id)
    expect(record.lastUsedAt).toEqual(expect.any(Number))
    expect(record.lastUsedAt).toBeGreaterThanOrEqual(created.createdAt)
    expect(record.lastUsedAt).toBeLessThanOrEqual(Date.now())
  })

  test('revoke refuses the very next request (401), over HTTP and WebSocket', async () => {
    const db = dbFile()
    const created = await createKey(db)
    const keep = await createKey(db, 'acme', 'unrelated')
    const t = await jwtServer(db)
    expect((await ingest(t.url, makeEvent({ orgId: 'acme' }), bearer(created.key))).status).toBe(200)

    expect(await keys(db, 'revoke', created.id)).toEqual({ code: 0, out: `revoked ${created.id}\n`, err: '' })
    const refused = await ingest(t.url, makeEvent({ orgId: 'acme' }), bearer(created.key))
    expect(refused.status).toBe(401)
    expect(refused.body).toEqual({ error: { code: 'unauthorized', message: expect.any(String) } })
    expect(refused.headers.get('www-authenticate')).toBe('Bearer')
    expect(refused.body.error.message).not.toContain(created.key)
    expect((await getJson(`${t.url}/api/events/since`, bearer(created.key))).status).toBe(401)
    expect((await getJson(`${t.url}/health`)).body.eventsStored).toBe(1)

    const socket = await open(`${t.wsUrl}?token=${created.key}`)
    expect((await socket.waitClosed()).code).toBe(4401)

    // The other key is untouched; revoking twice fails; list says revoked.
    expect((await ingest(t.url, makeEvent({ orgId: 'acme' }), bearer(keep.key))).status).toBe(200)
    expect(await keys(db, 'revoke', created.id)).toEqual({ code: 1, out: '', err: `no active key ${created.id}\n` })
    const list = await keys(db, 'list')
    expect(list.out).toMatch(new RegExp(`^${created.id}  revoked  org=acme`, 'm'))
    expect(list.out).toMatch(new RegExp(`^${keep.id}  active   org=acme`, 'm'))
    const records = await listKeys(db)
    expect(records.find((r) => r.id === created.id).revokedAt).toEqual(expect.any(Number))
  })

  test('an expired key is refused (401): created with a past clock, or its expiry moved into the past', async () => {
    const db = dbFile()
    // Created two days ago with a one-day expiry (runKeys with a fake clock).
    const out: string[] = []
    const err: string[] = []
    const io = { out: (line: string) => out.push(line), err: (line: string) => err.push(line) }
    const past = Date.now() - 2 * DAY
    expect(runKeys(['create', '--org', 'acme', '--label', 'old', '--expires-days', '1', '--json'], { REALTIME_DB: db }, io, () => past)).toBe(0)
    expect(err).toEqual([])
    const old = JSON.parse(out[0]!)
    expect(old.createdAt).toBe(past)
    expect(old.expiresAt).toBe(past + DAY)

    // Created now with a one-day expiry: valid, until its expiry is moved into the past.
    const fresh = await createKey(db, 'acme', 'fresh', '--expires-days', '1')
    // (expiresAt is computed from the clock read a moment before createdAt's.)
    expect(fresh.expiresAt! - fresh.createdAt).toBeGreaterThan(DAY - 1000)
    expect(fresh.expiresAt! - fresh.createdAt).toBeLessThanOrEqual(DAY)

    const t = await jwtServer(db)
    const expired = await ingest(t.url, makeEvent({ orgId: 'acme' }), bearer(old.key))
    expect(expired.status).toBe(401)
    expect(expired.body.error.code).toBe('unauthorized')
    expect((await ingest(t.url, makeEvent({ orgId: 'acme' }), bearer(fresh.key))).status).toBe(200)

    const sqlite = new Database(db)
    try {
      sqlite.query('UPDATE api_keys SET expires_at = ? WHERE id = ?').run(Date.now() - 1000, fresh.id)
    } finally {
      sqlite.close()
    }
    expect((await ingest(t.url, makeEvent({ orgId: 'acme' }), bearer(fresh.key))).status).toBe(401)
    const socket = await open(t.wsUrl)
    socket.send({ type: 'auth', token: fresh.key })
    expect((await socket.waitClosed()).code).toBe(4401)
    expect((await getJson(`${t.url}/health`)).body.eventsStored).toBe(1)

    const list = await keys(db, 'list')
    expect(list.out).toMatch(new RegExp(`^${old.id}  expired  org=acme`, 'm'))
    expect(list.out).toMatch(new RegExp(`^${fresh.id}  expired  org=acme`, 'm'))
  })

  test('garbage keys are 401: random sbk_, a one-character change, the stored hash', async () => {
    const db = dbFile()
    const created = await createKey(db)
    const t = await jwtServer(db)
    const last = created.key.at(-1)!
    const garbage = [
      `sbk_${'A'.repeat(43)}`,
      'sbk_',
      'sbk_not-a-key',
      created.key.slice(0, -1) + (last === 'A' ? 'B' : 'A'),
      `${created.key}x`,
      sha256(created.key),
      `sbk_${sha256(created.key)}`,
    ]
    for (const key of garbage) {
      const response = await ingest(t.url, makeEvent({ orgId: 'acme' }), bearer(key))
      expect({ key, status: response.status, code: response.body.error?.code }).toEqual({ key, status: 401, code: 'unauthorized' })
    }
    expect((await getJson(`${t.url}/health`)).body.eventsStored).toBe(0)
    // The real one still works (nothing above disturbed it).
    expect((await ingest(t.url, makeEvent({ orgId: 'acme' }), bearer(created.key))).status).toBe(200)

    const socket = await open(t.wsUrl)
    socket.send({ type: 'auth', token: garbage[0] })
    expect((await socket.waitClosed()).code).toBe(4401)
  })

  test('a key authenticates a WebSocket by ?token= and by auth message, as key:<id> of its organisation', async () => {
    const db = dbFile()
    const created = await createKey(db)
    const t = await jwtServer(db)

    const byQuery = await open(`${t.wsUrl}?token=${created.key}`)
    expect(await byQuery.next()).toEqual({ type: 'authenticated', userId: `key:${created.id}`, orgId: 'acme' })
    const byMessage = await open(t.wsUrl)
    byMessage.send({ type: 'auth', token: created.key })
    expect(await byMessage.next()).toEqual({ type: 'authenticated', userId: `key:${created.id}`, orgId: 'acme' })

    for (const socket of [byQuery, byMessage]) {
      socket.send({ type: 'subscribe', channelId: 'org:acme' })
      expect(await socket.next()).toEqual({ type: 'subscribed', channelId: 'org:acme', epoch: expect.any(String), lastSeq: 0 })
    }
    byQuery.send({ type: 'subscribe', channelId: 'org:other' })
    expect(await byQuery.next()).toMatchObject({ type: 'error', code: 'forbidden', channelId: 'org:other' })

    const event = makeEvent({ orgId: 'acme', userId: 'svc' })
    expect((await ingest(t.url, event, bearer(created.key))).status).toBe(200)
    for (const socket of [byQuery, byMessage]) {
      const [frame] = await socket.events('org:acme', 1)
      expect(frame).toMatchObject({ id: event.id, seq: 1, orgId: 'acme', channelId: 'org:acme' })
    }

    // stats reports the key's principal as a connected user of acme.
    byMessage.send({ type: 'request', id: 'r1', action: 'stats' })
    const stats = await byMessage.next((f) => f.type === 'response')
    expect(stats.success).toBe(true)
    expect(stats.data.subscriptions).toEqual(['org:acme'])
  })
})
