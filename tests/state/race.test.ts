import { afterEach, expect, test } from 'bun:test'
import { startServer, type TestServer } from '../helpers/server'
import type { TestSocket } from '../helpers/ws'
import {
  applyEvent,
  channelLog,
  ev,
  httpState,
  ingestAll,
  type LoggedSocket,
  openLogged,
  roundTrip,
  seqsByKey,
  seqsOf,
  type State,
  stateFromEntities, splitCaughtUp } from './helpers'

/**
 * Snapshot subscribes racing concurrent ingest. Several sockets subscribe with `snapshot: true` at
 * different moments while two producers (POST /ingest and in-process publish) create, update and
 * delete entities of a channel holding more than 1000 entities, so every snapshot comes in several
 * parts with ingest running between them. For each socket: the snapshot is exactly the channel's
 * state at its seq S, every stored event of the channel after S arrives live exactly once and in
 * order (none at or before S), and snapshot + live events fold to the server's final state.
 */

let t: TestServer | undefined
const sockets: TestSocket[] = []

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  await t?.close()
  t = undefined
})

/** A small deterministic generator, so a failure can be reproduced. */
function lcg(seed: number): () => number {
  let x = seed >>> 0
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0
    return x / 2 ** 32
  }
}

test('snapshot subscribes racing concurrent ingest: no gap, no duplicate, the same final state', async () => {
  t = await startServer()
  const server = t
  const CHANNEL = 'project:race'
  const NOISE = 'project:noise'
  const PRELOAD_TASKS = 1200
  const PRELOAD_BOOKMARKS = 100

  await ingestAll(server, [
    ...Array.from({ length: PRELOAD_TASKS }, (_, i) => ev('task.created', { taskId: `t${i}`, title: `task ${i}`, projectId: 'race' }, { channels: [CHANNEL] })),
    ...Array.from({ length: PRELOAD_BOOKMARKS }, (_, i) => ev('bookmark.saved', { bookmarkId: `b${i}` }, { channels: [CHANNEL] })),
    ...Array.from({ length: 50 }, () => ev('noise.tick', {}, { channels: [NOISE] })),
  ])

  const random = lcg(20251123)
  const pick = (n: number) => Math.floor(random() * n)
  let nextTask = PRELOAD_TASKS
  /** One event of a random kind: most touch the channel's state, some only its log, some other channels. */
  function randomEvent(): { type: string; payload: Record<string, unknown>; channels: string[]; key?: string } {
    const r = random()
    if (r < 0.35) return { type: 'task.updated', payload: { taskId: `t${pick(nextTask)}`, changes: { n: pick(1000) } }, channels: [CHANNEL] }
    if (r < 0.5) return { type: 'task.created', payload: { taskId: `t${nextTask++}`, title: 'new', projectId: 'race' }, channels: [CHANNEL] }
    if (r < 0.58) return { type: 'task.deleted', payload: { taskId: `t${pick(nextTask)}` }, channels: [CHANNEL] }
    if (r < 0.64) return { type: 'bookmark.saved', payload: { bookmarkId: `b${pick(PRELOAD_BOOKMARKS + 20)}` }, channels: [CHANNEL] }
    if (r < 0.68) return { type: 'bookmark.deleted', payload: { bookmarkId: `b${pick(PRELOAD_BOOKMARKS + 20)}` }, channels: [CHANNEL] }
    if (r < 0.76) return { type: 'deploy.finished', payload: { n: pick(1000) }, channels: [CHANNEL], key: `deploy:${pick(20)}` }
    if (r < 0.79) return { type: 'tasks.purged', payload: { taskIds: [`t${pick(nextTask)}`, `t${pick(nextTask)}`, `t${pick(nextTask)}`] }, channels: [CHANNEL] }
    if (r < 0.86) return { type: 'log.line', payload: { n: pick(1000) }, channels: [CHANNEL] } // log only
    if (r < 0.93) return { type: 'task.updated', payload: { taskId: `t${pick(nextTask)}` }, channels: [CHANNEL, NOISE] }
    return { type: 'noise.tick', payload: {}, channels: [NOISE] }
  }

  // The racers: each opens a socket and subscribes with snapshot at the moment it is started.
  const racers: Array<Promise<LoggedSocket>> = []
  const race = (resubscribe = false) =>
    racers.push(
      (async () => {
        const socket = await openLogged(server.wsUrl, sockets)
        socket.send({ type: 'subscribe', channelId: CHANNEL, snapshot: true })
        if (resubscribe) {
          // Restart the subscription once the first snapshot is under way.
          await socket.next((f) => f.type === 'snapshot', 10_000)
          socket.send({ type: 'subscribe', channelId: CHANNEL, snapshot: true })
        }
        return socket
      })(),
    )

  const BATCHES = 15
  const BATCH = 60
  const httpProducer = (async () => {
    for (let b = 0; b < BATCHES; b++) {
      if (b === 0 || b === 3 || b === 7 || b === 12) race()
      if (b === 5) race(true)
      await ingestAll(server, Array.from({ length: BATCH }, () => ev('', {}, randomEvent())))
    }
  })()
  const publishProducer = (async () => {
    for (let b = 0; b < BATCHES; b++) {
      if (b === 1 || b === 9) race()
      const batch = Array.from({ length: BATCH }, () => randomEvent())
      expect(await server.server.publish(batch as any)).toEqual({ stored: BATCH, duplicates: 0 })
    }
  })()
  await Promise.all([httpProducer, publishProducer])
  const racing = await Promise.all(racers)
  expect(racing.length).toBe(7)

  // A last event on the channel marks the end of every socket's stream.
  const sentinel = ev('deploy.finished', { last: true }, { channels: [CHANNEL], key: 'sentinel:1' })
  await ingestAll(server, [sentinel])
  for (const socket of racing) await socket.next((f) => f.id === sentinel.id, 10_000)

  // The truth: the channel's whole log (nothing was pruned) and its state over HTTP.
  const log = await channelLog(server, CHANNEL)
  expect(log.at(-1).id).toBe(sentinel.id)
  const final = await httpState(server, CHANNEL)
  expect(final.status).toBe(200)
  const finalState = seqsByKey(stateFromEntities(final.body.entities))
  const foldLog = (upTo: number): State => {
    const state: State = new Map()
    for (const event of log) if (event.seq <= upTo) applyEvent(state, event)
    return state
  }
  // The server's state is the fold of its own log.
  expect(seqsByKey(foldLog(Infinity))).toEqual(finalState)
  expect(Object.keys(finalState).length).toBeGreaterThan(1000)

  const snapshotSeqs: number[] = []
  for (const socket of racing) {
    await roundTrip(socket)
    // The stream of the last subscription: subscribed, the parts, then events, then the pong.
    const from = socket.log.findLastIndex((f) => f.type === 'subscribed')
    const stream = socket.log.slice(from)
    expect(stream[0]).toEqual({ type: 'subscribed', channelId: CHANNEL, epoch: final.body.epoch, mode: 'snapshot' })
    const lastPart = stream.findIndex((f) => f.type === 'snapshot' && f.done)
    expect(lastPart).toBeGreaterThan(0)
    const parts = stream.slice(1, lastPart + 1)
    const { events: live, lastSeq: caughtUp } = splitCaughtUp(stream.slice(lastPart + 1, -1))
    expect(caughtUp).toBeGreaterThanOrEqual(stream[1].seq)
    expect(stream.at(-1)).toEqual({ type: 'pong' })
    expect(parts.every((f) => f.type === 'snapshot' && f.channelId === CHANNEL)).toBe(true)
    expect(parts.map((p) => p.done)).toEqual([...parts.slice(1).map(() => false), true])
    const S = parts[0].seq
    expect(parts.every((p) => p.seq === S)).toBe(true)
    snapshotSeqs.push(S)

    // The snapshot is exactly the state at S, in several parts, ascending.
    const entities = parts.flatMap((p) => p.entities)
    expect(entities.length).toBeGreaterThan(1000)
    expect(parts.length).toBeGreaterThanOrEqual(2)
    const seqs = seqsOf(entities)
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b))
    const state = stateFromEntities(entities)
    expect(seqsByKey(state)).toEqual(seqsByKey(foldLog(S)))

    // Live: only event frames of the channel, exactly the stored events after S, in order.
    expect(live.every((f) => typeof f.seq === 'number' && f.channelId === CHANNEL)).toBe(true)
    expect(seqsOf(live)).toEqual(seqsOf(log.filter((event) => event.seq > S)))
    for (const frame of live) applyEvent(state, frame)
    expect(seqsByKey(state)).toEqual(finalState)
    // Same events, not merely the same seqs.
    expect([...state.values()].map((event) => event.id).sort()).toEqual(final.body.entities.map((e: any) => e.id).sort())
  }
  // The racers really raced: their snapshots were taken at different moments of the ingest.
  expect(new Set(snapshotSeqs).size).toBeGreaterThanOrEqual(3)
  expect(Math.min(...snapshotSeqs)).toBeLessThan(log.at(-1).seq - 500)
})
