import { afterEach, describe, expect, expectTypeOf, setDefaultTimeout, test } from 'bun:test'
import fc from 'fast-check'
import { join } from 'node:path'
import {
  createRealtimeClient,
  type LiveChange,
  type LiveChannel,
  type LiveSnapshot,
  type RealtimeClient,
  type RealtimeClientOptions,
  systemClock,
} from '../../src/client'
import { stateChangeOf } from '../../src/model/state'
import { spawnService, type ServiceProcess } from '../helpers/process'
import { startProxy, type Proxy } from '../helpers/proxy'
import { getJson, ingest, startServer, tempDir, type TestServer, waitFor } from '../helpers/server'

/**
 * `client.live(channelId)` (src/client/live.ts) against real servers: the first state and the
 * deltas after it with exactly the {added, updated, removed, reset} they report, snapshot identity
 * (useSyncExternalStore), listeners, close(), joining a channel that already has a plain
 * subscription, events racing the state request (held, dropped when covered, retried), `truncated`
 * (a replaced database, pruned history) over WebSocket and polling, the polling and Server-Sent
 * Events fallbacks, and a property test: random catalogue event sequences with random disconnects
 * (dropped, frozen, upgrade-refused connections) end with the store holding exactly the state
 * obtained by replaying the channel's whole log — and exactly the server's own state.
 *
 * The property's seed is fixed (override with LIVE_SEED; LIVE_RUNS changes the run count;
 * LIVE_DEBUG=1 prints what each run did); fast-check prints the seed, path and shrunk
 * counterexample of a failure.
 */

const CH = 'org:local'
const SEED = Number(process.env.LIVE_SEED ?? 0x11fe_5eed)
const RUNS = Number(process.env.LIVE_RUNS ?? 60)

const FAST = {
  heartbeat: false,
  reconnect: { baseMs: 20, maxMs: 200, jitterMs: 10 },
  ping: { intervalMs: 50, timeoutMs: 100 },
  polling: false,
} satisfies Partial<RealtimeClientOptions>
const POLLING = { afterMs: 100, minMs: 50, maxMs: 200 }
/**
 * The fallback under test is polling: no Server-Sent Events attempt first (where the client has
 * that fallback; the test proxy answers plain HTTP only once the upstream response is complete).
 */
const POLLING_ONLY = { polling: POLLING, sse: false } as Partial<RealtimeClientOptions>

const cleanups: Array<() => unknown> = []

// Room for a failing waitFor (5 s) to report itself rather than the test's timeout.
setDefaultTimeout(15_000)

afterEach(async () => {
  // Registered server → proxy → client → store; undone in reverse.
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

async function server(options: Parameters<typeof startServer>[0] = {}): Promise<TestServer> {
  const started = await startServer(options)
  cleanups.push(() => started.close())
  return started
}

function proxyTo(upstream: TestServer): Proxy {
  const proxy = startProxy(upstream.url)
  cleanups.push(() => proxy.stop())
  return proxy
}

function client(url: string, options: Partial<RealtimeClientOptions> = {}): RealtimeClient {
  const created = createRealtimeClient({ url, ...FAST, ...options })
  cleanups.push(() => created.close())
  return created
}

async function spawn(env: Record<string, string>): Promise<ServiceProcess> {
  const service = await spawnService(env)
  // Should the test run be cut short (afterEach never runs), the service must not outlive it.
  const orphanGuard = () => service.proc.kill(9)
  process.once('exit', orphanGuard)
  cleanups.push(async () => {
    process.off('exit', orphanGuard)
    if (service.proc.exitCode === null && service.proc.signalCode === null) service.proc.kill(9)
    await service.exited
  })
  return service
}

interface Watched {
  store: LiveChannel
  /** Every change reported, in order. */
  changes: LiveChange[]
  /** The snapshot at each change. */
  snapshots: LiveSnapshot[]
  snap: () => LiveSnapshot
}

/** A live store of `channelId`, with a listener recording every change; closed after the test. */
function live(subject: RealtimeClient, channelId = CH): Watched {
  const store = subject.live(channelId)
  cleanups.push(() => store.close())
  const changes: LiveChange[] = []
  const snapshots: LiveSnapshot[] = []
  store.subscribe((change) => {
    changes.push(change)
    snapshots.push(store.getSnapshot())
  })
  return { store, changes, snapshots, snap: () => store.getSnapshot() }
}

type Ev = { id: string; type: string; orgId: string; userId: string; timestamp: number; payload: Record<string, unknown>; key?: string; channels?: string[] }

function ev(type: string, payload: Record<string, unknown>, extra: { key?: string; channels?: string[]; timestamp?: number } = {}): Ev {
  return { id: crypto.randomUUID(), type, orgId: 'local', userId: 'local', timestamp: Date.now(), payload, ...extra }
}

const agentStatus = (agentId: string, status: string, extra: { key?: string; channels?: string[]; timestamp?: number } = {}) =>
  ev('agent.status', { agentId, agentName: `n-${agentId}`, status, message: `${agentId} is ${status}` }, extra)
const taskCreated = (taskId: string, extra: { timestamp?: number } = {}) => ev('task.created', { taskId, title: `task ${taskId}`, projectId: 'p1' }, extra)

/** POST /ingest of the events in one request (one transaction), each expected to be stored. */
async function publish(url: string, events: Ev[]): Promise<void> {
  if (events.length === 0) return
  const { status, body } = await ingest(url, { events })
  expect(status).toBe(200)
  expect(body).toEqual({ stored: events.length, duplicates: 0 })
}

/** The newest seq stored on the server. */
async function lastSeq(url: string): Promise<number> {
  const { status, body } = await getJson(`${url}/api/events/since?limit=1`)
  expect(status).toBe(200)
  return body.lastSeq
}

async function httpState(url: string, channelId = CH): Promise<{ channelId: string; seq: number; epoch: string; entities: any[] }> {
  const { status, body } = await getJson(`${url}/api/channels/${encodeURIComponent(channelId)}/state`)
  expect(status).toBe(200)
  return body
}

/** Every stored event of a channel, oldest first, via GET /api/events/since in pages of 50. */
async function channelLog(url: string, channelId = CH): Promise<any[]> {
  const out: any[] = []
  let since = 0
  for (let page = 0; page < 1000; page++) {
    const { status, body } = await getJson(`${url}/api/events/since?channel=${encodeURIComponent(channelId)}&since=${since}&limit=50`)
    expect(status).toBe(200)
    expect(body.truncated).toBeUndefined()
    out.push(...body.events)
    since = body.nextSeq
    if (!body.hasMore) return out
  }
  throw new Error('more than 1000 pages')
}

/** The state a client gets by replaying `log` from the start with the shared rules (model/state.ts). */
function fold(log: any[]): Map<string, any> {
  const state = new Map<string, any>()
  for (const event of log) {
    const change = stateChangeOf(event.type, event.payload, event.key)
    if (!change) continue
    if (change.op === 'set') state.set(change.key, event)
    else if (change.op === 'delete') for (const key of change.keys) state.delete(key)
    else for (const key of [...state.keys()]) if (key.startsWith(change.prefix)) state.delete(key)
  }
  return state
}

function keyOf(event: { type: string; payload: Record<string, unknown>; key?: string }): string {
  const change = stateChangeOf(event.type, event.payload, event.key)
  if (change?.op !== 'set') throw new Error(`not an entity: ${JSON.stringify(event)}`)
  return change.key
}

type View = Record<string, { id: string; seq: number }>

/** key → {id, seq}, sorted by key, for exact comparisons of states from different sources. */
/** Every entity of a snapshot, typed and others alike (whole-state comparisons). */
function allOf(snapshot: LiveSnapshot): Array<readonly [string, { id: string; seq: number }]> {
  return [...snapshot.entities, ...snapshot.others]
}

function view(entities: Iterable<readonly [string, { id: string; seq: number }]>): View {
  return Object.fromEntries(
    [...entities].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([key, event]) => [key, { id: event.id, seq: event.seq }]),
  )
}

/** The state endpoint's entities as a view (each must set a distinct key). */
function stateView(state: { entities: any[] }): View {
  const pairs = state.entities.map((entity) => [keyOf(entity), entity] as const)
  expect(new Set(pairs.map(([key]) => key)).size).toBe(pairs.length)
  return view(pairs)
}

/** A wire event (HTTP) as the frame a live store keeps: the same fields without `channels`. */
function asFrame(wire: any): any {
  const { channels: _channels, ...frame } = wire
  return frame
}

const change = (partial: Partial<LiveChange>): LiveChange => ({ added: [], updated: [], removed: [], reset: false, ...partial })

/** Waits for the store to report its `n`-th change (and no more). */
async function changeNumber(watched: Watched, n: number, what = `change ${n}`): Promise<LiveChange> {
  await waitFor(() => watched.changes.length >= n, 5000, what)
  expect(watched.changes.length).toBe(n)
  return watched.changes[n - 1]!
}

/** The URL a fetch call is for. */
const urlOf = (input: RequestInfo | URL) => (typeof input === 'string' ? input : input instanceof URL ? input.href : input.url)

/** Resolves once the server holds the client's subscription of `channelId` (stats answers in order). */
async function subscribedOnServer(subject: RealtimeClient, channelId: string): Promise<void> {
  await waitFor(
    async () => subject.state.status === 'open' && (await subject.request<{ subscriptions: string[] }>('stats')).subscriptions.includes(channelId),
    3000,
    `${channelId} subscribed on the server`,
  )
}

// ── types (checked by `bunx tsc --noEmit`; never called) ─────────────────────

function snapshotTypes(store: LiveChannel) {
  const snapshot = store.getSnapshot()
  expectTypeOf(snapshot.seq).toEqualTypeOf<number>()
  expectTypeOf(snapshot.synced).toEqualTypeOf<boolean>()
  for (const [key, event] of snapshot.entities) {
    expectTypeOf(key).toEqualTypeOf<string>()
    expectTypeOf(event.seq).toEqualTypeOf<number>()
    // The README's React example: narrowing on `type` gives the catalogue payload, as in handlers.
    // Entities of undeclared types live in `others`, so `entities` narrows like handler events.
    if (event.type === 'agent.status') expectTypeOf(event.payload.status).toEqualTypeOf<string>()
    if (event.type === 'agent.completed') expectTypeOf(event.payload.duration).toEqualTypeOf<number>()
  }
  // React's useSyncExternalStore(subscribe, getSnapshot) takes both unbound.
  const { getSnapshot, subscribe } = store
  expectTypeOf(getSnapshot).toEqualTypeOf<() => LiveSnapshot>()
  expectTypeOf(subscribe).parameter(0).toEqualTypeOf<(change: LiveChange) => void>()
}
void snapshotTypes

// ── basics against a real server ─────────────────────────────────────────────

describe('the first state', () => {
  test('synced false → true, seq, entities by key as typed event frames, one reset change', async () => {
    const t = await server()
    const initial = [
      ev('agent.spawned', { agentId: 'a1', agentName: 'coder', taskId: 't1' }),
      agentStatus('a1', 'busy'),
      taskCreated('t1'),
      ev('bookmark.saved', { bookmarkId: 'b1' }),
      ev('deploy.finished', { version: '1.2' }, { key: 'deploy:web' }),
      ev('log.line', { text: 'no key: no entity' }),
    ]
    await publish(t.url, initial)
    const subject = client(t.url)
    const w = live(subject)
    const before = w.snap()
    expect(before).toEqual({ entities: new Map(), others: new Map(), seq: 0, synced: false })
    expect(w.snap()).toBe(before)

    const first = await changeNumber(w, 1, 'the first state')
    // Entities in the state's order (ascending seq): a1's latest is its agent.status (seq 2).
    expect(first).toEqual(change({ added: ['agent:a1', 'task:t1', 'bookmark:b1', 'deploy:web'], reset: true }))
    const snap = w.snap()
    expect(snap).not.toBe(before)
    expect(before.synced).toBe(false) // the old snapshot is left as it was
    expect(snap.synced).toBe(true)
    expect(snap.seq).toBe(6)
    expect([...snap.entities.keys()]).toEqual(['agent:a1', 'task:t1', 'bookmark:b1'])
    // deploy.finished is neither in the catalogue nor declared: its entity is in `others`.
    expect([...snap.others.keys()]).toEqual(['deploy:web'])
    const a1 = snap.entities.get('agent:a1')!
    expect(a1).toEqual({
      type: 'agent.status',
      id: initial[1]!.id,
      seq: 2,
      channelId: CH,
      orgId: 'local',
      userId: 'local',
      timestamp: initial[1]!.timestamp,
      payload: { agentId: 'a1', agentName: 'n-a1', status: 'busy', message: 'a1 is busy' },
    })
    if (a1.type !== 'agent.status') throw new Error(`expected agent.status, got ${a1.type}`)
    expect(a1.payload.status).toBe('busy')
    expect(snap.others.get('deploy:web')).toEqual({ ...asFrame({ ...initial[4]!, seq: 5, channelId: CH }) })
    expect(snap.entities.get('bookmark:b1')?.payload).toEqual({ bookmarkId: 'b1' })
    const state = await httpState(t.url)
    expect(view(allOf(snap))).toEqual(stateView(state))
    for (const wire of state.entities) expect(new Map(allOf(snap)).get(keyOf(wire))).toEqual(asFrame(wire))
    expect(w.changes.length).toBe(1)
  })

  test('an empty channel syncs too: synced with no entities, then follows its first events', async () => {
    const t = await server()
    const subject = client(t.url)
    const w = live(subject, 'project:empty')
    expect(await changeNumber(w, 1)).toEqual(change({ reset: true }))
    expect(w.snap()).toEqual({ entities: new Map(), others: new Map(), seq: 0, synced: true })
    await publish(t.url, [ev('task.created', { taskId: 't1', title: 'first', projectId: 'empty' })])
    expect(await changeNumber(w, 2)).toEqual(change({ added: ['task:t1'] }))
    expect(w.snap().seq).toBe(1)
  })
})

describe('deltas', () => {
  test('set, update, delete, purge, explicit keys and key-less events each report exactly what changed', async () => {
    const t = await server()
    await publish(t.url, [agentStatus('a1', 'idle'), taskCreated('t1'), ev('bookmark.saved', { bookmarkId: 'b1' })])
    const subject = client(t.url)
    const w = live(subject)
    expect(await changeNumber(w, 1)).toEqual(change({ added: ['agent:a1', 'task:t1', 'bookmark:b1'], reset: true }))

    let n = 1
    /** Publishes one event, waits for its change, checks it and the server's state. */
    const step = async (event: Ev, expected: Partial<LiveChange>) => {
      const previous = w.snap()
      await publish(t.url, [event])
      const seq = await lastSeq(t.url)
      const got = await changeNumber(w, ++n, `the change of ${event.type} (${event.key ?? JSON.stringify(event.payload)})`)
      expect(got).toEqual(change(expected))
      const snap = w.snap()
      expect(snap).not.toBe(previous)
      expect(snap.seq).toBe(seq)
      expect(view(allOf(snap))).toEqual(stateView(await httpState(t.url)))
      return snap
    }

    // set: a new entity, then an update of it and of an existing one (another type, same entity).
    let snap = await step(agentStatus('a2', 'busy'), { added: ['agent:a2'] })
    expect(snap.entities.get('agent:a2')?.payload.status).toBe('busy')
    const completed = ev('agent.completed', { agentId: 'a1', agentName: 'n-a1', taskId: 't1', result: { ok: true }, duration: 42 })
    snap = await step(completed, { updated: ['agent:a1'] })
    expect(snap.entities.get('agent:a1')?.id).toBe(completed.id)
    expect([...snap.entities.keys()]).toEqual(['agent:a1', 'task:t1', 'bookmark:b1', 'agent:a2']) // an update keeps its place
    await step(ev('task.status_changed', { taskId: 't1', oldStatus: 'todo', newStatus: 'doing' }), { updated: ['task:t1'] })
    await step(ev('chief.task.progress', { taskId: 't2', progress: 10, message: 'started' }), { added: ['task:t2'] })
    await step(ev('gate.passed', { taskId: 't3', gate: 'lint' }), { added: ['task:t3'] })

    // delete: present, then absent (nothing removed, but the seq moves on and a new snapshot comes).
    await step(ev('task.deleted', { taskId: 't1' }), { removed: ['task:t1'] })
    await step(ev('task.deleted', { taskId: 't1' }), {})
    await step(ev('bookmark.deleted', { bookmarkId: 'b1' }), { removed: ['bookmark:b1'] })

    // explicit keys: a custom type, a catalogue type under another key, a deleting type under a key.
    await step(ev('deploy.finished', { version: '1' }, { key: 'deploy:web' }), { added: ['deploy:web'] })
    await step(ev('deploy.finished', { version: '2' }, { key: 'deploy:web' }), { updated: ['deploy:web'] })
    snap = await step(agentStatus('a9', 'idle', { key: 'note:x' }), { added: ['note:x'] })
    expect(snap.entities.has('agent:a9')).toBe(false)
    snap = await step(ev('task.deleted', { taskId: 't2' }, { key: 'deploy:web' }), { removed: ['deploy:web'] })
    expect(snap.entities.has('task:t2')).toBe(true) // the key named the entity, not the payload
    await step(ev('deploy.finished', { version: '3' }, { key: 'task:manual' }), { added: ['task:manual'] })

    // A key-less event of a type outside the catalogue: ignored, but the seq advances.
    const before = w.snap()
    snap = await step(ev('log.line', { text: 'hello' }), {})
    expect(snap.entities).not.toBe(before.entities)
    expect(view(allOf(snap))).toEqual(view(allOf(before)))
    expect(snap.seq).toBe(before.seq + 1)

    // purge with taskIds: those listed (an absent one is no change); without: every task:* key,
    // an explicit `task:` key too (the server's rule), other kinds kept.
    await step(taskCreated('t4'), { added: ['task:t4'] })
    await step(ev('tasks.purged', { taskIds: ['t2', 't404'] }), { removed: ['task:t2'] })
    await step(taskCreated('t5'), { added: ['task:t5'] })
    snap = await step(ev('tasks.purged', {}), { removed: ['task:t3', 'task:manual', 'task:t4', 'task:t5'] })
    expect([...snap.entities.keys()].sort()).toEqual(['agent:a1', 'agent:a2', 'note:x'])
    await step(ev('tasks.purged', { taskIds: [] }), {})

    // An event of another channel only: no change (the next change is the next event's).
    await publish(t.url, [agentStatus('a1', 'elsewhere', { channels: ['project:other'] })])
    await step(agentStatus('a2', 'done'), { updated: ['agent:a2'] })
    expect(w.snap().entities.get('agent:a1')?.id).toBe(completed.id)
    // One new snapshot object per change, each at a higher seq.
    expect(new Set(w.snapshots).size).toBe(w.snapshots.length)
    for (let i = 1; i < w.snapshots.length; i++) expect(w.snapshots[i]!.seq).toBeGreaterThan(w.snapshots[i - 1]!.seq)
  })
})

describe('snapshot identity and listeners', () => {
  test('getSnapshot is the same object until something changes, and works unbound (useSyncExternalStore)', async () => {
    const t = await server()
    await publish(t.url, [agentStatus('a1', 'idle')])
    const subject = client(t.url)
    const w = live(subject)
    // What React does: take both functions off the object, call getSnapshot repeatedly.
    const { getSnapshot, subscribe } = w.store
    const renders: LiveSnapshot[] = [getSnapshot()]
    const unsubscribe = subscribe(() => {
      const next = getSnapshot()
      expect(getSnapshot()).toBe(next) // a second read without a change: the same object
      if (!Object.is(next, renders.at(-1))) renders.push(next)
    })
    expect(getSnapshot()).toBe(renders[0]!)
    await changeNumber(w, 1)
    expect(renders.length).toBe(2)
    const synced = getSnapshot()
    expect(synced).toBe(renders[1]!)
    expect(synced).toBe(w.store.getSnapshot())
    expect(getSnapshot()).toBe(getSnapshot())

    // A message that changes nothing (another channel) gives no new snapshot.
    await publish(t.url, [agentStatus('a1', 'other channel', { channels: ['project:other'] })])
    const frozen = new Map(synced.entities)
    await publish(t.url, [agentStatus('a2', 'busy')])
    await changeNumber(w, 2)
    expect(renders.length).toBe(3)
    const next = getSnapshot()
    expect(next).not.toBe(synced)
    expect(next.entities).not.toBe(synced.entities)
    // The old snapshot is immutable: its map did not take the new entity.
    expect(synced.entities).toEqual(frozen)
    expect(synced.entities.has('agent:a2')).toBe(false)
    expect(next.entities.has('agent:a2')).toBe(true)

    unsubscribe()
    await publish(t.url, [agentStatus('a3', 'busy')])
    await changeNumber(w, 3)
    expect(renders.length).toBe(3) // unsubscribed
  })

  test('listeners: each called once per change, unsubscribe stops only that one, twice is harmless', async () => {
    const t = await server()
    const subject = client(t.url)
    const w = live(subject)
    await changeNumber(w, 1)
    const a: LiveChange[] = []
    const b: LiveChange[] = []
    const listenerA = (c: LiveChange) => a.push(c)
    const offA = w.store.subscribe(listenerA)
    const offA2 = w.store.subscribe(listenerA) // the same function again: still one call per change
    const offB = w.store.subscribe((c) => b.push(c))
    await publish(t.url, [agentStatus('a1', 'idle')])
    await changeNumber(w, 2)
    expect(a).toEqual([change({ added: ['agent:a1'] })])
    expect(b).toEqual([change({ added: ['agent:a1'] })])
    expect(a[0]).toBe(w.changes[1]!) // every listener gets the same change object

    offA()
    offA2()
    offA()
    await publish(t.url, [agentStatus('a1', 'busy')])
    await changeNumber(w, 3)
    expect(a.length).toBe(1)
    expect(b).toEqual([change({ added: ['agent:a1'] }), change({ updated: ['agent:a1'] })])

    // A listener unsubscribing itself while being called: called once, the others still called.
    offB()
    let selfCalls = 0
    const self = w.store.subscribe(() => {
      selfCalls++
      self()
    })
    await publish(t.url, [agentStatus('a2', 'busy')])
    await changeNumber(w, 4)
    await publish(t.url, [agentStatus('a3', 'busy')])
    await changeNumber(w, 5)
    expect(selfCalls).toBe(1)
    expect(b.length).toBe(2)
    expect(allOf(w.snap()).length).toBe(3)
  })
})

describe('close()', () => {
  test('stops updates, unsubscribes the channel, and is idempotent; a store closed before its state never syncs', async () => {
    const t = await server()
    await publish(t.url, [agentStatus('a1', 'idle')])
    const subject = client(t.url)
    const observer = client(t.url)
    const seen: number[] = []
    observer.subscribe(CH, (event) => seen.push(event.seq))

    const w = live(subject)
    await changeNumber(w, 1)
    await subscribedOnServer(subject, CH)
    const last = w.snap()
    w.store.close()
    w.store.close()
    expect(subject.cursor(CH)).toBeUndefined()
    expect(subject.state.subscriptions).toEqual([])
    await waitFor(async () => !(await subject.request<{ subscriptions: string[] }>('stats')).subscriptions.includes(CH), 3000, 'unsubscribed on the server')

    await subscribedOnServer(observer, CH)
    await publish(t.url, [agentStatus('a1', 'busy'), agentStatus('a2', 'busy')])
    await waitFor(() => seen.length === 2, 3000, 'the observer receiving the events')
    expect(w.store.getSnapshot()).toBe(last)
    expect(w.changes.length).toBe(1)

    // Closed at once, before its first state: it never syncs nor calls a listener.
    const early = live(subject)
    early.store.close()
    const plain: number[] = []
    subject.subscribe(CH, (event) => plain.push(event.seq))
    await publish(t.url, [agentStatus('a3', 'busy')])
    await waitFor(() => plain.length === 1, 3000, 'a plain subscription on the same client')
    await waitFor(() => seen.length === 3, 3000, 'the observer')
    expect(early.store.getSnapshot()).toEqual({ entities: new Map(), others: new Map(), seq: 0, synced: false })
    expect(early.changes).toEqual([])

    expect(() => subject.live('not a channel')).toThrow(TypeError)
    subject.close()
    expect(() => subject.live(CH)).toThrow('the client is closed')
  })

  test('closing a store keeps a plain subscription of the same channel working, and the channel subscribed', async () => {
    const t = await server()
    const subject = client(t.url)
    const plain: Array<{ type: string; seq: number }> = []
    subject.subscribe(CH, (event) => plain.push({ type: event.type, seq: event.seq }), { onOther: (frame) => plain.push({ type: frame.type, seq: frame.seq }) })
    const w = live(subject)
    await changeNumber(w, 1)
    await publish(t.url, [agentStatus('a1', 'idle'), ev('log.line', { n: 1 })])
    await waitFor(() => plain.length === 2 && w.snap().seq === 2, 3000, 'both')
    w.store.close()
    expect(subject.cursor(CH)).toBe(2)
    await publish(t.url, [agentStatus('a1', 'busy'), ev('log.line', { n: 2 })])
    await waitFor(() => plain.length === 4, 3000, 'the plain handler after the store closed')
    expect(plain).toEqual([
      { type: 'agent.status', seq: 1 },
      { type: 'log.line', seq: 2 },
      { type: 'agent.status', seq: 3 },
      { type: 'log.line', seq: 4 },
    ])
    expect((await subject.request<{ subscriptions: string[] }>('stats')).subscriptions).toEqual([CH])
    expect(w.snap().seq).toBe(2)
  })
})

describe('joining a channel that already has a plain subscription', () => {
  test('a live store created after a plain subscription delivered events gets the whole state, then follows', async () => {
    const t = await server()
    await publish(t.url, [agentStatus('a1', 'idle'), taskCreated('t1')])
    const subject = client(t.url)
    const plain: number[] = []
    subject.subscribe(CH, (event) => plain.push(event.seq))
    await subscribedOnServer(subject, CH)
    await publish(t.url, [agentStatus('a2', 'busy')])
    await waitFor(() => plain.length === 1, 3000, 'the plain subscription')
    const w = live(subject)
    expect(await changeNumber(w, 1)).toEqual(change({ added: ['agent:a1', 'task:t1', 'agent:a2'], reset: true }))
    expect(w.snap().seq).toBe(3)
    await publish(t.url, [ev('task.deleted', { taskId: 't1' })])
    expect(await changeNumber(w, 2)).toEqual(change({ removed: ['task:t1'] }))
    expect(view(allOf(w.snap()))).toEqual(stateView(await httpState(t.url)))
    expect(plain).toEqual([3, 4])
  })

  test('joining a replaying subscription (since: 0) and one not yet confirmed: the right state, each event once', async () => {
    const t = await server()
    await publish(t.url, [agentStatus('a1', 'idle'), taskCreated('t1'), taskCreated('t2'), ev('task.deleted', { taskId: 't2' })])
    const subject = client(t.url)
    const replayed: number[] = []
    subject.subscribe(CH, (event) => replayed.push(event.seq), { since: 0 })
    const other = client(t.url)
    const pending: number[] = []
    other.subscribe(CH, (event) => pending.push(event.seq)) // live only, its `subscribed` not back yet
    const joined = live(subject)
    const unconfirmed = live(other)
    expect(await changeNumber(joined, 1)).toEqual(change({ added: ['agent:a1', 'task:t1'], reset: true }))
    expect(await changeNumber(unconfirmed, 1)).toEqual(change({ added: ['agent:a1', 'task:t1'], reset: true }))
    await waitFor(() => replayed.length === 4, 3000, 'the replay')
    await publish(t.url, [agentStatus('a1', 'busy')])
    expect(await changeNumber(joined, 2)).toEqual(change({ updated: ['agent:a1'] }))
    expect(await changeNumber(unconfirmed, 2)).toEqual(change({ updated: ['agent:a1'] }))
    const expected = stateView(await httpState(t.url))
    expect(view(allOf(joined.snap()))).toEqual(expected)
    expect(view(allOf(unconfirmed.snap()))).toEqual(expected)
    expect(replayed).toEqual([1, 2, 3, 4, 5])
    expect(pending).toEqual([5])
  })
})

// ── events racing the state request ──────────────────────────────────────────

describe('events published while the state request is in flight', () => {
  test('held: those the state covers are dropped, later ones applied once (deterministic interleaving)', async () => {
    const t = await server()
    await publish(t.url, [agentStatus('a1', 'idle'), taskCreated('t1')])
    const covered = [agentStatus('e1', 'busy'), agentStatus('e2', 'busy')] // stored before the state is read
    const after = [agentStatus('l1', 'busy'), ev('log.line', { n: 1 }), agentStatus('l2', 'busy')] // after it
    const witnessed = new Set<string>()
    let stateRequests = 0
    let stateSeq = -1
    // The state request: events stored, the state read, more events stored and delivered to the
    // client's stream (so the store holds all five), and only then is the answer handed over.
    const gated = (async (input: RequestInfo | URL, init?: RequestInit) => {
      if (!urlOf(input).includes('/state')) return fetch(input, init)
      stateRequests++
      await publish(t.url, covered)
      const response = await fetch(input, init)
      const body = await response.text()
      stateSeq = JSON.parse(body).seq
      await publish(t.url, after)
      await waitFor(() => [...covered, ...after].every((e) => witnessed.has(e.id)), 3000, 'the stream delivering every event')
      return new Response(body, { status: response.status, headers: response.headers })
    }) as unknown as typeof fetch
    const subject = client(t.url, { fetch: gated })
    const w = live(subject)
    // Added after the store, so it sees each event after the store did.
    subject.subscribe(CH, (event) => witnessed.add(event.id), { onOther: (frame) => witnessed.add(frame.id) })

    // One change: the state (with the covered events, not re-applied) and the held later events.
    expect(await changeNumber(w, 1)).toEqual(change({ added: ['agent:a1', 'task:t1', 'agent:e1', 'agent:e2', 'agent:l1', 'agent:l2'], reset: true }))
    expect(stateSeq).toBe(4)
    expect(stateRequests).toBe(1)
    expect(w.snap().seq).toBe(7)
    expect(w.snap().entities.get('agent:e2')?.seq).toBe(4)
    expect(w.snap().entities.get('agent:l2')?.seq).toBe(7)
    expect(view(allOf(w.snap()))).toEqual(stateView(await httpState(t.url)))
    await publish(t.url, [agentStatus('e1', 'done')])
    expect(await changeNumber(w, 2)).toEqual(change({ updated: ['agent:e1'] }))
  })

  test('a failing state request is retried; events meanwhile are held, then applied once', async () => {
    const t = await server()
    await publish(t.url, [agentStatus('a1', 'idle')])
    const during = [agentStatus('a2', 'busy'), agentStatus('a1', 'busy')]
    const witnessed = new Set<string>()
    let stateRequests = 0
    const failingOnce = (async (input: RequestInfo | URL, init?: RequestInit) => {
      if (!urlOf(input).includes('/state') || ++stateRequests > 1) return fetch(input, init)
      await publish(t.url, during)
      await waitFor(() => during.every((e) => witnessed.has(e.id)), 3000, 'the stream delivering the events')
      return new Response(JSON.stringify({ error: { code: 'store_unavailable', message: 'retry' } }), { status: 503, headers: { 'content-type': 'application/json' } })
    }) as unknown as typeof fetch
    // random 0: the state retry's jitter is -1 s, so the first retry (1 s ± 1 s) comes at once.
    const subject = client(t.url, { fetch: failingOnce, clock: { ...systemClock, random: () => 0 } })
    const w = live(subject)
    subject.subscribe(CH, (event) => witnessed.add(event.id))
    expect(await changeNumber(w, 1)).toEqual(change({ added: ['agent:a2', 'agent:a1'], reset: true })) // by seq
    expect(stateRequests).toBe(2)
    expect(w.snap().seq).toBe(3)
    expect(w.snap().entities.get('agent:a1')?.id).toBe(during[1]!.id)
    expect(view(allOf(w.snap()))).toEqual(stateView(await httpState(t.url)))
  })

  test('the database replaced while the first state request is unanswered: events held from the old database are not applied', async () => {
    const first = await startServer()
    let firstRunning = true
    cleanups.push(() => firstRunning && first.close())
    const { port } = first.server
    await publish(first.url, [agentStatus('a1', 'idle'), taskCreated('t1')])
    let release = () => {}
    const gate = new Promise<void>((resolve) => (release = resolve))
    cleanups.push(() => release())
    let stateRequests = 0
    // The first state request gets no answer (a slow or dying server); later ones go through.
    const firstHangs = (async (input: RequestInfo | URL, init?: RequestInit) => {
      if (!urlOf(input).includes('/state') || ++stateRequests > 1) return fetch(input, init)
      await gate
      throw new Error('the first state request never got an answer')
    }) as unknown as typeof fetch
    const subject = client(first.url, { fetch: firstHangs })
    const w = live(subject)
    const witnessed: number[] = []
    subject.subscribe(CH, (event) => witnessed.push(event.seq))
    await waitFor(() => stateRequests === 1, 3000, 'the first state request')
    // Held by the store (no state yet): seqs 3 and 4 of the old database.
    await publish(first.url, [agentStatus('old', 'busy'), taskCreated('t-old')])
    await waitFor(() => witnessed.length === 2, 3000, 'the events of the old database')

    firstRunning = false
    await first.close()
    const second = await server({ port })
    expect(second.server.port).toBe(port)
    // The new database is empty when the client comes back: truncated, and a second state request.
    await waitFor(() => w.snap().synced && stateRequests === 2, 5000, 'the store synced with the new database')
    release()
    const fresh = [agentStatus('x1', 'idle'), agentStatus('x2', 'idle'), agentStatus('x3', 'idle'), agentStatus('x4', 'idle'), agentStatus('x5', 'idle')]
    await publish(second.url, fresh)
    await waitFor(() => witnessed.length === 7, 5000, 'the events of the new database')
    expect(witnessed).toEqual([3, 4, 1, 2, 3, 4, 5])
    // The store holds the new database's state: x1..x5 at seq 5, nothing of the old one.
    expect({ seq: w.snap().seq, entities: view(allOf(w.snap())) }).toEqual({ seq: 5, entities: stateView(await httpState(second.url)) })
    expect(Object.keys(view(allOf(w.snap())))).toEqual(['agent:x1', 'agent:x2', 'agent:x3', 'agent:x4', 'agent:x5'])
  })

  test('stores created while a producer publishes: each ends with the server state, every entity added once', async () => {
    const t = await server()
    await publish(t.url, [agentStatus('seed', 'idle')])
    const COUNT = 150
    const startAt = [0, 7, 30, 75, 120, 149]
    const shared = client(t.url)
    const watchers: Watched[] = []
    for (let i = 0; i < COUNT; i++) {
      // Not awaited: the store's subscribe and state request race the next events. Every other
      // store is on one shared client, so later ones join its running subscription.
      const at = startAt.indexOf(i)
      if (at >= 0) watchers.push(live(at % 2 === 0 ? shared : client(t.url)))
      await publish(t.url, [agentStatus(`c${i}`, 'busy')])
    }
    const last = await lastSeq(t.url)
    expect(last).toBe(COUNT + 1)
    const expected = stateView(await httpState(t.url))
    expect(Object.keys(expected).length).toBe(COUNT + 1)
    for (const [index, w] of watchers.entries()) {
      await waitFor(() => w.snap().seq === last, 5000, `store ${index} at the last seq`)
      expect(view(allOf(w.snap()))).toEqual(expected)
      // Each entity is new, once: applied twice it would be reported as updated; lost, it would be missing.
      const added = w.changes.flatMap((c) => c.added)
      expect(new Set(added).size).toBe(added.length)
      expect([...added].sort()).toEqual(Object.keys(expected))
      expect(w.changes.flatMap((c) => [...c.updated, ...c.removed])).toEqual([])
      expect(w.changes.map((c) => c.reset)).toEqual([true, ...w.changes.slice(1).map(() => false)])
    }
  })
})

// ── truncated ────────────────────────────────────────────────────────────────

describe('truncated: the store is reset to the server state', () => {
  test('the database replaced (new epoch, its seqs past the old cursor): a child process restarted on the same port', async () => {
    const tmp = tempDir()
    cleanups.push(tmp.cleanup)
    const replacement = join(tmp.dir, 'replacement.db')
    // The replacement database is filled first, so its seqs (1..5) run past the old cursor (3).
    const filler = await startServer({ dbPath: replacement })
    const second = [agentStatus('a1', 'busy'), agentStatus('a2', 'idle'), taskCreated('t9'), ev('log.line', { n: 1 }), ev('deploy.finished', { v: 2 }, { key: 'deploy:web' })]
    try {
      await publish(filler.url, second)
    } finally {
      await filler.close()
    }

    let service = await spawn({ REALTIME_DB: join(tmp.dir, 'first.db') })
    const port = service.port
    const truncated: string[] = []
    const subject = client(service.url, { onTruncated: (channelId) => truncated.push(channelId) })
    const first = [agentStatus('a1', 'idle'), taskCreated('t1'), ev('bookmark.saved', { bookmarkId: 'b1' })]
    await publish(service.url, first)
    const w = live(subject)
    expect(await changeNumber(w, 1)).toEqual(change({ added: ['agent:a1', 'task:t1', 'bookmark:b1'], reset: true }))
    expect(w.snap().seq).toBe(3)
    const firstEpoch = subject.state.epoch
    expect(firstEpoch).toBeString()

    service.proc.kill('SIGKILL')
    await service.exited
    service = await spawn({ REALTIME_DB: replacement, REALTIME_PORT: String(port) })
    expect(service.port).toBe(port)

    const reset = await changeNumber(w, 2, 'the reset to the replacement database')
    expect(reset).toEqual(change({ added: ['agent:a2', 'task:t9', 'deploy:web'], updated: ['agent:a1'], removed: ['task:t1', 'bookmark:b1'], reset: true }))
    const state = await httpState(service.url)
    expect(state.epoch).not.toBe(firstEpoch)
    expect(w.snap().seq).toBe(5)
    expect(view(allOf(w.snap()))).toEqual(stateView(state))
    expect(w.snap().entities.get('agent:a1')?.id).toBe(second[0]!.id)
    expect(truncated).toEqual([CH])
    expect(subject.state.epoch).toBe(state.epoch)

    await publish(service.url, [taskCreated('t10')])
    expect(await changeNumber(w, 3)).toEqual(change({ added: ['task:t10'] }))
    expect(w.snap().seq).toBe(6)
    expect(view(allOf(w.snap()))).toEqual(stateView(await httpState(service.url)))
  }, 20_000)

  /**
   * Every event two days old (past the 24 h retention), so that deletions can be pruned too (a
   * deletion is kept while an unexpired event comes before it). The store syncs at seq 4, the
   * connection is cut, five more events come, the prune leaves only two of them in the channel.
   */
  async function prunedWhileAway() {
    const t = await server()
    const proxy = proxyTo(t)
    const old = { timestamp: Date.now() - 48 * 3_600_000 }
    await publish(t.url, [agentStatus('a1', 'idle', old), taskCreated('t1', old), taskCreated('t2', old), ev('bookmark.saved', { bookmarkId: 'b1' }, old)])
    const truncated: string[] = []
    const subject = client(proxy.url, { onTruncated: (channelId) => truncated.push(channelId) })
    const w = live(subject)
    expect(await changeNumber(w, 1)).toEqual(change({ added: ['agent:a1', 'task:t1', 'task:t2', 'bookmark:b1'], reset: true }))
    await waitFor(() => proxy.live > 0 && subject.state.status === 'open', 3000, 'a live connection')

    proxy.refuseUpgrades = true
    proxy.dropAll()
    await waitFor(() => subject.state.status === 'reconnecting', 3000, 'the client noticing')
    const gap = [
      ev('task.deleted', { taskId: 't1' }, old),
      agentStatus('a1', 'busy', old),
      taskCreated('t3', old),
      ev('bookmark.deleted', { bookmarkId: 'b1' }, old),
      ev('log.line', { n: 1 }, old),
    ]
    await publish(t.url, gap)
    expect(await t.server.prune()).toBeGreaterThan(0)
    // What is left of the channel after the cursor (4): no deletion. Replaying it would keep t1 and b1.
    const rest = (await getJson(`${t.url}/api/events/since?channel=${encodeURIComponent(CH)}&since=4`)).body
    expect(rest.truncated).toBe(true)
    expect(rest.events.map((e: any) => [e.seq, e.type])).toEqual([
      [6, 'agent.status'],
      [7, 'task.created'],
    ])
    proxy.refuseUpgrades = false

    const reset = await changeNumber(w, 2, 'the reset after truncated')
    expect(reset).toEqual(change({ added: ['task:t3'], updated: ['task:t2', 'agent:a1'], removed: ['task:t1', 'bookmark:b1'], reset: true }))
    expect(truncated).toEqual([CH])
    expect(w.snap().seq).toBe(9)
    expect(view(allOf(w.snap()))).toEqual(stateView(await httpState(t.url)))
    expect(w.snap().entities.get('agent:a1')?.id).toBe(gap[1]!.id)
    return { t, proxy, subject, w, truncated }
  }

  test('history pruned past the cursor while disconnected: a deletion only the state knows of is applied', async () => {
    const { t, w } = await prunedWhileAway()
    await publish(t.url, [agentStatus('a2', 'idle')])
    expect(await changeNumber(w, 3)).toEqual(change({ added: ['agent:a2'] }))
  })

  test('after that reset, a later reconnect (no event since) reports nothing lost and refetches nothing', async () => {
    const { t, proxy, subject, w, truncated } = await prunedWhileAway()
    const stateFetches = () => proxy.requests.filter((path) => path.startsWith('/api/channels/')).length
    expect(stateFetches()).toBe(2)
    await subscribedOnServer(subject, CH)
    const bridged = proxy.bridged
    proxy.dropAll()
    await waitFor(() => proxy.bridged > bridged && subject.state.status === 'open', 3000, 'the reconnect')
    await subscribedOnServer(subject, CH)
    // A round trip through the state endpoint, so a refetch started by the reconnect has landed.
    await httpState(t.url)
    expect({ truncated, stateFetches: stateFetches(), changes: w.changes.length }).toEqual({ truncated: [CH], stateFetches: 2, changes: 2 })
  })
})

// ── the polling fallback ─────────────────────────────────────────────────────

describe('polling fallback (upgrades refused)', () => {
  test('the store syncs and follows deltas over polling', async () => {
    const t = await server()
    const proxy = proxyTo(t)
    proxy.refuseUpgrades = true
    await publish(t.url, [agentStatus('a1', 'idle'), taskCreated('t1'), taskCreated('t2')])
    const subject = client(proxy.url, POLLING_ONLY)
    const w = live(subject)
    expect(await changeNumber(w, 1)).toEqual(change({ added: ['agent:a1', 'task:t1', 'task:t2'], reset: true }))
    expect(subject.state).toMatchObject({ status: 'open', transport: 'polling' })
    expect(w.snap().seq).toBe(3)
    expect(proxy.requests.filter((path) => path.startsWith('/api/channels/') && path.endsWith('/state')).length).toBe(1)

    const steps: Array<[Ev, Partial<LiveChange>]> = [
      [ev('task.deleted', { taskId: 't1' }), { removed: ['task:t1'] }],
      [agentStatus('a1', 'busy'), { updated: ['agent:a1'] }],
      [ev('bookmark.saved', { bookmarkId: 'b1' }), { added: ['bookmark:b1'] }],
      [ev('deploy.finished', { v: 1 }, { key: 'deploy:web' }), { added: ['deploy:web'] }],
      [ev('log.line', { n: 1 }), {}],
      [ev('tasks.purged', {}), { removed: ['task:t2'] }],
    ]
    for (const [i, [event, expected]] of steps.entries()) {
      await publish(t.url, [event])
      expect(await changeNumber(w, i + 2, `polled change ${i}`)).toEqual(change(expected))
      expect(w.snap().seq).toBe(4 + i)
    }
    expect(view(allOf(w.snap()))).toEqual(stateView(await httpState(t.url)))
    expect(subject.state.transport).toBe('polling')
    expect(proxy.bridged).toBe(0)
  })

  test('history pruned past the cursor between two polls: one reset to the server state, then no more', async () => {
    const t = await server()
    const proxy = proxyTo(t)
    proxy.refuseUpgrades = true
    const old = { timestamp: Date.now() - 48 * 3_600_000 } // past retention (see the WebSocket case)
    await publish(t.url, [agentStatus('a1', 'idle', old), ev('bookmark.saved', { bookmarkId: 'b1' }, old)])
    const truncated: string[] = []
    const subject = client(proxy.url, { ...POLLING_ONLY, onTruncated: (channelId) => truncated.push(channelId) })
    const w = live(subject)
    expect(await changeNumber(w, 1)).toEqual(change({ added: ['agent:a1', 'bookmark:b1'], reset: true }))
    const polls = () => proxy.requests.filter((path) => path === '/api/events/since').length
    const stateFetches = () => proxy.requests.filter((path) => path.startsWith('/api/channels/')).length

    // No poll may read the gap before it is pruned: refuse HTTP until a poll was refused.
    const before = polls()
    proxy.refuseHttp = true
    await waitFor(() => polls() > before, 3000, 'a refused poll')
    await publish(t.url, [taskCreated('t5', old), ev('bookmark.deleted', { bookmarkId: 'b1' }, old), ev('log.line', { n: 1 }, old)])
    expect(await t.server.prune()).toBeGreaterThan(0)
    const rest = (await getJson(`${t.url}/api/events/since?channel=${encodeURIComponent(CH)}&since=2`)).body
    expect(rest.truncated).toBe(true)
    expect(rest.events.map((e: any) => e.seq)).toEqual([3])
    proxy.refuseHttp = false

    const reset = await changeNumber(w, 2, 'the reset after a truncated page')
    expect(reset).toEqual(change({ added: ['task:t5'], updated: ['agent:a1'], removed: ['bookmark:b1'], reset: true }))
    expect(w.snap().seq).toBe(5)
    expect(view(allOf(w.snap()))).toEqual(stateView(await httpState(t.url)))
    // Nothing more was lost: the next polls must not report truncated again, nor refetch the state.
    const after = polls()
    await waitFor(() => polls() >= after + 4, 5000, 'four more polls')
    expect({ truncated, stateFetches: stateFetches(), resets: w.changes.filter((c) => c.reset).length }).toEqual({ truncated: [CH], stateFetches: 2, resets: 2 })
    expect(w.changes.length).toBe(2)
    await publish(t.url, [agentStatus('a1', 'busy')])
    expect(await changeNumber(w, 3)).toEqual(change({ updated: ['agent:a1'] }))
  })
})

/**
 * A loopback proxy that refuses WebSocket upgrades and streams HTTP answers as they come (the shared
 * test proxy reads each answer whole, which an event stream never is).
 */
function streamingProxy(upstream: TestServer): { url: string; requests: string[] } {
  const requests: string[] = []
  const proxy = Bun.serve({
    hostname: '127.0.0.1',
    port: 0,
    async fetch(request) {
      const url = new URL(request.url)
      if (request.headers.get('upgrade')?.toLowerCase() === 'websocket') return new Response('upgrades blocked by proxy', { status: 503 })
      requests.push(url.pathname)
      const headers = new Headers(request.headers)
      headers.delete('host')
      const body = request.method === 'GET' || request.method === 'HEAD' ? undefined : await request.arrayBuffer()
      return fetch(`${upstream.url}${url.pathname}${url.search}`, { method: request.method, headers, body, signal: request.signal })
    },
  })
  cleanups.push(() => proxy.stop(true))
  return { url: `http://127.0.0.1:${proxy.port}`, requests }
}

describe('Server-Sent Events fallback (the default when upgrades are refused)', () => {
  test('the store syncs and follows deltas over the event stream', async () => {
    const t = await server()
    const proxy = streamingProxy(t)
    await publish(t.url, [agentStatus('a1', 'idle'), taskCreated('t1'), taskCreated('t2')])
    const subject = client(proxy.url, { polling: POLLING })
    const w = live(subject)
    expect(await changeNumber(w, 1)).toEqual(change({ added: ['agent:a1', 'task:t1', 'task:t2'], reset: true }))
    expect(w.snap().seq).toBe(3)
    const steps: Array<[Ev, Partial<LiveChange>]> = [
      [ev('task.deleted', { taskId: 't1' }), { removed: ['task:t1'] }],
      [agentStatus('a1', 'busy'), { updated: ['agent:a1'] }],
      [ev('deploy.finished', { v: 1 }, { key: 'deploy:web' }), { added: ['deploy:web'] }],
      [ev('log.line', { n: 1 }), {}],
      [ev('tasks.purged', {}), { removed: ['task:t2'] }],
    ]
    for (const [i, [event, expected]] of steps.entries()) {
      await publish(t.url, [event])
      expect(await changeNumber(w, i + 2, `streamed change ${i}`)).toEqual(change(expected))
      expect(w.snap().seq).toBe(4 + i)
    }
    expect(view(allOf(w.snap()))).toEqual(stateView(await httpState(t.url)))
    expect(subject.state).toMatchObject({ status: 'open', transport: 'sse' })
    expect(proxy.requests.filter((path) => path === '/api/events/stream').length).toBe(1) // one stream, never reopened
  })
})

// ── the property ─────────────────────────────────────────────────────────────

const AGENTS = ['a1', 'a2', 'a3'] as const
const TASKS = ['t1', 't2', 't3'] as const
const BOOKMARKS = ['b1', 'b2'] as const
/** Explicit keys, some colliding with catalogue keys on purpose. */
const KEYS = ['deploy:web', 'deploy:api', 'task:t1', 'agent:a2', 'note:x'] as const

type Spec = { type: string; payload: Record<string, unknown>; key?: string; channels?: string[] }

const agentId = fc.constantFrom(...AGENTS)
const taskId = fc.constantFrom(...TASKS)
const small = fc.nat(99)
const agentSpec: fc.Arbitrary<Spec> = fc.oneof(
  agentId.map((id) => ({ type: 'agent.spawned', payload: { agentId: id, agentName: `n-${id}`, taskId: 't1' } })),
  fc.tuple(agentId, small).map(([id, d]) => ({ type: 'agent.completed', payload: { agentId: id, agentName: `n-${id}`, taskId: 't2', result: 'ok', duration: d } })),
  agentId.map((id) => ({ type: 'agent.failed', payload: { agentId: id, agentName: `n-${id}`, taskId: 't3', error: 'boom' } })),
  fc.tuple(agentId, fc.constantFrom('idle', 'busy', 'done')).map(([id, status]) => ({ type: 'agent.status', payload: { agentId: id, agentName: `n-${id}`, status, message: status } })),
)
const taskSpec: fc.Arbitrary<Spec> = fc.oneof(
  taskId.map((id) => ({ type: 'task.created', payload: { taskId: id, title: `task ${id}`, projectId: 'p1' } })),
  taskId.map((id) => ({ type: 'task.status_changed', payload: { taskId: id, oldStatus: 'todo', newStatus: 'doing' } })),
  fc.tuple(taskId, small).map(([id, n]) => ({ type: 'task.updated', payload: { taskId: id, changes: { n } } })),
  fc.tuple(fc.constantFrom('task.started', 'task.completed', 'task.deleted'), taskId).map(([type, id]) => ({ type, payload: { taskId: id } })),
  fc.tuple(taskId, fc.constantFrom(...AGENTS)).map(([id, agent]) => ({ type: 'chief.task.assigned', payload: { taskId: id, agentName: `n-${agent}` } })),
  fc.tuple(taskId, small).map(([id, progress]) => ({ type: 'chief.task.progress', payload: { taskId: id, progress, message: 'step' } })),
  taskId.map((id) => ({ type: 'gate.passed', payload: { taskId: id, gate: 'lint' } })),
  taskId.map((id) => ({ type: 'gate.failed', payload: { taskId: id, gate: 'test', reason: 'red' } })),
)
const purgeSpec: fc.Arbitrary<Spec> = fc.oneof(
  fc.constant({ type: 'tasks.purged', payload: {} }),
  fc.subarray([...TASKS, 't404']).map((taskIds) => ({ type: 'tasks.purged', payload: { taskIds } })),
)
const bookmarkSpec: fc.Arbitrary<Spec> = fc.tuple(fc.constantFrom('bookmark.saved', 'bookmark.deleted'), fc.constantFrom(...BOOKMARKS)).map(([type, id]) => ({ type, payload: { bookmarkId: id } }))
const keyedSpec: fc.Arbitrary<Spec> = fc.oneof(
  fc.tuple(fc.constantFrom(...KEYS), small).map(([key, n]) => ({ type: 'deploy.finished', payload: { n }, key })),
  // A catalogue type under an explicit key; a deleting type under an explicit key.
  fc.tuple(fc.constantFrom(...KEYS), agentId).map(([key, id]) => ({ type: 'agent.status', payload: { agentId: id, agentName: `n-${id}`, status: 'keyed', message: 'k' }, key })),
  fc.tuple(fc.constantFrom(...KEYS), taskId).map(([key, id]) => ({ type: 'task.deleted', payload: { taskId: id }, key })),
)
const keylessSpec: fc.Arbitrary<Spec> = small.map((n) => ({ type: 'log.line', payload: { n } }))
/** Events elsewhere (only another channel), and one also on the store's channel. */
const elsewhereSpec: fc.Arbitrary<Spec> = fc.oneof(
  agentId.map((id) => ({ type: 'agent.status', payload: { agentId: id, agentName: `n-${id}`, status: 'elsewhere', message: 'e' }, channels: ['project:noise'] })),
  taskId.map((id) => ({ type: 'task.deleted', payload: { taskId: id }, channels: ['project:noise', CH] })),
)
const eventSpec: fc.Arbitrary<Spec> = fc.oneof(
  { weight: 4, arbitrary: agentSpec },
  { weight: 5, arbitrary: taskSpec },
  { weight: 1, arbitrary: purgeSpec },
  { weight: 2, arbitrary: bookmarkSpec },
  { weight: 2, arbitrary: keyedSpec },
  { weight: 1, arbitrary: keylessSpec },
  { weight: 1, arbitrary: elsewhereSpec },
)

type Step =
  | { kind: 'publish'; events: Spec[]; mode: 'batch' | 'concurrent' }
  /** Drop every live bridge (no close frame); `connected`: first wait for a WebSocket to be up. */
  | { kind: 'drop'; connected: boolean }
  /** Silence every live bridge (the client's pong timeout finds out). */
  | { kind: 'freeze' }
  /** Refuse upgrades and drop, until the client has fallen back to polling (or `unblock`). */
  | { kind: 'block' }
  /** Allow upgrades again; `wait`: until the client is back on a WebSocket. */
  | { kind: 'unblock'; wait: boolean }
  /** Wait until the client's stream of the channel has delivered every stored event. */
  | { kind: 'settle' }

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('publish' as const), events: fc.array(eventSpec, { minLength: 1, maxLength: 6 }), mode: fc.constantFrom('batch' as const, 'concurrent' as const) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('drop' as const), connected: fc.boolean() }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'freeze' as const }) },
  { weight: 2, arbitrary: fc.constant({ kind: 'block' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('unblock' as const), wait: fc.boolean() }) },
  { weight: 3, arbitrary: fc.constant({ kind: 'settle' as const }) },
)

/**
 * One run: a fresh server behind a proxy, a client, the steps (the live store created before step
 * `liveAt`), a final key-less marker event, then: the store at the last seq holds exactly the
 * channel's state as replaying the whole log gives it, and as the server reports it.
 */
async function runScenario(steps: Step[], liveAt: number, plain: 'none' | 'since0'): Promise<void> {
  const t = await startServer()
  const proxy = startProxy(t.url)
  let subject: RealtimeClient | undefined
  let store: LiveChannel | undefined
  try {
    subject = createRealtimeClient({ url: proxy.url, ...FAST, ...POLLING_ONLY })
    const plainSeqs: number[] = []
    if (plain === 'since0') subject.subscribe(CH, (event) => plainSeqs.push(event.seq), { since: 0, onOther: (frame) => plainSeqs.push(frame.seq) })
    const changes: LiveChange[] = []
    const inconsistencies: string[] = []
    let blocked = false
    for (let i = 0; i <= steps.length; i++) {
      if (i === liveAt) {
        const created = subject.live(CH)
        store = created
        created.subscribe((c) => {
          changes.push(c)
          // Whatever the coalescing, a key only added/updated is present, a key only removed is absent.
          const entities = new Map(allOf(created.getSnapshot()))
          for (const key of [...c.added, ...c.updated]) if (!c.removed.includes(key) && !entities.has(key)) inconsistencies.push(`${key} reported set but absent`)
          for (const key of c.removed) if (!c.added.includes(key) && !c.updated.includes(key) && entities.has(key)) inconsistencies.push(`${key} reported removed but present`)
        })
      }
      const step = steps[i]
      if (!step) continue
      const current = subject
      switch (step.kind) {
        case 'publish': {
          const events = step.events.map((spec) => ev(spec.type, spec.payload, { ...(spec.key ? { key: spec.key } : {}), ...(spec.channels ? { channels: spec.channels } : {}) }))
          if (step.mode === 'batch') await publish(t.url, events)
          else await Promise.all(events.map((event) => publish(t.url, [event]))) // group-committed, seq order = arrival order
          break
        }
        case 'drop':
          if (step.connected && !blocked) await waitFor(() => proxy.live > 0 && current.state.status === 'open' && current.state.transport === 'websocket', 5000, 'a connection to drop')
          proxy.dropAll()
          break
        case 'freeze':
          proxy.freezeAll()
          break
        case 'block':
          blocked = true
          proxy.refuseUpgrades = true
          proxy.dropAll()
          await waitFor(() => current.state.status === 'open' && current.state.transport === 'polling', 5000, 'polling')
          break
        case 'unblock':
          blocked = false
          proxy.refuseUpgrades = false
          if (step.wait) await waitFor(() => current.state.status === 'open' && current.state.transport === 'websocket', 5000, 'the WebSocket back')
          break
        case 'settle': {
          const seq = (await channelLog(t.url)).at(-1)?.seq ?? 0 // the channel's newest event (not the server's)
          await waitFor(() => current.state.status === 'open' && (current.cursor(CH) ?? seq) >= seq, 5000, `the stream at seq ${seq}`)
          break
        }
      }
    }
    // Still blocked: the store catches up by polling.
    await publish(t.url, [ev('log.line', { marker: true })])
    const last = await lastSeq(t.url)
    const watched = store!
    await waitFor(() => watched.getSnapshot().synced && watched.getSnapshot().seq >= last, 8000, `the store at seq ${last}`)
    const snapshot = watched.getSnapshot()
    expect(snapshot.seq).toBe(last)

    const log = await channelLog(t.url)
    expect(log.at(-1)?.seq).toBe(last)
    const reference = fold(log)
    const state = await httpState(t.url)
    expect(state.seq).toBe(last)
    expect(view(allOf(snapshot))).toEqual(view(reference))
    expect(stateView(state)).toEqual(view(reference))
    for (const wire of state.entities) expect(new Map(allOf(snapshot)).get(keyOf(wire))).toEqual(asFrame(wire))
    // Nothing was truncated: the first state is the only reset.
    expect(changes.map((c) => c.reset)).toEqual(changes.map((_, i) => i === 0))
    expect(inconsistencies).toEqual([])
    if (process.env.LIVE_DEBUG) console.log(JSON.stringify({ steps: steps.map((s) => (s.kind === 'publish' ? s.events.length : s.kind === 'unblock' ? (s.wait ? 'unblock!' : 'unblock') : s.kind)), liveAt, plain, last, entities: snapshot.entities.size, reconnects: subject.state.reconnects, bridged: proxy.bridged, polls: proxy.requests.filter((p) => p === '/api/events/since').length, changes: changes.length }))
    if (plain === 'since0') {
      await waitFor(() => plainSeqs.at(-1) === last, 5000, 'the plain subscription at the last seq')
      expect(plainSeqs).toEqual(log.map((event) => event.seq))
    }
  } finally {
    store?.close()
    subject?.close()
    await proxy.stop()
    await t.close()
  }
}

describe('property: the live store converges to the replayed log, through reconnects', () => {
  test('random catalogue event sequences, random drops/freezes/refused upgrades, the store created at a random point', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(stepArb, { minLength: 1, maxLength: 10 }),
        fc.nat(),
        fc.constantFrom('none' as const, 'since0' as const),
        async (steps, liveAtRaw, plain) => {
          await runScenario(steps, liveAtRaw % (steps.length + 1), plain)
        },
      ),
      { seed: SEED, numRuns: RUNS, interruptAfterTimeLimit: 50_000, markInterruptAsFailure: true },
    )
  }, 60_000)
})
