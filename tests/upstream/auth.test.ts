/**
 * Upstream sync against a `jwt`-mode upstream: an API key or a user JWT as
 * REALTIME_UPSTREAM_TOKEN works; a bad one is logged (401, at the maximum interval) without
 * crashing the downstream or ever printing the token.
 */
import { afterAll, expect, test } from 'bun:test'
import { openDatabase } from '../../src/db/client'
import { ApiKeyStore } from '../../src/store/api-key-store'
import { getJson, ingest, makeEvent, waitFor } from '../helpers/server'
import { TestSocket } from '../helpers/ws'
import { bearer, jwt, SECRET } from '../security/support'
import { FAST, Fixture, terminate, waitForEvents, waitForLog, waitForLogs } from './support'

const fixture = new Fixture()
const sockets: TestSocket[] = []

afterAll(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  await fixture.cleanup()
})

test('jwt upstream: API key and JWT tokens sync their organisation; a bad token is a logged 401, retried at the max interval', async () => {
  const upstreamDb = fixture.dbFile()
  const database = openDatabase(upstreamDb)
  const { secret: apiKey } = new ApiKeyStore(database).create('acme', 'downstream')
  database.sqlite.close()

  const upstream = await fixture.service({ REALTIME_DB: upstreamDb, REALTIME_AUTH: 'jwt', REALTIME_JWT_SECRET: SECRET })
  const userToken = await jwt('u1', 'acme')
  const otherOrg = await jwt('u9', 'globex')
  const acmeEvents = Array.from({ length: 3 }, () => makeEvent({ orgId: 'acme', userId: 'u1' }))
  expect((await ingest(upstream.url, { events: acmeEvents }, bearer(userToken))).status).toBe(200)
  // Another organisation's event: never reaches an acme credential's downstream.
  expect((await ingest(upstream.url, makeEvent({ orgId: 'globex', userId: 'u9' }), bearer(otherOrg))).status).toBe(200)

  const badToken = 'sbk_this-key-does-not-exist-0123456789abcdefghij'
  const [byKey, byJwt, byBadKey] = await Promise.all([
    // The desktop case: none mode, local organisation = the upstream credential's.
    fixture.service({ REALTIME_DB: fixture.dbFile(), REALTIME_ORG_ID: 'acme', REALTIME_UPSTREAM_URL: upstream.url, REALTIME_UPSTREAM_TOKEN: apiKey, ...FAST }),
    // Local organisation left at `local`: acme's events are stored, with a warning.
    fixture.service({ REALTIME_DB: fixture.dbFile(), REALTIME_UPSTREAM_URL: upstream.url, REALTIME_UPSTREAM_TOKEN: userToken, ...FAST }),
    fixture.service({ REALTIME_DB: fixture.dbFile(), REALTIME_ORG_ID: 'acme', REALTIME_UPSTREAM_URL: upstream.url, REALTIME_UPSTREAM_TOKEN: badToken, ...FAST }),
  ])

  const viaKey = await waitForEvents(byKey.url, 3)
  expect(viaKey.map((event) => event.id)).toEqual(acmeEvents.map((event) => event.id))
  expect(viaKey.every((event) => event.orgId === 'acme' && event.userId === 'u1')).toBe(true)

  await waitFor(async () => (await getJson(`${byJwt.url}/health`)).body.eventsStored === 3, 5000, 'three events stored via the JWT')
  expect(await waitForLog(byJwt, (line) => line.event === 'upstream_foreign_org', 'upstream_foreign_org')).toMatchObject({
    level: 'warn',
    orgId: 'acme',
    localOrgId: 'local',
  })

  // Live through the API-key downstream to one of its subscribers.
  const socket = await TestSocket.open(`${byKey.url.replace('http', 'ws')}/ws`)
  sockets.push(socket)
  await socket.request({ type: 'subscribe', channelId: 'org:acme' }, 'subscribed')
  const live = makeEvent({ orgId: 'acme', userId: 'u1' })
  expect((await ingest(upstream.url, live, bearer(userToken))).status).toBe(200)
  expect((await socket.next((frame) => frame.id === live.id)).orgId).toBe('acme')

  // The bad key: logged clearly, retried at the 200 ms maximum, the service keeps serving.
  const refused = await waitForLogs(byBadKey, (line) => line.event === 'upstream_failed', 2, 'upstream_failed')
  for (const line of refused) {
    expect(line).toMatchObject({ level: 'error', status: 401, hint: expect.stringContaining('REALTIME_UPSTREAM_TOKEN') })
    expect(line.retryInMs).toBeGreaterThanOrEqual(190)
    expect(line.retryInMs).toBeLessThanOrEqual(200)
  }
  expect((await getJson(`${byBadKey.url}/health`)).body).toMatchObject({ status: 'ok', eventsStored: 0 })

  for (const service of [byKey, byJwt, byBadKey]) expect(await terminate(service)).toBe(0)
  expect(JSON.stringify(byKey.logs)).not.toContain(apiKey)
  expect(JSON.stringify(byJwt.logs)).not.toContain(userToken)
  expect(JSON.stringify(byBadKey.logs)).not.toContain(badToken)
  expect(JSON.stringify(upstream.logs)).not.toContain(badToken)
})
