import { afterEach, describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import { openDatabase } from '../../src/db/client'
import { silentLogger } from '../../src/log'
import { EventService } from '../../src/modules/events/service'
import { LocalBroker } from '../../src/realtime/broker'
import type { NewEvent, StoredEvent } from '../../src/store/event-store'
import { REPLAY_SQL, SqliteEventStore } from '../../src/store/sqlite-event-store'
import { tempDir } from '../helpers/server'

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup()
})

function openStore(path = ':memory:') {
  const store = new SqliteEventStore(openDatabase(path))
  cleanups.push(() => store.close())
  return store
}

const newEvent = (overrides: Partial<NewEvent> = {}): NewEvent => ({
  id: crypto.randomUUID(),
  type: 'test.happened',
  orgId: 'acme',
  userId: 'u1',
  timestamp: Date.now(),
  receivedAt: Date.now(),
  payload: '{}',
  channels: ['org:acme', 'agent:a'],
  ...overrides,
})

describe('SqliteEventStore', () => {
  test('replaying one channel is an index range scan, not a scan of the log', () => {
    const store = openStore()
    const { sqlite } = (store as unknown as { database: ReturnType<typeof openDatabase> }).database
    const plan = sqlite
      .query(`EXPLAIN QUERY PLAN ${REPLAY_SQL}`)
      .all('acme', 'agent:a', 0, 10) as Array<{ detail: string }>
    const details = plan.map((row) => row.detail).join(' | ')
    expect(details).toMatch(/SEARCH c USING (COVERING )?INDEX sqlite_autoindex_event_channels_1 \(org_id=\? AND channel=\? AND seq>\?\)/)
    expect(details).toMatch(/SEARCH e USING INTEGER PRIMARY KEY/)
    expect(details).not.toMatch(/SCAN/)
  })

  test('seqs increase, duplicates get none, and channels read back in order', () => {
    const store = openStore()
    const first = newEvent()
    const results = store.append([first, { ...first, payload: '{"other":1}' }, newEvent({ channels: ['org:acme'] })])
    expect(results[1]).toBe('duplicate')
    const [a, , b] = results as StoredEvent[]
    expect(b!.seq).toBeGreaterThan(a!.seq)
    expect(store.readChannel('acme', 'agent:a', 0, 10).map((e) => e.id)).toEqual([first.id])
    expect(store.readOrg('acme', 0, 10).map((e) => e.seq)).toEqual([a!.seq, b!.seq])
    expect(store.readChannel('other', 'agent:a', 0, 10)).toEqual([])
    expect(store.count()).toBe(2)
    expect(store.lastSeq()).toBe(b!.seq)
  })

  test('seq is never reused: not after pruning the newest events, not after reopening', () => {
    const { dir, cleanup } = tempDir()
    cleanups.push(cleanup)
    const path = join(dir, 'x.db')
    const store = new SqliteEventStore(openDatabase(path))
    const old = store.append([newEvent({ timestamp: 1 }), newEvent({ timestamp: 2 })]) as StoredEvent[]
    expect(store.pruneBefore(10, 0, 100)).toEqual({ pruned: 2, next: null })
    expect(store.count()).toBe(0)
    expect(store.prunedThrough('acme', 'agent:a')).toBe(old[1]!.seq)
    expect(store.prunedThrough('acme')).toBe(old[1]!.seq)
    expect(store.prunedThrough('acme', 'task:none')).toBe(0)
    const epoch = store.epoch
    store.close()
    const reopened = new SqliteEventStore(openDatabase(path))
    cleanups.unshift(() => reopened.close())
    expect(reopened.epoch).toBe(epoch)
    expect(reopened.lastSeq()).toBe(old[1]!.seq)
    const [next] = reopened.append([newEvent()]) as StoredEvent[]
    expect(next!.seq).toBeGreaterThan(old[1]!.seq)
  })

  test('pruning goes in chunks, in seq order, and leaves recent events', () => {
    const store = openStore()
    const old = store.append(Array.from({ length: 25 }, (_, i) => newEvent({ timestamp: 100 + i }))) as StoredEvent[]
    store.append([newEvent({ timestamp: Date.now() })])
    expect(store.pruneBefore(1000, 0, 10)).toEqual({ pruned: 10, next: old[9]!.seq })
    expect(store.pruneBefore(1000, old[9]!.seq, 10)).toEqual({ pruned: 10, next: old[19]!.seq })
    expect(store.pruneBefore(1000, old[19]!.seq, 10)).toEqual({ pruned: 5, next: null })
    expect(store.count()).toBe(1)
  })

  test('a deletion at or after the first unexpired event is kept, so it never goes before what it deleted', () => {
    const store = openStore()
    const saved = { type: 'bookmark.saved', payload: '{"bookmarkId":"b1"}', state: { op: 'set' as const, key: 'bookmark:b1' } }
    const deleted = { type: 'bookmark.deleted', payload: '{"bookmarkId":"b1"}', state: { op: 'delete' as const, keys: ['bookmark:b1'] } }
    // A recent save, then its deletion stamped with an old time by a producer whose clock is behind.
    store.append([newEvent({ ...saved, timestamp: Date.now() }), newEvent({ ...deleted, timestamp: 1 })])
    expect(store.pruneBefore(1000, 0, 10)).toEqual({ pruned: 0, next: null })
    expect(store.count()).toBe(2)
    expect(store.snapshot('acme', 'agent:a').entities).toEqual([])
  })

  test('an event leaves the channels where it is not live state, and stays where it is', () => {
    const store = openStore()
    const task = '{"taskId":"t1","title":"x","projectId":"p"}'
    const created = newEvent({ channels: ['project:p', 'project:q'], type: 'task.created', payload: task, timestamp: 1, state: { op: 'set', key: 'task:t1' } })
    const deleted = newEvent({ channels: ['project:p'], type: 'task.deleted', payload: task, timestamp: 2, state: { op: 'delete', keys: ['task:t1'] } })
    const [first] = store.append([created, deleted]) as StoredEvent[]
    expect(store.pruneBefore(1000, 0, 10)).toEqual({ pruned: 1, next: null })
    expect(store.readChannel('acme', 'project:p', 0, 10)).toEqual([])
    expect(store.readChannel('acme', 'project:q', 0, 10).map((e) => e.seq)).toEqual([first!.seq])
    store.rebuildState()
    expect(store.snapshot('acme', 'project:p').entities).toEqual([])
    expect(store.snapshot('acme', 'project:q').entities.map((e) => e.seq)).toEqual([first!.seq])
  })

  test('a new database gets a fresh epoch', () => {
    expect(openStore().epoch).not.toBe(openStore().epoch)
  })
})

describe('EventService group commit', () => {
  test('ingests queued in the same turn share one transaction, and publish follows commit', async () => {
    const store = openStore()
    let appends = 0
    const append = store.append.bind(store)
    store.append = (batch) => {
      appends++
      return append(batch)
    }
    const published: number[][] = []
    const service = new EventService(store, new LocalBroker((events) => published.push(events.map((e) => e.seq))), silentLogger)
    const principal = { orgId: 'acme', userId: 'u1' }
    const input = (id = crypto.randomUUID()) => ({ id, type: 'x.y', orgId: 'acme', userId: 'u1', timestamp: 1, payload: {} })
    const dup = input()
    const results = await Promise.all([
      ...Array.from({ length: 50 }, () => service.ingest(principal, [input()])),
      service.ingest(principal, [dup, dup]),
    ])
    expect(appends).toBe(1)
    expect(results.at(-1)).toEqual({ stored: 1, duplicates: 1 })
    expect(published).toHaveLength(1)
    expect(published[0]).toHaveLength(51)
    expect(store.count()).toBe(51)
  })

  test('a store failure rejects every waiter of the batch with 503 and publishes nothing', async () => {
    const store = openStore()
    store.append = () => {
      throw new Error('disk full')
    }
    let published = 0
    const service = new EventService(store, new LocalBroker(() => published++), silentLogger)
    const principal = { orgId: 'acme', userId: 'u1' }
    const attempt = service.ingest(principal, [{ id: crypto.randomUUID(), type: 'x.y', orgId: 'acme', userId: 'u1', timestamp: 1, payload: {} }])
    await expect(attempt).rejects.toMatchObject({ status: 503, code: 'store_unavailable' })
    expect(published).toBe(0)
  })
})
