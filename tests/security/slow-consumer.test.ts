import { afterEach, expect, test } from 'bun:test'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Subprocess } from 'bun'
import { spawnService, type ServiceProcess } from '../helpers/process'
import { getJson, tempDir, waitFor } from '../helpers/server'
import { exitWithin, killChild, LineReader } from './support'

/**
 * A reader that stops reading (a real process frozen with SIGSTOP) is closed once
 * REALTIME_SLOW_CONSUMER_BYTES are queued for it, without slowing or corrupting a healthy
 * subscriber of the same channel and without the server buffering the flood in memory; once it
 * runs again it resumes from its last seq with no gap.
 *
 * The service runs as a child process so its memory can be read from /proc/<pid>/status.
 */

const SLOW_CONSUMER_BYTES = 262_144
const PAD = 'x'.repeat(4000)
/** Phase 1 (until the stalled socket is closed): small batches, paced, so the server's 250 ms
 * sweep (4008) sees the queue before Bun's backstop at 4 × the limit (1006) would. */
const SLOW_BATCH = 25
const SLOW_PACE_MS = 40
const SLOW_MAX_BATCHES = 400
/** Phase 2: the rest of the flood as fast as the service takes it. */
const FAST_BATCH = 100
const FLOOD_BYTES = 30 * 1024 * 1024
/** Ingested before the memory baseline is taken (about 4 MB). */
const WARMUP_BATCHES = 10
/** Growth of the service's peak RSS over the baseline allowed during the 30 MB flood. */
const RSS_GROWTH_LIMIT_KB = 32 * 1024

/**
 * The stalled client, run with `bun -e`: subscribes to org:local, prints `ready`, and (after it is
 * frozen and thawed) reports its close and what it had received; then waits for `resume <target>`
 * on stdin, reconnects, subscribes with since = its last seq, and reports once it reaches target.
 */
const STALLED_CLIENT = `
const url = process.env.WS_URL
const say = (value) => console.log(JSON.stringify(value))
let epoch = null
function track(frame, state) {
  if (typeof frame.seq !== 'number') return
  if (state.firstSeq === null) state.firstSeq = frame.seq
  else if (frame.seq !== state.lastSeq + 1) state.contiguous = false
  state.lastSeq = frame.seq
  state.count++
}
const first = { firstSeq: null, lastSeq: 0, count: 0, contiguous: true }
const ws = new WebSocket(url)
ws.onopen = () => ws.send(JSON.stringify({ type: 'subscribe', channelId: 'org:local' }))
ws.onmessage = (e) => {
  const frame = JSON.parse(String(e.data))
  if (frame.type === 'subscribed') { epoch = frame.epoch; say({ kind: 'ready', lastSeq: frame.lastSeq }); first.lastSeq = frame.lastSeq; return }
  track(frame, first)
}
ws.onclose = async (e) => {
  say({ kind: 'closed', code: e.code, reason: e.reason, ...first })
  for await (const line of console) {
    const [word, target] = line.trim().split(' ')
    if (word !== 'resume') continue
    const second = { firstSeq: null, lastSeq: first.lastSeq, count: 0, contiguous: true }
    const again = new WebSocket(url)
    again.onopen = () => again.send(JSON.stringify({ type: 'subscribe', channelId: 'org:local', since: first.lastSeq, epoch }))
    again.onmessage = (e) => {
      const frame = JSON.parse(String(e.data))
      if (frame.type === 'subscribed') { say({ kind: 'resubscribed', frame }); return }
      if (typeof frame.seq !== 'number') { say({ kind: 'other', frame }); return }
      track(frame, second)
      if (second.lastSeq >= Number(target)) {
        say({ kind: 'resumed', ...second })
        again.close()
        process.exit(0)
      }
    }
    again.onclose = (e) => { say({ kind: 'resume_closed', code: e.code, ...second }); process.exit(1) }
    break
  }
}
`

const children: Subprocess[] = []
const cleanups: Array<() => void | Promise<void>> = []

afterEach(async () => {
  for (const child of children.splice(0)) await killChild(child)
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

function statusKb(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (!match) throw new Error(`no ${field} in /proc/${pid}/status`)
  return Number(match[1])
}

async function health(service: ServiceProcess) {
  const { status, body } = await getJson(`${service.url}/health`)
  expect(status).toBe(200)
  return body as { connections: number; eventsStored: number }
}

function floodEvents(count: number) {
  return Array.from({ length: count }, (_, i) => ({
    id: crypto.randomUUID(),
    type: 'test.flood',
    orgId: 'local',
    userId: 'local',
    timestamp: Date.now(),
    payload: { i, pad: PAD },
  }))
}

async function post(service: ServiceProcess, events: unknown[]): Promise<void> {
  const response = await fetch(`${service.url}/ingest`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ events }),
  })
  expect(response.status).toBe(200)
  expect(await response.json()).toEqual({ stored: events.length, duplicates: 0 })
}

test('a stalled reader is closed (4008), the healthy one gets every event once and in order, memory stays bounded, and the stalled one resumes without a gap', async () => {
  const tmp = tempDir()
  cleanups.push(tmp.cleanup)
  const service = await spawnService({
    REALTIME_DB: join(tmp.dir, 'realtime.db'),
    REALTIME_SLOW_CONSUMER_BYTES: String(SLOW_CONSUMER_BYTES),
    // SQLite's page cache fills as the flood is written (up to REALTIME_DB_CACHE_MB): a fixed cost,
    // not what this test bounds. Kept at SQLite's own default so only buffering shows.
    REALTIME_DB_CACHE_MB: '2',
    REALTIME_HTTP_RATE_LIMIT: 'off',
  })
  children.push(service.proc)
  const wsUrl = `${service.url.replace('http', 'ws')}/ws`

  // The healthy subscriber, in this process: records every event's id and seq.
  const healthy = { ids: [] as string[], seqs: [] as number[], closed: null as number | null }
  const healthyWs = new WebSocket(wsUrl)
  cleanups.push(() => healthyWs.close())
  const healthySubscribed = new Promise<void>((resolve) => {
    healthyWs.onmessage = (e) => {
      const frame = JSON.parse(String(e.data))
      if (frame.type === 'subscribed') resolve()
      else if (typeof frame.seq === 'number') {
        healthy.ids.push(frame.id)
        healthy.seqs.push(frame.seq)
      }
    }
  })
  healthyWs.onopen = () => healthyWs.send(JSON.stringify({ type: 'subscribe', channelId: 'org:local' }))
  healthyWs.onclose = (e) => {
    healthy.closed = e.code
  }
  await healthySubscribed

  // Warm-up before the memory baseline: the first megabytes of any ingest grow the heap, the
  // allocator's arenas and SQLite's cache whether or not anybody is slow; measured from after
  // them, the growth is what the flood itself costs (about 15 MB here; about 58 MB when the
  // stalled socket is allowed to buffer the flood instead of being closed).
  const warm: string[] = []
  for (let i = 0; i < WARMUP_BATCHES; i++) {
    const events = floodEvents(FAST_BATCH)
    await post(service, events)
    warm.push(...events.map((event) => event.id))
  }
  await waitFor(() => healthy.ids.length === warm.length, 10_000, 'the healthy subscriber to receive the warm-up')
  expect(healthy.ids).toEqual(warm)
  healthy.ids.length = 0
  healthy.seqs.length = 0

  // The stalled client, in its own process, frozen once subscribed.
  const stalled = Bun.spawn(['bun', '-e', STALLED_CLIENT], {
    env: { ...process.env, WS_URL: wsUrl },
    stdin: 'pipe',
    stdout: 'pipe',
    stderr: 'inherit',
  })
  children.push(stalled)
  const stalledOut = new LineReader(stalled.stdout)
  expect((await stalledOut.nextJson((v) => v.kind === 'ready')).lastSeq).toBe(warm.length)
  process.kill(stalled.pid, 'SIGSTOP')
  expect((await health(service)).connections).toBe(2)

  const baselineKb = statusKb(service.proc.pid, 'VmRSS')
  const sent: string[] = []
  let sentBytes = 0
  let peakRssKb = baselineKb
  const sendBatch = async (size: number) => {
    const events = floodEvents(size)
    await post(service, events)
    for (const event of events) sent.push(event.id)
    sentBytes += size * (PAD.length + 150)
    peakRssKb = Math.max(peakRssKb, statusKb(service.proc.pid, 'VmRSS'))
  }

  // Phase 1: paced until the stalled socket is closed.
  let slowBatches = 0
  for (;;) {
    await sendBatch(SLOW_BATCH)
    slowBatches++
    if ((await health(service)).connections === 1) break
    if (slowBatches >= SLOW_MAX_BATCHES) throw new Error(`stalled socket still open after ${sentBytes} bytes`)
    await Bun.sleep(SLOW_PACE_MS)
  }
  const bytesAtClose = sentBytes

  // Thaw it at once: it reads what the kernel and the server still held for it, then the close.
  process.kill(stalled.pid, 'SIGCONT')
  const closed = await stalledOut.nextJson((v) => v.kind === 'closed', 10_000)
  console.log('stalled client closed with', closed.code, JSON.stringify(closed.reason), `after ${closed.count} events; flood at close: ${bytesAtClose} bytes in ${slowBatches} batches`)

  // Phase 2: the rest of the flood, unpaced; the healthy subscriber keeps up.
  while (sentBytes < FLOOD_BYTES) await sendBatch(FAST_BATCH)
  await waitFor(() => healthy.ids.length >= sent.length || healthy.closed !== null, 20_000, 'the healthy subscriber to receive the flood')
  const hwmKb = statusKb(service.proc.pid, 'VmHWM')
  peakRssKb = Math.max(peakRssKb, statusKb(service.proc.pid, 'VmRSS'))
  console.log(`RSS baseline ${baselineKb} kB, peak sampled ${peakRssKb} kB (+${peakRssKb - baselineKb}), VmHWM ${hwmKb} kB (+${hwmKb - baselineKb}); flood ${sentBytes} bytes, ${sent.length} events`)

  // The stalled socket was closed with the documented code, its stream had no gap.
  expect(closed.code).toBe(4008)
  expect(closed.reason).toBe('slow consumer: resume from your last seq')
  expect(closed.contiguous).toBe(true)
  if (closed.count > 0) expect(closed.firstSeq).toBe(warm.length + 1)
  expect(closed.count).toBe(closed.lastSeq - warm.length)
  expect(closed.count).toBeLessThan(sent.length)

  // The healthy subscriber: every event exactly once, in order, still connected.
  expect(healthy.closed).toBeNull()
  expect(healthy.ids).toEqual(sent)
  expect(healthy.seqs).toEqual(Array.from({ length: sent.length }, (_, i) => warm.length + i + 1))
  const after = await health(service)
  expect(after.connections).toBe(1)
  expect(after.eventsStored).toBe(warm.length + sent.length)

  // Memory: bounded, though the flood is far larger than the slow-consumer limit.
  expect(sentBytes).toBeGreaterThan(100 * SLOW_CONSUMER_BYTES)
  expect(hwmKb - baselineKb).toBeLessThan(RSS_GROWTH_LIMIT_KB)

  // The stalled client resumes from its last seq: the rest, no gap, no duplicate.
  stalled.stdin.write(`resume ${warm.length + sent.length}\n`)
  stalled.stdin.flush()
  const resubscribed = await stalledOut.nextJson((v) => v.kind === 'resubscribed', 5000)
  expect(resubscribed.frame).toEqual({ type: 'subscribed', channelId: 'org:local', epoch: expect.any(String), since: closed.lastSeq })
  const resumed = await stalledOut.nextJson((v) => v.kind === 'resumed' || v.kind === 'resume_closed', 15_000)
  expect(resumed).toEqual({ kind: 'resumed', firstSeq: closed.lastSeq + 1, lastSeq: warm.length + sent.length, count: warm.length + sent.length - closed.lastSeq, contiguous: true })
  expect(await exitWithin(stalled, 5000)).toBe(0)
}, 60_000)
