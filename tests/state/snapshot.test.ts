import { afterEach, describe, expect, test } from 'bun:test'
import type { RealtimeServerOptions } from '../../src/server'
import { getJson, ingest, startServer, type TestServer } from '../helpers/server'
import type { TestSocket } from '../helpers/ws'
import {
  applyEvent,
  asFrame,
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
  snapshotOf,
  stateFromEntities,
} from './helpers'

/**
 * Channel state over WebSocket (`subscribe` with `snapshot: true`) and HTTP
 * (`GET /api/channels/:channelId/state`): which entity each catalogue type describes, the latest
 * event per entity, explicit keys, tombstones, the `stats` entity counts, the choice between a
 * replay and a snapshot when `since` is given too, and bad input.
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

const open = (server: TestServer): Promise<LoggedSocket> => openLogged(server.wsUrl, sockets)

/** The frame a subscriber of `channelId` gets for an ingested event. */
function frameOf(input: any, seq: number, channelId: string) {
  const { channels: _channels, ...rest } = input
  return { ...rest, seq, channelId }
}

async function lastSeq(server: TestServer): Promise<number> {
  const { body } = await getJson(`${server.url}/api/events/since?since=0&limit=1`)
  return body.lastSeq
}

/**
 * Takes the channel's state over a fresh socket and over HTTP and checks they agree: the same seq
 * (the newest seq stored), the same entities (frames are the wire events without `channels`),
 * ascending by seq, each on the channel. Returns the snapshot's entities.
 */
async function agreedState(server: TestServer, channelId: string): Promise<{ seq: number; entities: any[] }> {
  const socket = await open(server)
  const snapshot = await snapshotOf(socket, channelId)
  const http = await httpState(server, channelId)
  expect(http.status).toBe(200)
  expect(snapshot.subscribed).toEqual({ type: 'subscribed', channelId, epoch: http.body.epoch, mode: 'snapshot' })
  expect(http.body.channelId).toBe(channelId)
  expect(http.body.seq).toBe(snapshot.seq)
  expect(snapshot.seq).toBe(await lastSeq(server))
  expect(snapshot.entities).toEqual(http.body.entities.map(asFrame))
  for (const entity of http.body.entities) expect(entity.channels).toContain(channelId)
  for (const entity of snapshot.entities) expect(entity.channelId).toBe(channelId)
  const seqs = seqsOf(snapshot.entities)
  expect(seqs).toEqual([...seqs].sort((a, b) => a - b))
  expect(new Set(seqs).size).toBe(seqs.length)
  for (const seq of seqs) expect(seq).toBeLessThanOrEqual(snapshot.seq)
  socket.close()
  return { seq: snapshot.seq, entities: snapshot.entities }
}

async function stats(socket: TestSocket): Promise<any> {
  const id = crypto.randomUUID()
  const response = await socket.request({ type: 'request', id, action: 'stats' }, 'response')
  expect(response).toMatchObject({ requestId: id, success: true })
  return response.data
}

describe('entity keys', () => {
  test('each catalogue type keys its entity by its id field; the latest event of each entity wins', async () => {
    const server = await start()
    const C = 'project:keys'
    const on = (type: string, payload: Record<string, unknown>) => ev(type, payload, { channels: [C] })
    const e = [
      on('agent.spawned', { agentId: 'a1', agentName: 'same', taskId: 't1' }), // 1 agent:a1
      on('agent.status', { agentId: 'a2', agentName: 'same', status: 'idle', message: '' }), // 2 agent:a2 (same name, other id)
      on('agent.completed', { agentId: 'a1', agentName: 'same', taskId: 't1', result: 'ok', duration: 5 }), // 3 agent:a1
      on('agent.failed', { agentId: 'a3', agentName: 'other', taskId: 't1', error: 'boom' }), // 4 agent:a3
      on('task.created', { taskId: 't1', title: 'T', projectId: 'P' }), // 5 task:t1
      on('task.status_changed', { taskId: 't1', oldStatus: 'todo', newStatus: 'doing' }), // 6 task:t1
      on('task.updated', { taskId: 't2' }), // 7 task:t2
      on('task.started', { taskId: 't3' }), // 8 task:t3
      on('task.completed', { taskId: 't3' }), // 9 task:t3
      on('chief.task.assigned', { taskId: 't4', agentName: 'same' }), // 10 task:t4
      on('chief.task.progress', { taskId: 't1', progress: 50, message: 'half' }), // 11 task:t1
      on('gate.passed', { taskId: 't5', gate: 'lint' }), // 12 task:t5
      on('gate.failed', { taskId: 't2', gate: 'test', reason: 'red' }), // 13 task:t2
      on('chief.plan.created', { planId: 'p1', tasks: [] }), // 14 plan:p1
      on('swarm.phase.started', { swarmId: 's1', phase: 'build' }), // 15 swarm:s1
      on('swarm.phase.completed', { swarmId: 's1', phase: 'build', results: null }), // 16 swarm:s1
      on('chat.message', { messageId: 'a1', agentId: 'a2', content: 'hi' }), // 17 message:a1 (not agent:a1 or agent:a2)
      on('session.started', { sessionId: 'a1', taskId: 't1' }), // 18 session:a1 (not task:t1)
      on('session.ended', { sessionId: 'x2' }), // 19 session:x2
      on('event.logged', { eventId: 'e1', taskId: 't3' }), // 20 event:e1
      on('event.updated', { eventId: 'e1' }), // 21 event:e1
      on('bookmark.saved', { bookmarkId: 'b1', taskId: 't1' }), // 22 bookmark:b1
      on('swarm.phase.started', { swarmId: 's2', phase: 'plan' }), // 23 swarm:s2
      on('gate.passed', { taskId: 't5', gate: 'types' }), // 24 task:t5
      on('plain.noise', { taskId: 't1', agentId: 'a1' }), // 25 outside the catalogue, no key: no part
    ]
    await ingestAll(server, e)
    await ingestAll(server, [ev('other.channel', {}, { channels: ['project:elsewhere'] })]) // 26

    // key → the seq of its latest event (seq n is e[n - 1]).
    const expected: Record<string, number> = {
      'agent:a1': 3,
      'agent:a2': 2,
      'agent:a3': 4,
      'bookmark:b1': 22,
      'event:e1': 21,
      'message:a1': 17,
      'plan:p1': 14,
      'session:a1': 18,
      'session:x2': 19,
      'swarm:s1': 16,
      'swarm:s2': 23,
      'task:t1': 11,
      'task:t2': 13,
      'task:t3': 9,
      'task:t4': 10,
      'task:t5': 24,
    }
    const { seq, entities } = await agreedState(server, C)
    expect(seq).toBe(26)
    const seqs = Object.values(expected).sort((a, b) => a - b)
    expect(seqsOf(entities)).toEqual(seqs)
    expect(entities).toEqual(seqs.map((s) => frameOf(e[s - 1], s, C)))
    expect(seqsByKey(stateFromEntities(entities))).toEqual(expected)
    // No entity frame carries a key: none was given at ingest.
    expect(entities.filter((entity) => 'key' in entity)).toEqual([])
  })

  test('an explicit key wins over the catalogue and makes any type an entity; without one, other types take no part', async () => {
    const server = await start()
    const C = 'project:custom'
    const on = (type: string, payload: Record<string, unknown>, key?: string) => ev(type, payload, { channels: [C], ...(key ? { key } : {}) })
    const e = [
      on('deploy.finished', { version: 1 }, 'deploy:prod'), // 1
      on('deploy.finished', { version: 2 }, 'deploy:staging'), // 2
      on('deploy.finished', { version: 3 }, 'deploy:prod'), // 3 supersedes 1
      on('deploy.finished', { version: 4 }), // 4 no key: no part
      on('metrics.tick', { taskId: 't1' }), // 5 no key: no part
      on('agent.status', { agentId: 'a1', agentName: 'n', status: 's', message: 'm' }, 'custom:agent'), // 6 custom:agent, not agent:a1
      on('agent.status', { agentId: 'a1', agentName: 'n', status: 's2', message: 'm' }), // 7 agent:a1
      on('task.deleted', { taskId: 't9' }, 'deploy:staging'), // 8 a tombstone of the explicit key: deploy:staging goes
    ]
    await ingestAll(server, e)
    // In-process publish takes a key too (9).
    const published = { type: 'deploy.finished', payload: { version: 5 }, channels: [C], key: 'deploy:canary' }
    expect(await server.server.publish(published as any)).toEqual({ stored: 1, duplicates: 0 })

    const { entities } = await agreedState(server, C)
    expect(seqsOf(entities)).toEqual([3, 6, 7, 9])
    expect(entities.slice(0, 3)).toEqual([frameOf(e[2], 3, C), frameOf(e[5], 6, C), frameOf(e[6], 7, C)])
    // Frames carry `key` exactly when the event had one.
    expect(entities.map((entity) => entity.key)).toEqual(['deploy:prod', 'custom:agent', undefined, 'deploy:canary'])
    expect('key' in entities[2]).toBe(false)
    expect(entities[3]).toMatchObject({ type: 'deploy.finished', key: 'deploy:canary', payload: { version: 5 } })
    expect(seqsByKey(stateFromEntities(entities))).toEqual({ 'agent:a1': 7, 'custom:agent': 6, 'deploy:canary': 9, 'deploy:prod': 3 })

    // The HTTP entities carry the key as well.
    const http = await httpState(server, C)
    expect(http.body.entities.map((entity: any) => entity.key ?? null)).toEqual(['deploy:prod', 'custom:agent', null, 'deploy:canary'])
  })

  test('a key that is empty or longer than 256 characters is refused and changes nothing', async () => {
    const server = await start()
    const C = 'project:badkey'
    await ingestAll(server, [ev('deploy.finished', { v: 1 }, { channels: [C], key: 'k:1' })])
    for (const key of ['', 'k'.repeat(257), 42]) {
      const { status, body } = await ingest(server.url, ev('deploy.finished', { v: 2 }, { channels: [C], key }))
      expect(status).toBe(400)
      expect(body.error.message).toStartWith('key: ')
    }
    // 256 characters is allowed.
    await ingestAll(server, [ev('deploy.finished', { v: 3 }, { channels: [C], key: 'k'.repeat(256) })])
    const { entities } = await agreedState(server, C)
    expect(entities.map((entity) => [entity.seq, entity.key])).toEqual([
      [1, 'k:1'],
      [2, 'k'.repeat(256)],
    ])
  })

  test('a duplicate event id changes no state, not even a repeated tombstone', async () => {
    const server = await start()
    const C = 'project:dup'
    const v1 = ev('task.updated', { taskId: 't1', v: 1 }, { channels: [C] }) // 1
    const v2 = ev('task.updated', { taskId: 't1', v: 2 }, { channels: [C] }) // 2
    const created = ev('task.created', { taskId: 't2', title: 'x', projectId: 'p' }, { channels: [C] }) // 3
    const deleted = ev('task.deleted', { taskId: 't2' }, { channels: [C] }) // 4
    const again = ev('task.created', { taskId: 't2', title: 'again', projectId: 'p' }, { channels: [C] }) // 5
    await ingestAll(server, [v1, v2, created, deleted, again])
    const { status, body } = await ingest(server.url, { events: [v1, deleted, { ...created, payload: { ...created.payload, title: 'changed' } }] })
    expect(status).toBe(200)
    expect(body).toEqual({ stored: 0, duplicates: 3 })
    const { entities } = await agreedState(server, C)
    expect(idsOf(entities)).toEqual([v2.id, again.id])
    expect(seqsOf(entities)).toEqual([2, 5])
  })

  test('the state is per channel: an event on several channels is an entity of each', async () => {
    const server = await start()
    // Derived channels: org:local, task:t1, project:P, agent:n.
    await ingestAll(server, [
      ev('task.created', { taskId: 't1', title: 'x', projectId: 'P' }), // 1 org:local, task:t1, project:P
      ev('agent.spawned', { agentId: 'a1', agentName: 'n', taskId: 't1' }), // 2 org:local, task:t1, agent:n
      ev('task.updated', { taskId: 't1' }, { channels: ['project:P'] }), // 3 project:P only
    ])
    expect(seqsOf((await agreedState(server, 'org:local')).entities)).toEqual([1, 2])
    expect(seqsOf((await agreedState(server, 'task:t1')).entities)).toEqual([1, 2])
    expect(seqsOf((await agreedState(server, 'project:P')).entities)).toEqual([3])
    expect(seqsOf((await agreedState(server, 'agent:n')).entities)).toEqual([2])
  })

  test('channel ids that need URL encoding work over HTTP', async () => {
    const server = await start()
    const C = 'agent:my agent/1?x=é#%41'
    await ingestAll(server, [ev('deploy.finished', { v: 1 }, { channels: [C], key: 'k:1' })])
    const { entities } = await agreedState(server, C)
    expect(entities.map((entity) => entity.key)).toEqual(['k:1'])
  })
})

describe('tombstones', () => {
  test('task.deleted, bookmark.deleted and tasks.purged remove entities from the channels they are on', async () => {
    const server = await start()
    const A = 'project:tomb'
    const B = 'project:tomb2'
    const on = (type: string, payload: Record<string, unknown>, extra: Record<string, unknown> = {}) => ev(type, payload, { channels: [A], ...extra })
    await ingestAll(server, [
      on('task.created', { taskId: 't1', title: 'x', projectId: 'p' }, { channels: [A, B] }), // 1
      on('task.created', { taskId: 't2', title: 'x', projectId: 'p' }), // 2
      on('task.created', { taskId: 't3', title: 'x', projectId: 'p' }), // 3
      on('bookmark.saved', { bookmarkId: 'b1' }), // 4
      on('bookmark.saved', { bookmarkId: 'b2' }), // 5
      on('agent.spawned', { agentId: 'a1', agentName: 'n', taskId: 't1' }), // 6
      on('task.deleted', { taskId: 't1' }), // 7: gone from A, still in B
      on('bookmark.deleted', { bookmarkId: 'b1' }), // 8
      on('bookmark.deleted', { bookmarkId: 'never-saved' }), // 9: deleting nothing is harmless
    ])
    expect(seqsOf((await agreedState(server, A)).entities)).toEqual([2, 3, 5, 6])
    expect(seqsOf((await agreedState(server, B)).entities)).toEqual([1])

    // A subscriber from here on follows the rest live and must end where the server does.
    const follower = await open(server)
    const followed = await snapshotOf(follower, A)
    expect(followed.seq).toBe(9)
    const state = stateFromEntities(followed.entities)

    await ingestAll(server, [
      on('tasks.purged', { taskIds: ['t2', 'missing'] }), // 10: t2 goes
      on('task.created', { taskId: 't1', title: 'back', projectId: 'p' }), // 11: t1 again, after its tombstone
      on('custom.thing', {}, { key: 'tasks:x' }), // 12
      on('custom.thing', {}, { key: 'task' }), // 13
      on('custom.thing', {}, { key: 'taskforce:1' }), // 14
      on('custom.thing', {}, { key: 'task:custom' }), // 15: a task: key given explicitly
      on('chief.task.assigned', { taskId: 't4', agentName: 'n' }), // 16
      on('gate.failed', { taskId: 't5', gate: 'g', reason: 'r' }), // 17
    ])
    expect(seqsOf((await agreedState(server, A)).entities)).toEqual([3, 5, 6, 11, 12, 13, 14, 15, 16, 17])

    // Without taskIds: every task: key goes; agents, bookmarks and keys merely starting with "task" stay.
    await ingestAll(server, [on('tasks.purged', {})]) // 18
    const afterPurge = await agreedState(server, A)
    expect(seqsOf(afterPurge.entities)).toEqual([5, 6, 12, 13, 14])
    expect(seqsByKey(stateFromEntities(afterPurge.entities))).toEqual({ 'agent:a1': 6, 'bookmark:b2': 5, task: 13, 'taskforce:1': 14, 'tasks:x': 12 })
    // Other channels keep their tasks.
    expect(seqsOf((await agreedState(server, B)).entities)).toEqual([1])

    // A tombstone type with an explicit key deletes that key only.
    await ingestAll(server, [on('tasks.purged', {}, { key: 'bookmark:b2' })]) // 19
    expect(seqsOf((await agreedState(server, A)).entities)).toEqual([6, 12, 13, 14])

    // The follower got every event after its snapshot live, in order, and folds to the same state.
    const live = await follower.events(A, 10)
    expect(seqsOf(live)).toEqual([10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
    for (const frame of live) applyEvent(state, frame)
    const http = await httpState(server, A)
    expect(seqsByKey(state)).toEqual(seqsByKey(stateFromEntities(http.body.entities)))
    await roundTrip(follower)
    expect(eventFrames(follower)).toEqual([])
  })
})

describe('snapshot over WebSocket', () => {
  test('subscribed, one part with done, then live events after the snapshot seq', async () => {
    const server = await start()
    const C = 'project:live'
    const e = [ev('task.created', { taskId: 't1', title: 'x', projectId: 'p' }, { channels: [C] }), ev('noise.elsewhere', {}, { channels: ['project:other'] })]
    await ingestAll(server, e)
    const socket = await open(server)
    socket.send({ type: 'subscribe', channelId: C, snapshot: true })
    const part = await socket.next((f) => f.type === 'snapshot')
    expect(socket.log[0]).toEqual({ type: 'subscribed', channelId: C, epoch: expect.any(String), mode: 'snapshot' })
    expect(part).toEqual({ type: 'snapshot', channelId: C, seq: 2, entities: [frameOf(e[0], 1, C)], done: true })

    const next = ev('task.updated', { taskId: 't1' }, { channels: [C] })
    await ingestAll(server, [next])
    expect(await socket.events(C, 1)).toEqual([frameOf(next, 3, C)])
    await roundTrip(socket)
    expect(socket.log.map((f) => f.type)).toEqual(['subscribed', 'snapshot', 'caught_up', 'task.updated', 'pong'])
    expect(socket.log[2]).toEqual({ type: 'caught_up', channelId: C, lastSeq: 2 })
  })

  test('an empty or unknown channel: one empty part, done, at the newest seq', async () => {
    const server = await start()
    await ingestAll(server, [ev('noise.elsewhere', {}, { channels: ['project:other'] })])
    const socket = await open(server)
    const snapshot = await snapshotOf(socket, 'project:nothing')
    expect(snapshot.parts).toEqual([{ type: 'snapshot', channelId: 'project:nothing', seq: 1, entities: [], done: true }])
    const http = await httpState(server, 'project:nothing')
    expect(http).toEqual({ status: 200, body: { channelId: 'project:nothing', seq: 1, epoch: snapshot.subscribed.epoch, entities: [] } })
    await ingestAll(server, [ev('x.y', {}, { channels: ['project:nothing'] })])
    expect(seqsOf(await socket.events('project:nothing', 1))).toEqual([2])
  })

  test('stats counts the live entities of each subscribed channel', async () => {
    const server = await start()
    const A = 'project:sa'
    const B = 'project:sb'
    await ingestAll(server, [
      ev('task.created', { taskId: 't1', title: 'x', projectId: 'p' }, { channels: [A] }),
      ev('task.created', { taskId: 't2', title: 'x', projectId: 'p' }, { channels: [A] }),
      ev('task.updated', { taskId: 't2' }, { channels: [A, B] }),
      ev('bookmark.saved', { bookmarkId: 'b1' }, { channels: [A] }),
      ev('deploy.finished', {}, { channels: [A] }), // no part
      ev('agent.spawned', { agentId: 'a1', agentName: 'n', taskId: 't1' }, { channels: ['project:unsubscribed'] }),
    ])
    const socket = await open(server)
    expect((await stats(socket)).entities).toEqual({})
    await snapshotOf(socket, A)
    socket.send({ type: 'subscribe', channelId: B })
    await socket.next((f) => f.type === 'subscribed' && f.channelId === B)
    socket.send({ type: 'subscribe', channelId: 'project:none', since: 0 })
    await socket.next((f) => f.type === 'subscribed' && f.channelId === 'project:none')
    const first = await stats(socket)
    expect(first.subscriptions).toEqual([A, B, 'project:none'])
    expect(first.entities).toEqual({ [A]: 3, [B]: 1, 'project:none': 0 })

    await ingestAll(server, [ev('task.deleted', { taskId: 't1' }, { channels: [A] }), ev('task.created', { taskId: 't9', title: 'x', projectId: 'p' }, { channels: [B] })])
    await socket.events(A, 1)
    await socket.events(B, 1)
    expect((await stats(socket)).entities).toEqual({ [A]: 2, [B]: 2, 'project:none': 0 })
    socket.send({ type: 'unsubscribe', channelId: B })
    await socket.next((f) => f.type === 'unsubscribed')
    expect((await stats(socket)).entities).toEqual({ [A]: 2, 'project:none': 0 })
  })
})

describe('since with snapshot: replay or snapshot', () => {
  test('the server replays when that is no more than the entity count, else sends the snapshot', async () => {
    const server = await start()
    const M = 'project:mode'
    const on = (type: string, payload: Record<string, unknown>) => ev(type, payload, { channels: [M] })
    await ingestAll(server, [
      ...['t1', 't2', 't3', 't4', 't5'].map((taskId) => on('task.created', { taskId, title: 'x', projectId: 'p' })), // 1-5
      ...['t2', 't3', 't4', 't5', 't1'].map((taskId) => on('task.updated', { taskId })), // 6-10
      on('tick.tock', {}), // 11: no part in state, but part of the log
      ev('noise.elsewhere', {}, { channels: ['project:other'] }), // 12
    ])
    const epoch = (await httpState(server, M)).body.epoch

    // 5 entities. After seq 6 the log holds 5 events (7-11): a replay is no larger → replay.
    const replay = await open(server)
    replay.send({ type: 'subscribe', channelId: M, snapshot: true, since: 6, epoch })
    expect(await replay.next()).toEqual({ type: 'subscribed', channelId: M, epoch, mode: 'replay', since: 6 })
    expect(seqsOf(await replay.events(M, 5))).toEqual([7, 8, 9, 10, 11])
    await roundTrip(replay)
    expect(replay.log.filter((f) => f.type === 'snapshot')).toEqual([])

    // After seq 5 there are 6 events, more than the 5 entities → the snapshot.
    const snapshot = await open(server)
    const taken = await snapshotOf(snapshot, M, { since: 5, epoch })
    expect(taken.subscribed).toEqual({ type: 'subscribed', channelId: M, epoch, mode: 'snapshot' })
    expect(taken.parts.length).toBe(1)
    expect(seqsOf(taken.entities)).toEqual([6, 7, 8, 9, 10])
    expect(taken.seq).toBe(12)
    await roundTrip(snapshot)
    expect(eventFrames(snapshot)).toEqual([])

    // since 0: the whole log is larger than the state → snapshot.
    expect(seqsOf((await snapshotOf(await open(server), M, { since: 0 })).entities)).toEqual([6, 7, 8, 9, 10])

    // A cursor at the channel's newest event or at the newest seq: an empty replay.
    for (const since of [11, 12]) {
      const tail = await open(server)
      tail.send({ type: 'subscribe', channelId: M, snapshot: true, since })
      expect(await tail.next()).toEqual({ type: 'subscribed', channelId: M, epoch, mode: 'replay', since })
      await roundTrip(tail)
      expect(tail.log.map((f) => f.type)).toEqual(['subscribed', 'caught_up', 'pong'])
    }

    // A void cursor (beyond the newest seq, or another epoch) → snapshot, not a truncated replay.
    for (const extra of [{ since: 13 }, { since: 6, epoch: 'another-database' }]) {
      const voided = await open(server)
      const result = await snapshotOf(voided, M, extra)
      expect(result.subscribed).toEqual({ type: 'subscribed', channelId: M, epoch, mode: 'snapshot' })
      expect(seqsOf(result.entities)).toEqual([6, 7, 8, 9, 10])
    }

    // snapshot: false is an ordinary subscribe, without `mode`.
    const plain = await open(server)
    plain.send({ type: 'subscribe', channelId: M, snapshot: false, since: 9 })
    expect(await plain.next()).toEqual({ type: 'subscribed', channelId: M, epoch, since: 9 })
    expect(seqsOf(await plain.events(M, 2))).toEqual([10, 11])
    const live = await open(server)
    live.send({ type: 'subscribe', channelId: M, snapshot: false })
    expect(await live.next()).toEqual({ type: 'subscribed', channelId: M, epoch, lastSeq: 12 })

    // Live events follow both modes, once.
    await ingestAll(server, [on('task.updated', { taskId: 't3' })]) // 13
    for (const socket of [replay, snapshot, plain, live]) {
      expect(seqsOf(await socket.events(M, 1))).toEqual([13])
      await roundTrip(socket)
      expect(eventFrames(socket)).toEqual([])
    }
  })

  test('a channel without entities: an empty replay when nothing came after since, else the (empty) snapshot', async () => {
    const server = await start()
    const N = 'project:nonstate'
    await ingestAll(server, [ev('tick.tock', {}, { channels: [N] }), ev('tick.tock', {}, { channels: [N] })])
    const empty = await open(server)
    empty.send({ type: 'subscribe', channelId: N, snapshot: true, since: 2 })
    expect(await empty.next()).toMatchObject({ type: 'subscribed', mode: 'replay', since: 2 })
    const snap = await snapshotOf(await open(server), N, { since: 0 })
    expect(snap.parts).toEqual([{ type: 'snapshot', channelId: N, seq: 2, entities: [], done: true }])
  })

  test('history pruned after since → snapshot even when the replay would be small; from the prune edge → replay', async () => {
    const server = await start({ retentionHours: 1 })
    const P = 'project:pruned'
    const old = Date.now() - 2 * 3_600_000
    await ingestAll(server, [
      ev('task.created', { taskId: 't1', title: 'x', projectId: 'p' }, { channels: [P], timestamp: old }), // 1 superseded: pruned
      ev('task.updated', { taskId: 't1' }, { channels: [P], timestamp: old }), // 2 latest of t1: kept
      ev('task.created', { taskId: 't2', title: 'x', projectId: 'p' }, { channels: [P] }), // 3
      ev('task.created', { taskId: 't3', title: 'x', projectId: 'p' }, { channels: [P] }), // 4
    ])
    expect(await server.server.prune()).toBe(1)

    // 3 events after 0 and 3 entities: the replay would be no larger, but seq 1 is gone → snapshot.
    const socket = await open(server)
    const result = await snapshotOf(socket, P, { since: 0 })
    expect(result.subscribed).toEqual({ type: 'subscribed', channelId: P, epoch: expect.any(String), mode: 'snapshot' })
    expect(seqsOf(result.entities)).toEqual([2, 3, 4])

    const edge = await open(server)
    edge.send({ type: 'subscribe', channelId: P, snapshot: true, since: 1 })
    expect(await edge.next()).toEqual({ type: 'subscribed', channelId: P, epoch: result.subscribed.epoch, mode: 'replay', since: 1 })
    expect(seqsOf(await edge.events(P, 3))).toEqual([2, 3, 4])
  })
})

describe('bad input', () => {
  test('a snapshot value that is not a boolean, a foreign org: channel, an invalid channel id: an error frame, and nothing changes', async () => {
    const server = await start()
    const C = 'project:bad'
    await ingestAll(server, [ev('task.created', { taskId: 't1', title: 'x', projectId: 'p' }, { channels: [C] })])
    const socket = await open(server)

    for (const snapshot of ['yes', 1, 0, null, 'true', {}, []]) {
      socket.send({ type: 'subscribe', channelId: C, snapshot })
      const error = await socket.next((f) => f.type === 'error')
      expect(error).toEqual({ type: 'error', code: 'invalid_message', message: expect.stringMatching(/^snapshot: .*boolean/) })
    }
    socket.send({ type: 'subscribe', channelId: C, snapshot: true, since: -1 })
    expect(await socket.next((f) => f.type === 'error')).toEqual({ type: 'error', code: 'invalid_message', message: expect.stringMatching(/^since: /) })

    socket.send({ type: 'subscribe', channelId: 'org:someone-else', snapshot: true })
    expect(await socket.next((f) => f.type === 'error')).toEqual({
      type: 'error',
      code: 'forbidden',
      message: expect.stringContaining('org:someone-else'),
      channelId: 'org:someone-else',
    })
    socket.send({ type: 'subscribe', channelId: 'org:someone-else', snapshot: true, since: 0 })
    expect((await socket.next((f) => f.type === 'error')).code).toBe('forbidden')

    for (const channelId of ['no-colon', 'Agent:x', 'agent:', ':x', 'agent: x', `agent:${'x'.repeat(300)}`]) {
      socket.send({ type: 'subscribe', channelId, snapshot: true })
      const error = await socket.next((f) => f.type === 'error')
      expect(error).toEqual({ type: 'error', code: 'invalid_channel', message: expect.stringMatching(/^channelId: /) })
    }

    // Nothing changed: no subscription, no subscribed or snapshot frame, no live delivery.
    await roundTrip(socket)
    expect(socket.log.filter((f) => f.type !== 'error' && f.type !== 'pong')).toEqual([])
    const data = await stats(socket)
    expect(data.subscriptions).toEqual([])
    expect(data.entities).toEqual({})
    await ingestAll(server, [ev('task.updated', { taskId: 't1' }, { channels: [C] })])
    // The connection stays usable: a good snapshot subscribe still works, and sees both events' outcome.
    const good = await snapshotOf(socket, C)
    expect(seqsOf(good.entities)).toEqual([2])
    await roundTrip(socket)
    expect(eventFrames(socket)).toEqual([])
  })

  test('HTTP: an invalid channel id → 400, a foreign org: channel → 403, the own org: channel → 200', async () => {
    const server = await start()
    await ingestAll(server, [ev('agent.spawned', { agentId: 'a1', agentName: 'n', taskId: 't1' })])
    for (const channelId of ['no-colon', 'Agent:x', 'agent: x']) {
      const { status, body } = await httpState(server, channelId)
      expect(status).toBe(400)
      expect(body.error.message).toStartWith('channelId: ')
    }
    const foreign = await httpState(server, 'org:someone-else')
    expect(foreign.status).toBe(403)
    expect(foreign.body.error.code).toBe('forbidden')
    expect(foreign.body.error.message).toContain('org:someone-else')
    const own = await httpState(server, 'org:local')
    expect(own.status).toBe(200)
    expect(seqsOf(own.body.entities)).toEqual([1])
  })
})
