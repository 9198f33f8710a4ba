import { afterAll, afterEach, beforeAll, describe, expect, test } from 'bun:test'
import { ingest, makeEvent, startServer, type TestServer } from '../helpers/server'
import { CliProcess, runCli } from './helpers'

/** The client commands as a subprocess against a real service: publish, history, tail, stats. */

let t: TestServer
const running: CliProcess[] = []

beforeAll(async () => {
  t = await startServer()
})
afterAll(async () => {
  await t.close()
})
afterEach(async () => {
  for (const proc of running.splice(0)) await proc.kill()
})

const cli = (args: string[], env: Record<string, string> = {}) => runCli([...args, '--url', t.url], env)
function tail(args: string[]): CliProcess {
  const proc = new CliProcess(['tail', ...args, '--url', t.url])
  running.push(proc)
  return proc
}
let channels = 0
/** A fresh agent channel per test, so tests do not see each other's events. */
const freshAgent = () => `agent-${++channels}-${crypto.randomUUID().slice(0, 8)}`
const status = (agentName: string, status: string) =>
  JSON.stringify({ agentId: 'a1', agentName, status, message: `now ${status}` })

describe('publish and history', () => {
  test('publish fills id, timestamp, org and user and prints {stored, duplicates}; history shows it', async () => {
    const agent = freshAgent()
    const before = Date.now()
    const published = await cli(['publish', 'agent.status', '--payload', status(agent, 'busy')])
    expect(published.err).toBe('')
    expect(published.code).toBe(0)
    const answer = JSON.parse(published.out)
    expect(answer).toEqual({ stored: 1, duplicates: 0, id: expect.any(String) })

    const human = await cli(['history', `agent:${agent}`])
    expect(human.code).toBe(0)
    const lines = human.out.trim().split('\n')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(new RegExp(`^\\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z  #\\d+  agent\\.status  agent:${agent}  \\{"agentId":"a1",`))

    const json = await cli(['history', `agent:${agent}`, '--json'])
    const event = JSON.parse(json.out)
    expect(event).toMatchObject({ id: answer.id, type: 'agent.status', orgId: 'local', userId: 'local', channelId: `agent:${agent}` })
    expect(event.timestamp).toBeGreaterThanOrEqual(before)
    expect(event.payload.status).toBe('busy')
  })

  test('--id makes it idempotent; --org/--user from REALTIME_ORG_ID/REALTIME_USER_ID; --channel, --key, --timestamp', async () => {
    const id = crypto.randomUUID()
    const args = ['publish', 'deploy.finished', '--payload', '{"version":"1.2.3"}', '--id', id, '--channel', 'project:p1', '--channel', 'swarm:s1', '--key', 'deploy:web', '--timestamp', '2030-01-02T03:04:05.000Z', '--user', 'ci']
    const first = await cli(args)
    expect(JSON.parse(first.out)).toEqual({ stored: 1, duplicates: 0, id })
    const again = await cli(args)
    expect(JSON.parse(again.out)).toEqual({ stored: 0, duplicates: 1, id })

    const json = await cli(['history', 'swarm:s1', '--json'])
    expect(JSON.parse(json.out)).toMatchObject({ id, userId: 'ci', orgId: 'local', key: 'deploy:web', channels: ['project:p1', 'swarm:s1'], timestamp: Date.parse('2030-01-02T03:04:05.000Z') })

    // The environment's principal is the default; a server in `none` mode refuses another org (403).
    const other = await cli(['publish', 'test.happened'], { REALTIME_ORG_ID: 'acme' })
    expect(other.code).toBe(1)
    expect(other.err).toContain('switchboard publish: the server refused (403 forbidden)')
  })

  test('an event the server refuses: its message, exit 1, nothing stored', async () => {
    const agent = freshAgent()
    const { code, out, err } = await cli(['publish', 'agent.completed', '--payload', JSON.stringify({ agentId: 'a1', agentName: agent, taskId: 't', result: 1, duration: 'slow' })])
    expect({ code, out }).toEqual({ code: 1, out: '' })
    expect(err.trim()).toBe('switchboard publish: the server refused (400 invalid_body): payload.duration: Invalid input: expected number, received string')
    const bad = await cli(['publish', 'NotDotted'])
    expect(bad.code).toBe(1)
    expect(bad.err).toContain('type must be dotted lowercase')
    expect((await cli(['history', `agent:${agent}`])).out).toBe('')
  })

  test('history: --since and --limit page through, with a note on stderr when more follow', async () => {
    const agent = freshAgent()
    const events = Array.from({ length: 5 }, (_, i) => makeEvent({ channels: [`agent:${agent}`], payload: { i } }))
    expect((await ingest(t.url, { events })).status).toBe(200)
    const all = await cli(['history', `agent:${agent}`, '--json'])
    const seqs = all.out.trim().split('\n').map((line) => JSON.parse(line).seq)
    expect(seqs).toHaveLength(5)

    const page = await cli(['history', `agent:${agent}`, '--json', '--since', String(seqs[1]), '--limit', '2'])
    expect(page.out.trim().split('\n').map((line) => JSON.parse(line).seq)).toEqual([seqs[2], seqs[3]])
    expect(page.err).toContain(`more events follow: switchboard history agent:${agent} --since ${seqs[3]}`)

    const empty = await cli(['history', `agent:${agent}`, '--since', String(seqs[4])])
    expect({ code: empty.code, out: empty.out }).toEqual({ code: 0, out: '' })
    expect(empty.err).toContain(`no events in agent:${agent} after seq ${seqs[4]}`)
  })

  test('history of another organisation\'s channel: the server\'s 403 in plain words, exit 1', async () => {
    const { code, err } = await cli(['history', 'org:someone-else'])
    expect(code).toBe(1)
    expect(err).toContain('the server refused (403 forbidden): channel "org:someone-else" belongs to another organisation')
  })
})

describe('tail', () => {
  test('prints a published event live, one human-readable line; SIGINT → exit 0', async () => {
    const agent = freshAgent()
    const proc = tail([`agent:${agent}`])
    await proc.line('err', `following agent:${agent} at ${t.url} (live`)
    const published = await cli(['publish', 'agent.status', '--payload', status(agent, 'busy')])
    expect(published.code).toBe(0)
    const line = await proc.line('out', 'agent.status')
    expect(line).toMatch(new RegExp(`^\\S+Z  #\\d+  agent\\.status  agent:${agent}  \\{"agentId":"a1","agentName":"${agent}","status":"busy"`))
    expect(await proc.stop('SIGINT')).toBe(0)
    expect(proc.out).toHaveLength(1)
  })

  test('--since replays stored events first, then follows; --json prints frames; SIGTERM → exit 0', async () => {
    const agent = freshAgent()
    const stored = [makeEvent({ channels: [`agent:${agent}`], payload: { n: 1 } }), makeEvent({ channels: [`agent:${agent}`], payload: { n: 2 } })]
    expect((await ingest(t.url, { events: stored })).status).toBe(200)

    const proc = tail([`agent:${agent}`, '--since', '0', '--json'])
    await proc.line('err', 'replaying after seq 0, then live')
    await proc.line('out', stored[1]!.id)
    const live = makeEvent({ channels: [`agent:${agent}`], payload: { n: 3 } })
    expect((await ingest(t.url, live)).status).toBe(200)
    await proc.line('out', live.id)
    const frames = proc.out.map((line) => JSON.parse(line))
    expect(frames.map((frame) => frame.id)).toEqual([stored[0]!.id, stored[1]!.id, live.id])
    expect(frames[2]).toMatchObject({ type: 'test.happened', channelId: `agent:${agent}`, payload: { n: 3 } })
    expect(frames[1].seq).toBeGreaterThan(frames[0].seq)
    expect(await proc.stop('SIGTERM')).toBe(0)

    // From a cursor: only what came after it.
    const resumed = tail([`agent:${agent}`, '--since', String(frames[1].seq), '--json'])
    await resumed.line('out', live.id)
    expect(resumed.out).toHaveLength(1)
  })

  test('a forbidden channel: exit 1 with the server\'s reason', async () => {
    const proc = tail(['org:someone-else'])
    expect(await proc.exited).toBe(1)
    expect(proc.err.join('\n')).toContain('switchboard tail: the server refused (403 forbidden)')
  })
})

describe('stats', () => {
  test('prints the health figures and the stats answer; --json merges them', async () => {
    expect((await ingest(t.url, makeEvent())).status).toBe(200)
    const human = await cli(['stats'])
    expect(human.err).toBe('')
    expect(human.code).toBe(0)
    expect(human.out).toContain(`url            ${t.url}`)
    expect(human.out).toMatch(/^status +ok$/m)
    expect(human.out).toMatch(/^events stored +\d+$/m)
    expect(human.out).toMatch(/^last seq +\d+$/m)
    const { epoch } = (await (await fetch(`${t.url}/api/events/since?limit=1`)).json()) as { epoch: string }
    expect(human.out).toContain(`epoch          ${epoch}`)

    const json = await cli(['stats', '--json'])
    expect(json.code).toBe(0)
    const figures = JSON.parse(json.out)
    expect(figures).toMatchObject({ url: t.url, status: 'ok', eventsStored: t.server.health().eventsStored, connections: expect.any(Number), uptime: expect.any(Number), lastSeq: expect.any(Number), epoch: expect.any(String) })
    // This command's own socket has no subscriptions worth reporting.
    expect(figures.subscriptions).toBeUndefined()
  })
})
