import { Database } from 'bun:sqlite'
import { afterEach, describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import { silentLogger } from '../../src/log'
import { createRealtimeServer, type RealtimeServer } from '../../src/server'
import { getJson, tempDir } from '../helpers/server'
import type { TestSocket } from '../helpers/ws'
import { ev, httpState, ingestAll, openLogged, roundTrip, seqsOf, snapshotOf } from './helpers'

/**
 * The state outlives retention: pruning keeps the latest event of every live entity however old,
 * and removes superseded events, the events of deleted entities, tombstones and events that take
 * no part in state. The state survives a restart, and is rebuilt from the log when it is dropped
 * (no `state_version` in meta).
 */

const HOUR = 3_600_000

interface Running {
  server: RealtimeServer
  url: string
  wsUrl: string
}

const running: RealtimeServer[] = []
const dirs: Array<() => void> = []
const sockets: TestSocket[] = []

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  for (const server of running.splice(0)) await server.stop()
  for (const cleanup of dirs.splice(0)) cleanup()
})

function dbFile(): string {
  const tmp = tempDir()
  dirs.push(tmp.cleanup)
  return join(tmp.dir, 'state.db')
}

/** A server on its own database file (which outlives the server: the temp dir is removed after the test). */
async function boot(dbPath: string): Promise<Running> {
  const server = createRealtimeServer({ host: '127.0.0.1', port: 0, logger: silentLogger, rateLimit: null, httpRateLimit: null, dbPath, retentionHours: 1 })
  running.push(server)
  const { url } = await server.start()
  return { server, url, wsUrl: `${url.replace('http', 'ws')}/ws` }
}

async function halt(r: Running): Promise<void> {
  for (const socket of sockets.splice(0)) socket.close()
  await r.server.stop()
  running.splice(running.indexOf(r.server), 1)
}

/** Drops the state as an old version (or a damaged file) would leave it. */
function dropState(dbPath: string): void {
  const db = new Database(dbPath)
  try {
    db.run('DELETE FROM channel_state')
    db.run("DELETE FROM meta WHERE key = 'state_version'")
    expect(db.query<{ n: number }, []>('SELECT count(*) AS n FROM channel_state').get()!.n).toBe(0)
  } finally {
    db.close()
  }
}

function stateRows(dbPath: string): { rows: unknown[]; version: string | undefined } {
  const db = new Database(dbPath, { readonly: true })
  try {
    return {
      rows: db.query('SELECT org_id, channel, key, seq FROM channel_state ORDER BY org_id, channel, key').all(),
      version: db.query<{ value: string }, []>("SELECT value FROM meta WHERE key = 'state_version'").get()?.value,
    }
  } finally {
    db.close()
  }
}

/** The state of each channel over HTTP, and over a socket that must agree with it. */
async function states(r: Running, channels: string[]): Promise<Record<string, any>> {
  const out: Record<string, any> = {}
  for (const channel of channels) {
    const http = await httpState(r, channel)
    expect(http.status).toBe(200)
    const socket = await openLogged(r.wsUrl, sockets)
    const snapshot = await snapshotOf(socket, channel)
    expect(snapshot.seq).toBe(http.body.seq)
    expect(seqsOf(snapshot.entities)).toEqual(seqsOf(http.body.entities))
    socket.close()
    out[channel] = http.body
  }
  return out
}

async function history(r: Running, channel: string) {
  const { status, body } = await getJson(`${r.url}/api/events/since?channel=${encodeURIComponent(channel)}&since=0&limit=1000`)
  expect(status).toBe(200)
  return { seqs: seqsOf(body.events), truncated: body.truncated === true }
}

const P = 'project:p'
const Q = 'project:q'
const R = 'project:r'

describe('state and retention', () => {
  test('pruning keeps the latest event of every live entity; the state survives a restart and is rebuilt when dropped', async () => {
    const dbPath = dbFile()
    let r = await boot(dbPath)
    const old = Date.now() - 2 * HOUR
    const now = Date.now()
    const at = (timestamp: number, channels: string[], key?: string) => ({ timestamp, channels, ...(key ? { key } : {}) })
    await ingestAll(r, [
      ev('task.created', { taskId: 't1', title: 'x', projectId: 'p' }, at(old, [P])), // 1 superseded → pruned
      ev('task.updated', { taskId: 't1' }, at(old, [P])), // 2 latest of t1 → kept though old
      ev('task.created', { taskId: 't2', title: 'x', projectId: 'p' }, at(old, [P])), // 3 deleted entity → pruned
      ev('task.deleted', { taskId: 't2' }, at(old, [P])), // 4 tombstone → pruned
      ev('log.line', { n: 1 }, at(old, [P])), // 5 no part in state → pruned
      ev('agent.status', { agentId: 'a1', agentName: 'n', status: 's', message: 'm' }, at(old, [P])), // 6 kept (for now)
      ev('deploy.finished', { v: 1 }, at(old, [P], 'deploy:prod')), // 7 superseded → pruned
      ev('deploy.finished', { v: 2 }, at(now, [P], 'deploy:prod')), // 8 kept
      ev('bookmark.saved', { bookmarkId: 'b1' }, at(now, [P])), // 9 kept
      ev('task.created', { taskId: 't3', title: 'x', projectId: 'p' }, at(old, [P, Q])), // 10 latest of t3 in P → kept there; superseded in Q → leaves Q
      ev('task.updated', { taskId: 't3' }, at(now, [Q])), // 11 kept
      ev('task.created', { taskId: 't9', title: 'x', projectId: 'p' }, at(old, [R])), // 12 purged → pruned
      // A deletion after the first unexpired event (8) is kept: what it deleted might still be there.
      ev('tasks.purged', {}, at(old, [R])), // 13 tombstone → kept
      ev('log.line', { n: 2 }, at(now, [P])), // 14 recent → kept
    ])
    const before = await states(r, [P, Q, R])
    expect(seqsOf(before[P].entities)).toEqual([2, 6, 8, 9, 10])
    expect(seqsOf(before[Q].entities)).toEqual([11])
    expect(seqsOf(before[R].entities)).toEqual([])

    expect(await r.server.prune()).toBe(6)
    expect(r.server.health().eventsStored).toBe(8)
    // The state is untouched, and every event it points to is still readable.
    expect(await states(r, [P, Q, R])).toEqual(before)
    expect(await history(r, P)).toEqual({ seqs: [2, 6, 8, 9, 10, 14], truncated: true })
    // 10 stays where it is t3's latest (P) and leaves Q, where 11 superseded it.
    expect(await history(r, Q)).toEqual({ seqs: [11], truncated: true })
    expect(await history(r, R)).toEqual({ seqs: [13], truncated: true })
    // Old but live: a second prune removes nothing.
    expect(await r.server.prune()).toBe(0)

    // Once superseded, an old event goes with the next prune.
    await ingestAll(r, [ev('agent.status', { agentId: 'a1', agentName: 'n', status: 's2', message: 'm' }, at(now, [P]))]) // 15
    expect(await r.server.prune()).toBe(1)
    expect((await history(r, P)).seqs).toEqual([2, 8, 9, 10, 14, 15])
    const pruned = await states(r, [P, Q, R])
    expect(seqsOf(pruned[P].entities)).toEqual([2, 8, 9, 10, 15])
    expect(pruned[P].seq).toBe(15)
    const rowsBefore = stateRows(dbPath)
    expect(rowsBefore.version).toBe('1')
    expect(rowsBefore.rows.length).toBe(6)

    // Restart on the same file: the same state, epoch and seq; the startup prune keeps it all.
    await halt(r)
    r = await boot(dbPath)
    expect(await states(r, [P, Q, R])).toEqual(pruned)
    expect(r.server.health().eventsStored).toBe(8)

    // Drop the state: the restart rebuilds it from the log, before the startup prune could take
    // the old live events.
    await halt(r)
    dropState(dbPath)
    r = await boot(dbPath)
    expect(await states(r, [P, Q, R])).toEqual(pruned)
    expect(r.server.health().eventsStored).toBe(8)
    expect(await r.server.prune()).toBe(0)
    await halt(r)
    expect(stateRows(dbPath)).toEqual(rowsBefore)

    // And it keeps going: new events continue the seq and update the rebuilt state.
    r = await boot(dbPath)
    const socket = await openLogged(r.wsUrl, sockets)
    const followed = await snapshotOf(socket, P)
    expect(followed.seq).toBe(15)
    await ingestAll(r, [ev('task.deleted', { taskId: 't1' }, at(now, [P]))])
    expect(seqsOf(await socket.events(P, 1))).toEqual([16])
    await roundTrip(socket)
    expect(seqsOf((await httpState(r, P)).body.entities)).toEqual([8, 9, 10, 15])
  })

  test('a rebuild after pruning does not bring back an entity deleted on one of its channels', async () => {
    const dbPath = dbFile()
    let r = await boot(dbPath)
    const old = Date.now() - 2 * HOUR
    await ingestAll(r, [
      // t1 lives on in Q, so its event outlives retention; in P it was deleted.
      ev('task.created', { taskId: 't1', title: 'x', projectId: 'p' }, { timestamp: old, channels: [P, Q] }), // 1
      ev('task.deleted', { taskId: 't1' }, { timestamp: old + 1, channels: [P] }), // 2 tombstone: pruned
    ])
    expect(await r.server.prune()).toBe(1)
    const before = await states(r, [P, Q])
    expect(seqsOf(before[P].entities)).toEqual([])
    expect(seqsOf(before[Q].entities)).toEqual([1])

    await halt(r)
    dropState(dbPath)
    r = await boot(dbPath)
    // Expected: the same state as before the drop. t1 must not reappear in P.
    expect(await states(r, [P, Q])).toEqual(before)
  })

  test('a rebuild after pruning does not bring back an entity whose tombstone carried an older timestamp', async () => {
    const dbPath = dbFile()
    let r = await boot(dbPath)
    const old = Date.now() - 2 * HOUR
    await ingestAll(r, [
      // Producers' clocks disagree: the save is recent, the later delete carries an old timestamp.
      ev('bookmark.saved', { bookmarkId: 'b1' }, { timestamp: Date.now(), channels: [P] }), // 1 not expired
      ev('bookmark.deleted', { bookmarkId: 'b1' }, { timestamp: old, channels: [P] }), // 2 tombstone: kept
    ])
    // The deletion comes after an event that has not expired: it is kept, so a rebuild still sees it.
    expect(await r.server.prune()).toBe(0)
    const before = await states(r, [P])
    expect(seqsOf(before[P].entities)).toEqual([])

    await halt(r)
    dropState(dbPath)
    r = await boot(dbPath)
    expect(await states(r, [P])).toEqual(before)
  })
})
