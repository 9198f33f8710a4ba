import { afterEach, expect, test } from 'bun:test'
import { SignJWT } from 'jose'
import { ingest, makeEvent, startServer, type TestServer, waitFor } from '../helpers/server'
import { TestSocket } from '../helpers/ws'

let t: TestServer | undefined
const sockets: TestSocket[] = []
afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close()
  await t?.close()
  t = undefined
})

/** The samples of a Prometheus text answer: `name{labels}` → value. */
async function scrape(url: string, headers: Record<string, string> = {}): Promise<Map<string, number>> {
  const response = await fetch(`${url}/metrics`, { headers })
  expect(response.status).toBe(200)
  expect(response.headers.get('content-type')).toStartWith('text/plain')
  const samples = new Map<string, number>()
  for (const line of (await response.text()).split('\n')) {
    if (!line || line.startsWith('#')) continue
    const at = line.lastIndexOf(' ')
    samples.set(line.slice(0, at), Number(line.slice(at + 1)))
  }
  return samples
}

test('counters and gauges follow what the service did', async () => {
  t = await startServer({ rateLimit: { max: 3, windowMs: 60_000 } })
  const socket = await TestSocket.open(t.wsUrl)
  sockets.push(socket)
  await socket.request({ type: 'subscribe', channelId: 'agent:a' }, 'subscribed')
  const other = await TestSocket.open(t.wsUrl)
  sockets.push(other)
  await other.request({ type: 'subscribe', channelId: 'agent:a' }, 'subscribed')
  const repeated = makeEvent({ channels: ['agent:a'] })
  expect((await ingest(t.url, { events: [repeated, makeEvent({ channels: ['agent:a'] }), repeated] })).body).toEqual({ stored: 2, duplicates: 1 })
  expect((await ingest(t.url, { id: 'nope' })).status).toBe(400)
  await socket.events('agent:a', 2)
  await other.events('agent:a', 2)
  socket.send('not json')
  await socket.next((f) => f.type === 'error')

  const samples = await scrape(t.url)
  expect(samples.get('switchboard_events_ingested_total')).toBe(2)
  expect(samples.get('switchboard_events_deduplicated_total')).toBe(1)
  expect(samples.get('switchboard_events_delivered_total')).toBe(4)
  expect(samples.get('switchboard_inbound_messages_total')).toBe(3)
  expect(samples.get('switchboard_rejected_inputs_total{reason="invalid_body"}')).toBe(1)
  expect(samples.get('switchboard_rejected_inputs_total{reason="invalid_json"}')).toBe(1)
  expect(samples.get('switchboard_ingest_duration_seconds_count')).toBe(1)
  expect(samples.get('switchboard_fanout_duration_seconds_count')).toBe(1)
  expect(samples.get('switchboard_connections')).toBe(2)
  expect(samples.get('switchboard_subscriptions')).toBe(2)
  expect(samples.get('switchboard_channels')).toBe(1)
  expect(samples.get('switchboard_events_stored')).toBe(2)
  expect(samples.get('switchboard_database_bytes')).toBeGreaterThan(0)

  // This socket sent two messages; its fourth closes it (limit three), and the close is counted.
  socket.send({ type: 'ping' })
  socket.send({ type: 'ping' })
  expect((await socket.waitClosed()).code).toBe(4429)
  await waitFor(async () => (await scrape(t!.url)).get('switchboard_connection_closes_total{reason="rate_limited"}') === 1, 3000, 'the close counted')
  expect((await scrape(t.url)).get('switchboard_connections')).toBe(1)
})

test('pruned events are counted', async () => {
  t = await startServer({ retentionHours: 1 })
  await ingest(t.url, { events: [makeEvent({ timestamp: Date.now() - 7_200_000 }), makeEvent()] })
  expect(await t.server.prune()).toBe(1)
  expect((await scrape(t.url)).get('switchboard_events_pruned_total')).toBe(1)
})

test('in jwt mode a scrape needs a credential', async () => {
  const secret = 's'.repeat(32)
  t = await startServer({ auth: { mode: 'jwt', secret } })
  expect((await fetch(`${t.url}/metrics`)).status).toBe(401)
  const token = await new SignJWT({ org: 'acme' })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject('scraper')
    .setExpirationTime('1h')
    .sign(new TextEncoder().encode(secret))
  expect((await scrape(t.url, { authorization: `Bearer ${token}` })).get('switchboard_connections')).toBe(0)
})
