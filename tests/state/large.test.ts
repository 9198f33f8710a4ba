import { afterEach, describe, expect, test } from 'bun:test'
import { startServer, type TestServer } from '../helpers/server'
import type { TestSocket } from '../helpers/ws'
import {
  applyEvent,
  asFrame,
  channelLog,
  ev,
  eventFrames,
  httpState,
  idsOf,
  ingestAll,
  type LoggedSocket,
  openLogged,
  roundTrip,
  seqsByKey,
  seqsOf,
  type State,
  snapshotOf,
  stateFromEntities, splitCaughtUp } from './helpers'

/**
 * Large snapshots are sent in parts of at most 1000 entities or about 512 KB: every part has the
 * same seq, `done` only on the last, and together they are the whole state in ascending seq order.
 */

const PART_ENTITIES = 1000
const PART_BYTES = 512 * 1024

let t: TestServer | undefined
const sockets: TestSocket[] = []

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  await t?.close()
  t = undefined
})

/** A socket that also records the length of every raw message it receives. */
async function openSized(server: TestServer): Promise<LoggedSocket & { sizes: number[] }> {
  const socket = (await openLogged(server.wsUrl, sockets)) as LoggedSocket & { sizes: number[] }
  socket.sizes = []
  socket.ws.addEventListener('message', (message) => socket.sizes.push(String(message.data).length))
  return socket
}

/**
 * The part sizes the rule gives for these entity frames: a part takes entities while it has fewer
 * than 1000 and fewer than 512 KB of frames (so it may end one frame past 512 KB).
 */
function expectedPartSizes(entities: any[]): number[] {
  const sizes: number[] = []
  let index = 0
  do {
    let count = 0
    let bytes = 0
    while (index < entities.length && count < PART_ENTITIES && bytes < PART_BYTES) {
      bytes += JSON.stringify(entities[index++]).length
      count++
    }
    sizes.push(count)
  } while (index < entities.length)
  return sizes
}

function expectWellFormedParts(parts: any[], channelId: string): void {
  expect(parts.every((p) => p.type === 'snapshot' && p.channelId === channelId)).toBe(true)
  expect(parts.map((p) => p.done)).toEqual([...parts.slice(1).map(() => false), true])
  expect(new Set(parts.map((p) => p.seq)).size).toBe(1)
  expect(Object.keys(parts[0]).sort()).toEqual(['channelId', 'done', 'entities', 'seq', 'type'])
}

describe('large snapshots', () => {
  test('2,500 entities: three parts of 1000, 1000 and 500, then live events', async () => {
    t = await startServer()
    const server = t
    const C = 'project:large'
    const created = Array.from({ length: 2500 }, (_, i) => ev('task.created', { taskId: `t${i}`, title: `task ${i}`, projectId: 'large' }, { channels: [C] }))
    // The first 200 tasks are updated afterwards: their latest events move to the end.
    const updated = Array.from({ length: 200 }, (_, i) => ev('task.updated', { taskId: `t${i}`, changes: { i } }, { channels: [C] }))
    await ingestAll(server, [...created, ...updated])

    const socket = await openSized(server)
    const snapshot = await snapshotOf(socket, C)
    expectWellFormedParts(snapshot.parts, C)
    expect(snapshot.parts.map((p) => p.entities.length)).toEqual([1000, 1000, 500])
    expect(snapshot.seq).toBe(2700)
    expect(idsOf(snapshot.entities)).toEqual([...created.slice(200), ...updated].map((e) => e.id))
    expect(seqsOf(snapshot.entities)).toEqual(Array.from({ length: 2500 }, (_, i) => i + 201))

    const http = await httpState(server, C)
    expect(http.body.seq).toBe(snapshot.seq)
    expect(snapshot.entities).toEqual(http.body.entities.map(asFrame))

    await ingestAll(server, [ev('task.deleted', { taskId: 't0' }, { channels: [C] })])
    expect(seqsOf(await socket.events(C, 1))).toEqual([2701])
    await roundTrip(socket)
    expect(eventFrames(socket)).toEqual([])
    expect(socket.log.map((f) => f.type)).toEqual(['subscribed', 'snapshot', 'snapshot', 'snapshot', 'caught_up', 'task.deleted', 'pong'])
  })

  test('2 KB payloads: parts are cut at about 512 KB as well', async () => {
    t = await startServer()
    const server = t
    const C = 'project:heavy'
    const blob = (i: number) => `${i}:`.padEnd(2000, 'x')
    const created = Array.from({ length: 2500 }, (_, i) => ev('task.created', { taskId: `t${i}`, title: 'heavy', projectId: 'heavy', blob: blob(i) }, { channels: [C] }))
    await ingestAll(server, created, {}, 300) // 300 × 2 KB stays under the 1 MB body limit

    const socket = await openSized(server)
    const snapshot = await snapshotOf(socket, C, {}, 10_000)
    expectWellFormedParts(snapshot.parts, C)
    expect(snapshot.entities.length).toBe(2500)
    expect(idsOf(snapshot.entities)).toEqual(created.map((e) => e.id))
    expect(snapshot.entities[1234].payload.blob).toBe(blob(1234))
    const partSizes = snapshot.parts.map((p) => p.entities.length)
    expect(partSizes).toEqual(expectedPartSizes(snapshot.entities))
    expect(partSizes.length).toBeGreaterThanOrEqual(10)
    expect(Math.max(...partSizes)).toBeLessThan(PART_ENTITIES)
    // No message is much larger than 512 KB: at most one entity frame past it.
    const frameBytes = Math.max(...snapshot.entities.map((e) => JSON.stringify(e).length))
    const messageSizes = socket.sizes.slice(1, 1 + snapshot.parts.length)
    expect(messageSizes.length).toBe(snapshot.parts.length)
    for (const size of messageSizes) expect(size).toBeLessThan(PART_BYTES + frameBytes + 200)
    expect(messageSizes.slice(0, -1).every((size) => size >= PART_BYTES)).toBe(true)

    const http = await httpState(server, C)
    expect(http.body.seq).toBe(snapshot.seq)
    expect(snapshot.entities).toEqual(http.body.entities.map(asFrame))
  })

  test('a multi-part snapshot with ingest running meanwhile: the state at its seq, then every later event once', async () => {
    t = await startServer()
    const server = t
    const C = 'project:busy'
    const blob = 'y'.repeat(2000)
    await ingestAll(
      server,
      Array.from({ length: 2500 }, (_, i) => ev('task.created', { taskId: `t${i}`, title: 'busy', projectId: 'busy', blob }, { channels: [C] })),
      {},
      300,
    )

    const socket = await openSized(server)
    socket.send({ type: 'subscribe', channelId: C, snapshot: true })
    // Publish in-process while the parts go out, until the socket has them all (bounded).
    let published = 0
    for (let round = 0; round < 200 && !socket.log.some((f) => f.type === 'snapshot' && f.done); round++) {
      const batch = Array.from({ length: 5 }, (_, i) =>
        i % 3 === 2
          ? { type: 'task.deleted', payload: { taskId: `t${(round * 7 + i) % 2500}` }, channels: [C] }
          : { type: 'task.updated', payload: { taskId: `t${(round * 11 + i) % 2600}`, blob }, channels: [C] },
      )
      await server.server.publish(batch)
      published += batch.length
    }
    expect(published).toBeGreaterThan(0)
    const sentinel = ev('deploy.finished', {}, { channels: [C], key: 'sentinel:1' })
    await ingestAll(server, [sentinel])
    await socket.next((f) => f.id === sentinel.id, 10_000)
    await roundTrip(socket)

    const log = await channelLog(server, C)
    const foldLog = (upTo: number): State => {
      const state: State = new Map()
      for (const event of log) if (event.seq <= upTo) applyEvent(state, event)
      return state
    }
    const lastPart = socket.log.findIndex((f) => f.type === 'snapshot' && f.done)
    const parts = socket.log.slice(1, lastPart + 1)
    expectWellFormedParts(parts, C)
    expect(parts.length).toBeGreaterThanOrEqual(3)
    const S = parts[0].seq
    const state = stateFromEntities(parts.flatMap((p) => p.entities))
    expect(seqsByKey(state)).toEqual(seqsByKey(foldLog(S)))
    const { events: live, lastSeq: caughtUp } = splitCaughtUp(socket.log.slice(lastPart + 1, -1))
    expect(caughtUp).toBeGreaterThanOrEqual(S)
    expect(seqsOf(live)).toEqual(seqsOf(log.filter((event) => event.seq > S)))
    for (const frame of live) applyEvent(state, frame)
    const http = await httpState(server, C)
    expect(seqsByKey(state)).toEqual(seqsByKey(stateFromEntities(http.body.entities)))
  })

  test('unsubscribing during a multi-part snapshot stops it, and nothing of the channel follows', async () => {
    t = await startServer()
    const server = t
    const C = 'project:stop'
    const blob = 'z'.repeat(2000)
    await ingestAll(
      server,
      Array.from({ length: 2500 }, (_, i) => ev('task.created', { taskId: `t${i}`, title: 'stop', projectId: 'stop', blob }, { channels: [C] })),
      {},
      300,
    )
    const socket = await openSized(server)
    socket.send({ type: 'subscribe', channelId: C, snapshot: true })
    socket.send({ type: 'unsubscribe', channelId: C })
    await socket.next((f) => f.type === 'unsubscribed')
    await roundTrip(socket)
    await Bun.sleep(100) // only to prove that no further part arrives
    await ingestAll(server, [ev('task.updated', { taskId: 't1' }, { channels: [C] })])
    await roundTrip(socket)

    const at = socket.log.findIndex((f) => f.type === 'unsubscribed')
    const parts = socket.log.slice(0, at).filter((f) => f.type === 'snapshot')
    expect(parts.length).toBeGreaterThanOrEqual(1)
    expect(parts.every((p) => p.done === false)).toBe(true)
    expect(socket.log.slice(at).filter((f) => f.type === 'snapshot' || typeof f.seq === 'number')).toEqual([])
  })
})
