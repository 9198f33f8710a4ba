import { afterEach, expect, test } from 'bun:test'
import { SignJWT } from 'jose'
import { startServer, type TestServer } from '../helpers/server'
import { TestSocket } from '../helpers/ws'
import { asFrame, eventFrames, httpState, idsOf, ingestAll, type LoggedSocket, openLogged, roundTrip, seqsOf, snapshotOf } from './helpers'

/**
 * Channel state is scoped by organisation: two organisations using the same channel names and the
 * same entity keys each see only their own entities, over WebSocket and HTTP; tombstones of one
 * never touch the other; `org:<other>` state is refused (403 / forbidden).
 */

const SECRET = 'switchboard-state-test-secret-0123456789'

async function token(sub: string, org: string): Promise<string> {
  return new SignJWT({ org })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + 3600)
    .sign(new TextEncoder().encode(SECRET))
}

let t: TestServer | undefined
const sockets: TestSocket[] = []

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  await t?.close()
  t = undefined
})

interface Org {
  org: string
  headers: Record<string, string>
  socket: LoggedSocket
}

async function signIn(server: TestServer, sub: string, org: string): Promise<Org> {
  const jwt = await token(sub, org)
  const socket = await openLogged(server.wsUrl, sockets)
  socket.send({ type: 'auth', token: jwt })
  expect(await socket.next()).toEqual({ type: 'authenticated', userId: sub, orgId: org })
  return { org, headers: { authorization: `Bearer ${jwt}` }, socket }
}

function event(org: string, type: string, payload: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  return { id: crypto.randomUUID(), type, orgId: org, userId: `${org}-user`, timestamp: Date.now(), payload, ...extra }
}

const SHARED = 'project:shared'

test('two organisations with the same channels and keys: each state holds only its own entities', async () => {
  t = await startServer({ auth: { mode: 'jwt', secret: SECRET } })
  const server = t
  const acme = await signIn(server, 'u1', 'acme')
  const globex = await signIn(server, 'u2', 'globex')

  // Interleaved, so the seqs of the two organisations alternate.
  const a = [
    event('acme', 'task.created', { taskId: 't1', title: 'acme t1', projectId: 'p' }, { channels: [SHARED] }),
    event('acme', 'task.created', { taskId: 't2', title: 'acme t2', projectId: 'p' }, { channels: [SHARED] }),
    event('acme', 'deploy.finished', { by: 'acme' }, { channels: [SHARED], key: 'k:1' }),
    event('acme', 'agent.spawned', { agentId: 'a1', agentName: 'bot', taskId: 't1' }), // org:acme, agent:bot, task:t1
  ]
  const g = [
    event('globex', 'task.created', { taskId: 't1', title: 'globex t1', projectId: 'p' }, { channels: [SHARED] }),
    event('globex', 'task.created', { taskId: 't3', title: 'globex t3', projectId: 'p' }, { channels: [SHARED] }),
    event('globex', 'deploy.finished', { by: 'globex' }, { channels: [SHARED], key: 'k:1' }),
    event('globex', 'agent.spawned', { agentId: 'a1', agentName: 'bot', taskId: 't1' }), // org:globex, agent:bot, task:t1
  ]
  for (let i = 0; i < a.length; i++) {
    await ingestAll(server, [a[i]], acme.headers)
    await ingestAll(server, [g[i]], globex.headers)
  }

  for (const [who, mine] of [
    [acme, a],
    [globex, g],
  ] as const) {
    for (const [channel, expected] of [
      [SHARED, mine.slice(0, 3)],
      [`org:${who.org}`, [mine[3]]],
      ['agent:bot', [mine[3]]],
      ['task:t1', [mine[3]]],
    ] as const) {
      const http = await httpState(server, channel, who.headers)
      expect(http.status).toBe(200)
      expect(idsOf(http.body.entities)).toEqual(idsOf(expected as any[]))
      expect(http.body.entities.every((e: any) => e.orgId === who.org)).toBe(true)
      expect(http.body.seq).toBe(8)

      const socket = await openLogged(`${server.wsUrl}?token=${who.headers.authorization!.slice(7)}`, sockets)
      const snapshot = await snapshotOf(socket, channel)
      expect(snapshot.seq).toBe(8)
      expect(snapshot.entities).toEqual(http.body.entities.map(asFrame))
      socket.close()
    }
  }

  // Both follow the shared channel from a snapshot; stats count each organisation's own entities.
  const acmeSnap = await snapshotOf(acme.socket, SHARED)
  const globexSnap = await snapshotOf(globex.socket, SHARED)
  expect(idsOf(acmeSnap.entities)).toEqual(idsOf(a.slice(0, 3)))
  expect(idsOf(globexSnap.entities)).toEqual(idsOf(g.slice(0, 3)))
  const stats = async (who: Org) => (await who.socket.request({ type: 'request', id: 's', action: 'stats' }, 'response')).data.entities
  expect(await stats(acme)).toEqual({ [SHARED]: 3 })
  expect(await stats(globex)).toEqual({ [SHARED]: 3 })

  // globex deletes t1 and purges every task; acme's tasks with the same keys stay.
  await ingestAll(
    server,
    [
      event('globex', 'task.deleted', { taskId: 't1' }, { channels: [SHARED] }), // 9
      event('globex', 'tasks.purged', {}, { channels: [SHARED] }), // 10
      event('globex', 'deploy.finished', { by: 'globex', v: 2 }, { channels: [SHARED], key: 'k:1' }), // 11
    ],
    globex.headers,
  )
  expect(seqsOf(await globex.socket.events(SHARED, 3))).toEqual([9, 10, 11])
  expect(seqsOf((await httpState(server, SHARED, globex.headers)).body.entities)).toEqual([11])
  expect(idsOf((await httpState(server, SHARED, acme.headers)).body.entities)).toEqual(idsOf(a.slice(0, 3)))
  expect(await stats(acme)).toEqual({ [SHARED]: 3 })
  expect(await stats(globex)).toEqual({ [SHARED]: 1 })

  // acme received none of globex's events; its own arrive (so the absence means something).
  await ingestAll(server, [event('acme', 'task.deleted', { taskId: 't2' }, { channels: [SHARED] })], acme.headers) // 12
  const [own] = await acme.socket.events(SHARED, 1)
  expect(own).toMatchObject({ seq: 12, orgId: 'acme' })
  await roundTrip(acme.socket)
  expect(eventFrames(acme.socket)).toEqual([])
  expect(acme.socket.log.filter((f) => f.orgId === 'globex' || JSON.stringify(f).includes('globex'))).toEqual([])
  await roundTrip(globex.socket)
  expect(eventFrames(globex.socket)).toEqual([])
  expect(idsOf((await httpState(server, SHARED, acme.headers)).body.entities)).toEqual([a[0]!.id, a[2]!.id])
})

test("another organisation's org: channel state is refused: 403 over HTTP, forbidden over WebSocket", async () => {
  t = await startServer({ auth: { mode: 'jwt', secret: SECRET } })
  const server = t
  const acme = await signIn(server, 'u1', 'acme')
  const globex = await signIn(server, 'u2', 'globex')
  await ingestAll(server, [event('acme', 'agent.spawned', { agentId: 'a1', agentName: 'bot', taskId: 't1' })], acme.headers)

  const refused = await httpState(server, 'org:acme', globex.headers)
  expect(refused.status).toBe(403)
  expect(refused.body.error.code).toBe('forbidden')
  expect(JSON.stringify(refused.body)).not.toContain('agent.spawned')
  expect((await httpState(server, 'org:acme')).status).toBe(401)
  expect((await httpState(server, 'org:acme', { authorization: 'Bearer not-a-token' })).status).toBe(401)
  expect(seqsOf((await httpState(server, 'org:acme', acme.headers)).body.entities)).toEqual([1])

  for (const extra of [{}, { since: 0 }, { since: 1 }]) {
    globex.socket.send({ type: 'subscribe', channelId: 'org:acme', snapshot: true, ...extra })
    expect(await globex.socket.next()).toEqual({
      type: 'error',
      code: 'forbidden',
      message: expect.stringContaining('org:acme'),
      channelId: 'org:acme',
    })
  }
  // Nothing changed: no subscription, and acme's next event does not reach globex.
  const data = (await globex.socket.request({ type: 'request', id: 's', action: 'stats' }, 'response')).data
  expect(data.subscriptions).toEqual([])
  expect(data.entities).toEqual({})
  await snapshotOf(acme.socket, 'org:acme')
  await ingestAll(server, [event('acme', 'agent.status', { agentId: 'a1', agentName: 'bot', status: 'x', message: 'y' })], acme.headers)
  expect(seqsOf(await acme.socket.events('org:acme', 1))).toEqual([2])
  await roundTrip(globex.socket)
  expect(globex.socket.log.filter((f) => typeof f.seq === 'number' || f.type === 'snapshot' || f.type === 'subscribed')).toEqual([])

  // An unauthenticated socket cannot take a snapshot at all.
  const anonymous = await TestSocket.open(server.wsUrl)
  sockets.push(anonymous)
  anonymous.send({ type: 'subscribe', channelId: 'org:acme', snapshot: true })
  expect((await anonymous.next()).code).toBe('not_authenticated')
})
