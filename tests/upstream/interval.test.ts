/**
 * UpstreamSync in isolation: a fake clock, a scripted upstream (fake fetch), an in-memory cursor
 * store and a recording ingestor. Covers the interval/backoff rules, paging, the cursor contract
 * (persisted only after the ingest resolved), epoch changes, failures and stop.
 */
import { describe, expect, test } from 'bun:test'
import type { Principal } from '../../src/auth'
import type { Clock } from '../../src/client/clock'
import { ApiError } from '../../src/errors'
import { createLogger } from '../../src/log'
import type { EventInput } from '../../src/model/events'
import type { IngestResult } from '../../src/model/http'
import { type UpstreamCursor, UpstreamSync, upstreamDelay } from '../../src/upstream'

const REQUEST_TIMEOUT = 99_999
const SETTINGS = { url: 'http://upstream.test/base', token: 'sbk_secret-token-value', minIntervalMs: 1000, maxIntervalMs: 8000 }

class FakeClock implements Clock {
  time = 0
  random = () => 0.5 // no jitter
  private seq = 0
  readonly timers = new Map<number, { at: number; ms: number; fn: () => void }>()
  now = () => this.time
  setTimeout = (fn: () => void, ms: number) => {
    const id = ++this.seq
    this.timers.set(id, { at: this.time + ms, ms, fn })
    return id
  }
  clearTimeout = (handle: unknown) => {
    this.timers.delete(handle as number)
  }
  /** The pending poll timer (request timeouts excluded). */
  pollTimer() {
    return [...this.timers.entries()].find(([, timer]) => timer.ms !== REQUEST_TIMEOUT)
  }
}

interface Call {
  url: URL
  headers: Record<string, string>
}

type Answer = Response | Error | Promise<Response>

function page(events: Array<Record<string, unknown>>, options: { epoch?: string; hasMore?: boolean; nextSeq?: number; truncated?: boolean } = {}) {
  const body = {
    events,
    nextSeq: options.nextSeq ?? (events.at(-1)?.seq as number | undefined) ?? 0,
    hasMore: options.hasMore ?? false,
    lastSeq: 0,
    epoch: options.epoch ?? 'epoch-a',
    ...(options.truncated ? { truncated: true } : {}),
  }
  return Response.json(body)
}

let n = 0
function wire(seq: number, overrides: Record<string, unknown> = {}) {
  n++
  return {
    type: 'test.happened',
    id: crypto.randomUUID(),
    seq,
    channelId: 'org:acme',
    orgId: 'acme',
    userId: 'u1',
    timestamp: 1_700_000_000_000 + n,
    payload: { n },
    channels: ['org:acme'],
    ...overrides,
  }
}

function setup(options: { cursor?: UpstreamCursor; token?: string | null; localOrgId?: string } = {}) {
  const clock = new FakeClock()
  const calls: Call[] = []
  const answers: Answer[] = []
  const lines: any[] = []
  const saved: UpstreamCursor[] = []
  let stored: UpstreamCursor | null = options.cursor ?? null
  const ingested: Array<{ principal: Principal; inputs: readonly EventInput[] }> = []
  let ingestGate: Promise<void> | undefined
  let ingestError: unknown
  const sync = new UpstreamSync({
    settings: { ...SETTINGS, token: options.token === undefined ? SETTINGS.token : options.token },
    clock,
    requestTimeoutMs: REQUEST_TIMEOUT,
    log: createLogger('debug', (line) => lines.push(JSON.parse(line))),
    localOrgId: options.localOrgId,
    cursors: {
      load: () => stored,
      save: (cursor) => {
        stored = cursor
        saved.push(cursor)
      },
    },
    events: {
      async ingest(principal, inputs): Promise<IngestResult> {
        if (ingestError) throw ingestError
        ingested.push({ principal, inputs })
        await ingestGate
        return { stored: inputs.length, duplicates: 0 }
      },
    },
    fetch: (url, init) =>
      new Promise<Response>((resolve, reject) => {
        calls.push({ url: new URL(url), headers: init.headers })
        init.signal.addEventListener('abort', () => reject(new DOMException('The operation was aborted.', 'AbortError')))
        const answer = answers.shift() ?? page([])
        if (answer instanceof Error) reject(answer)
        else Promise.resolve(answer).then(resolve, reject)
      }),
  })

  /** Fires the pending poll timer and resolves once the poll has scheduled the next one: its delay. */
  async function tick(): Promise<number> {
    const entry = clock.pollTimer()
    if (!entry) throw new Error('no poll scheduled')
    const [id, timer] = entry
    clock.timers.delete(id)
    clock.time = timer.at
    timer.fn()
    for (let i = 0; i < 200; i++) {
      await Bun.sleep(0)
      const next = clock.pollTimer()
      if (next) return next[1].ms
    }
    throw new Error('the poll did not schedule the next one')
  }

  return {
    sync,
    clock,
    calls,
    answers,
    lines,
    saved,
    ingested,
    tick,
    get stored() {
      return stored
    },
    gate(promise: Promise<void> | undefined) {
      ingestGate = promise
    },
    failIngest(error: unknown) {
      ingestError = error
    },
  }
}

describe('upstreamDelay', () => {
  const settings = { minIntervalMs: 5000, maxIntervalMs: 30_000 }

  test('min after events, doubling while idle or failing, capped at max', () => {
    const delays = [0, 1, 2, 3, 4, 50, Number.MAX_SAFE_INTEGER].map((idle) => upstreamDelay(idle, settings, () => 0.5))
    expect(delays).toEqual([5000, 10_000, 20_000, 30_000, 30_000, 30_000, 30_000])
  })

  test('jitter is ±20 % of min and never goes above max', () => {
    expect(upstreamDelay(0, settings, () => 0)).toBe(4000)
    expect(upstreamDelay(0, settings, () => 0.999_999)).toBe(6000)
    expect(upstreamDelay(1, settings, () => 0)).toBe(9000)
    expect(upstreamDelay(10, settings, () => 0.999_999)).toBe(30_000)
    expect(upstreamDelay(10, settings, () => 0)).toBe(29_000)
    for (let i = 0; i < 200; i++) {
      const delay = upstreamDelay(i % 6, settings, Math.random)
      expect(delay).toBeGreaterThanOrEqual(4000)
      expect(delay).toBeLessThanOrEqual(30_000)
    }
  })
})

describe('UpstreamSync', () => {
  test('polls at once, then min after events, doubling to max while idle, back to min when events arrive', async () => {
    const t = setup()
    t.sync.start()
    expect(t.clock.pollTimer()![1].ms).toBe(0)
    t.answers.push(page([wire(1), wire(2)]))
    expect(await t.tick()).toBe(1000)
    expect(await t.tick()).toBe(2000) // idle
    expect(await t.tick()).toBe(4000)
    expect(await t.tick()).toBe(8000)
    expect(await t.tick()).toBe(8000)
    t.answers.push(page([wire(3)]))
    expect(await t.tick()).toBe(1000)
    expect(await t.tick()).toBe(2000)
    await t.sync.stop()
    expect(t.clock.timers.size).toBe(0)
  })

  test('asks for the whole organisation from its cursor, with the token, and ingests events as the upstream sent them', async () => {
    const t = setup()
    t.sync.start()
    const event = wire(7, { key: 'thing:1', channels: ['org:acme', 'agent:x'] })
    t.answers.push(page([event]))
    await t.tick()
    const first = t.calls[0]!
    expect(first.url.origin + first.url.pathname).toBe('http://upstream.test/base/api/events/since')
    expect(Object.fromEntries(first.url.searchParams)).toEqual({ since: '0', limit: '1000' })
    expect(first.headers.authorization).toBe(`Bearer ${SETTINGS.token}`)

    expect(t.ingested).toHaveLength(1)
    expect(t.ingested[0]!.principal.orgId).toBe('acme')
    const { seq, channelId, ...kept } = event
    expect(t.ingested[0]!.inputs).toEqual([kept])
    expect(t.stored).toEqual({ epoch: 'epoch-a', seq: 7 })

    await t.tick()
    expect(Object.fromEntries(t.calls[1]!.url.searchParams)).toEqual({ since: '7', limit: '1000', epoch: 'epoch-a' })
    await t.sync.stop()
  })

  test('no Authorization header without a token', async () => {
    const t = setup({ token: null })
    t.sync.start()
    await t.tick()
    expect(t.calls[0]!.headers.authorization).toBeUndefined()
    await t.sync.stop()
  })

  test('pages while hasMore within one poll, persisting the cursor after each page', async () => {
    const t = setup()
    t.sync.start()
    t.answers.push(page([wire(1), wire(2)], { hasMore: true }), page([wire(3)], { hasMore: true }), page([wire(4)]))
    expect(await t.tick()).toBe(1000)
    expect(t.calls.map((call) => call.url.searchParams.get('since'))).toEqual(['0', '2', '3'])
    expect(t.saved.map((cursor) => cursor.seq)).toEqual([2, 3, 4])
    expect(t.lines.filter((line) => line.event === 'upstream_synced').map((line) => line.events)).toEqual([2, 1, 1])
    await t.sync.stop()
  })

  test('resumes from the persisted cursor', async () => {
    const t = setup({ cursor: { epoch: 'epoch-a', seq: 41 } })
    t.sync.start()
    expect(t.lines.find((line) => line.event === 'upstream_started')).toMatchObject({ since: 41, epoch: 'epoch-a' })
    await t.tick()
    expect(Object.fromEntries(t.calls[0]!.url.searchParams)).toEqual({ since: '41', limit: '1000', epoch: 'epoch-a' })
    await t.sync.stop()
  })

  test('the cursor is persisted only once the ingest resolved; a failed ingest is fetched again', async () => {
    const t = setup()
    t.sync.start()
    let release!: () => void
    t.gate(new Promise<void>((resolve) => (release = resolve)))
    t.answers.push(page([wire(1), wire(2)]))
    const firing = t.tick()
    for (let i = 0; i < 50 && t.ingested.length === 0; i++) await Bun.sleep(0)
    expect(t.ingested).toHaveLength(1)
    expect(t.saved).toEqual([]) // ingest not resolved yet
    release()
    expect(await firing).toBe(1000)
    expect(t.saved).toEqual([{ epoch: 'epoch-a', seq: 2 }])

    t.gate(undefined)
    t.failIngest(new ApiError(503, 'store_unavailable', 'the event store could not commit; retry'))
    t.answers.push(page([wire(3)]))
    expect(await t.tick()).toBe(2000)
    expect(t.saved).toHaveLength(1)
    expect(t.lines.at(-1)).toMatchObject({ level: 'warn', event: 'upstream_failed', message: 'the event store could not commit; retry' })

    t.failIngest(undefined)
    t.answers.push(page([wire(3)]))
    expect(await t.tick()).toBe(1000)
    expect(t.calls.at(-1)!.url.searchParams.get('since')).toBe('2')
    expect(t.saved.at(-1)).toEqual({ epoch: 'epoch-a', seq: 3 })
    await t.sync.stop()
  })

  test('failures (5xx, network, invalid JSON, bad shape) are logged and backed off; recovery resets', async () => {
    const t = setup()
    t.sync.start()
    t.answers.push(
      Response.json({ error: { code: 'store_unavailable', message: 'retry' } }, { status: 503 }),
      new TypeError('Unable to connect'),
      new Response('<html>gateway</html>', { status: 200 }),
      Response.json({ events: 'nope' }),
    )
    expect(await t.tick()).toBe(2000)
    expect(await t.tick()).toBe(4000)
    expect(await t.tick()).toBe(8000)
    expect(await t.tick()).toBe(8000)
    const failed = t.lines.filter((line) => line.event === 'upstream_failed')
    expect(failed.map((line) => [line.status, line.message, line.failures, line.retryInMs])).toEqual([
      [503, 'HTTP 503 store_unavailable: retry', 1, 2000],
      [undefined, 'Unable to connect', 2, 4000],
      [200, 'the answer is not valid JSON', 3, 8000],
      [200, expect.stringContaining('unexpected answer: events'), 4, 8000],
    ])
    t.answers.push(page([wire(1)]))
    expect(await t.tick()).toBe(1000)
    expect(t.lines.find((line) => line.event === 'upstream_recovered')).toMatchObject({ failures: 4 })
    expect(JSON.stringify(t.lines)).not.toContain(SETTINGS.token)
    await t.sync.stop()
  })

  test('401/403 are logged as errors and retried at the maximum interval; the token never appears', async () => {
    const t = setup()
    t.sync.start()
    t.answers.push(
      Response.json({ error: { code: 'unauthorized', message: `bad token ${SETTINGS.token}` } }, { status: 401 }),
      Response.json({ error: { code: 'forbidden', message: 'no' } }, { status: 403 }),
    )
    expect(await t.tick()).toBe(8000)
    expect(await t.tick()).toBe(8000)
    const failed = t.lines.filter((line) => line.event === 'upstream_failed')
    expect(failed).toHaveLength(2)
    expect(failed[0]).toMatchObject({ level: 'error', status: 401, hint: expect.stringContaining('REALTIME_UPSTREAM_TOKEN') })
    expect(failed[1]).toMatchObject({ level: 'error', status: 403 })
    expect(JSON.stringify(t.lines)).not.toContain(SETTINGS.token)
    t.answers.push(page([wire(1)]))
    expect(await t.tick()).toBe(1000)
    await t.sync.stop()
  })

  test('429 honours Retry-After', async () => {
    const t = setup()
    t.sync.start()
    t.answers.push(Response.json({ error: { code: 'rate_limited', message: 'slow down' } }, { status: 429, headers: { 'retry-after': '7' } }))
    expect(await t.tick()).toBe(7000)
    await t.sync.stop()
  })

  test('a different epoch restarts from the new database beginning, with a warning', async () => {
    const t = setup({ cursor: { epoch: 'epoch-a', seq: 50 } })
    t.sync.start()
    t.answers.push(page([wire(1), wire(2)], { epoch: 'epoch-b', truncated: true }))
    await t.tick()
    expect(t.calls[0]!.url.searchParams.get('epoch')).toBe('epoch-a')
    expect(t.lines.find((line) => line.event === 'upstream_epoch_changed')).toMatchObject({ level: 'warn', from: 'epoch-a', to: 'epoch-b', since: 50 })
    expect(t.stored).toEqual({ epoch: 'epoch-b', seq: 2 })
    await t.tick()
    expect(Object.fromEntries(t.calls[1]!.url.searchParams)).toEqual({ since: '2', limit: '1000', epoch: 'epoch-b' })

    // A new, empty upstream database: the cursor moves to it at seq 0.
    t.answers.push(page([], { epoch: 'epoch-c', truncated: true, nextSeq: 0 }))
    await t.tick()
    expect(t.stored).toEqual({ epoch: 'epoch-c', seq: 0 })
    await t.sync.stop()
  })

  test('truncated (pruned past the cursor) is warned about and the page taken as it is', async () => {
    const t = setup({ cursor: { epoch: 'epoch-a', seq: 5 } })
    t.sync.start()
    t.answers.push(page([wire(9)], { truncated: true }))
    await t.tick()
    expect(t.lines.find((line) => line.event === 'upstream_truncated')).toMatchObject({ level: 'warn', since: 5 })
    expect(t.stored).toEqual({ epoch: 'epoch-a', seq: 9 })
    await t.sync.stop()
  })

  test('an event this service refuses is skipped and logged; the rest is ingested in order, by organisation', async () => {
    const t = setup({ localOrgId: 'local' })
    t.sync.start()
    const bad = wire(2, { type: 'agent.completed', payload: { agentId: 'a' } }) // catalogue type, payload incomplete
    t.answers.push(page([wire(1), bad, wire(3, { orgId: 'other', channels: ['org:other'] }), wire(4)]))
    await t.tick()
    expect(t.ingested.map((call) => [call.principal.orgId, call.inputs.length])).toEqual([
      ['acme', 1],
      ['other', 1],
      ['acme', 1],
    ])
    expect(t.lines.find((line) => line.event === 'upstream_event_skipped')).toMatchObject({ id: bad.id, seq: 2 })
    expect(t.lines.find((line) => line.event === 'upstream_synced')).toMatchObject({ events: 4, stored: 3, duplicates: 0, skipped: 1 })
    expect(t.lines.filter((line) => line.event === 'upstream_foreign_org').map((line) => line.orgId)).toEqual(['acme', 'other'])
    expect(t.stored!.seq).toBe(4)
    await t.sync.stop()
  })

  test('stop aborts a request in flight, clears every timer and logs no failure', async () => {
    const t = setup()
    t.sync.start()
    t.answers.push(new Promise<Response>(() => {})) // an upstream that never answers
    const [id, timer] = t.clock.pollTimer()!
    t.clock.timers.delete(id)
    timer.fn()
    for (let i = 0; i < 50 && t.calls.length === 0; i++) await Bun.sleep(0)
    expect(t.calls).toHaveLength(1)
    expect(t.clock.timers.size).toBe(1) // the request timeout
    await t.sync.stop()
    expect(t.clock.timers.size).toBe(0)
    expect(t.lines.some((line) => line.event === 'upstream_failed')).toBe(false)
    expect(t.lines.at(-1)).toMatchObject({ event: 'upstream_stopped' })
  })

  test('stop waits for an ingest under way and keeps its cursor', async () => {
    const t = setup()
    t.sync.start()
    let release!: () => void
    t.gate(new Promise<void>((resolve) => (release = resolve)))
    t.answers.push(page([wire(1)], { hasMore: true }), page([wire(2)]))
    const [id, timer] = t.clock.pollTimer()!
    t.clock.timers.delete(id)
    timer.fn()
    for (let i = 0; i < 50 && t.ingested.length === 0; i++) await Bun.sleep(0)
    let stopped = false
    const stopping = t.sync.stop().then(() => (stopped = true))
    await Bun.sleep(0)
    expect(stopped).toBe(false)
    release()
    await stopping
    expect(t.saved).toEqual([{ epoch: 'epoch-a', seq: 1 }])
    expect(t.calls).toHaveLength(1) // no further page after stop
    expect(t.clock.timers.size).toBe(0)
  })
})
