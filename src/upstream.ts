import { eq } from 'drizzle-orm'
import { z } from 'zod'
import type { Principal } from './auth'
import { backoffDelay } from './client/backoff'
import { type Clock, systemClock } from './client/clock'
import type { Config } from './config'
import type { OpenedDatabase } from './db/client'
import { meta } from './db/schema'
import { ApiError, describeIssue } from './errors'
import type { Logger } from './log'
import { type EventInput, eventInput } from './model/events'
import type { IngestResult } from './model/http'

/**
 * Upstream sync: the polling half of "push + poll" (seed 000's EventSyncBridge). When
 * REALTIME_UPSTREAM_URL is set, this service polls another Switchboard's `GET /api/events/since`
 * (no channel: the whole organisation of the upstream credential), ingests every page through the
 * normal validate → store → fan-out path, and keeps its cursor `{epoch, seq}` in the `meta` table,
 * written only after the page's ingest resolved: a crash re-fetches at most one page, and dedup by
 * id makes that (and events also pushed to `POST /ingest`) harmless.
 *
 * The upstream is trusted configuration, like an embedding program's `publish`: each event is
 * ingested as a principal of its own organisation, so the upstream decides which organisation's
 * events arrive (the one its credential belongs to), and they keep their id, type, orgId, userId,
 * timestamp, payload, channels and key. The local `seq` is this database's own.
 */

export type UpstreamSettings = NonNullable<Config['upstream']>

/** Where the next poll starts: `seq` in the upstream database `epoch` (null before the first answer). */
export interface UpstreamCursor {
  epoch: string | null
  seq: number
}

export interface CursorStore {
  load(): UpstreamCursor | null
  save(cursor: UpstreamCursor): void
}

/** What the sync needs of EventService. */
export interface Ingestor {
  ingest(principal: Principal, inputs: readonly EventInput[]): Promise<IngestResult>
}

export type FetchLike = (url: string, init: { headers: Record<string, string>; signal: AbortSignal }) => Promise<Response>

export interface UpstreamSyncOptions {
  settings: UpstreamSettings
  events: Ingestor
  cursors: CursorStore
  log: Logger
  clock?: Clock
  fetch?: FetchLike
  /** In `none` mode, the local organisation: events of another organisation are stored but no local caller sees them (warned once per organisation). */
  localOrgId?: string
  /** A request (headers and body) taking longer than this is aborted and counts as a failure. */
  requestTimeoutMs?: number
}

/** Events asked for per request (the endpoint's maximum). */
export const UPSTREAM_PAGE_LIMIT = 1000
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000
/** Retry-After is honoured up to this. */
const MAX_RETRY_AFTER_MS = 3_600_000
/** Jitter is ± this fraction of the minimum interval. */
const JITTER_FRACTION = 0.2

/**
 * The wait before the next poll after `idlePolls` consecutive polls that brought no event or
 * failed (0 after a poll that brought events): min · 2^idlePolls, capped at max, ± jitter of 20 %
 * of min (never above max, never below 0). `random` returns a number in [0, 1).
 */
export function upstreamDelay(idlePolls: number, settings: Pick<UpstreamSettings, 'minIntervalMs' | 'maxIntervalMs'>, random: () => number): number {
  const { minIntervalMs, maxIntervalMs } = settings
  return backoffDelay(idlePolls, { baseMs: minIntervalMs, maxMs: maxIntervalMs, jitterMs: Math.round(minIntervalMs * JITTER_FRACTION) }, random)
}

/** A poll that failed: what is logged (never the token) and how to retry. */
class UpstreamFailure extends Error {
  constructor(
    message: string,
    readonly status?: number,
    readonly retryAfterMs?: number,
  ) {
    super(message)
  }
}

const pageSchema = z.object({
  events: z.array(z.record(z.string(), z.unknown())),
  nextSeq: z.number().int().nonnegative(),
  hasMore: z.boolean(),
  epoch: z.string().min(1).max(64),
  truncated: z.boolean().optional(),
})
type Page = z.infer<typeof pageSchema>

/** The fields an upstream event is ingested with: seq and channelId are the upstream's own. */
const KEPT_FIELDS = ['id', 'type', 'orgId', 'userId', 'timestamp', 'payload', 'channels', 'key'] as const

export class UpstreamSync {
  private readonly settings: UpstreamSettings
  private readonly clock: Clock
  private readonly fetch: FetchLike
  private readonly requestTimeoutMs: number
  private state: 'new' | 'running' | 'stopped' = 'new'
  private cursor: UpstreamCursor = { epoch: null, seq: 0 }
  private timer: unknown
  private inFlight: Promise<void> | undefined
  private controller: AbortController | undefined
  /** Consecutive polls that brought nothing or failed. */
  private idlePolls = 0
  private failures = 0
  private readonly warnedOrgs = new Set<string>()

  constructor(private readonly options: UpstreamSyncOptions) {
    this.settings = options.settings
    this.clock = options.clock ?? systemClock
    this.fetch = options.fetch ?? ((url, init) => fetch(url, init))
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS
  }

  /** The cursor the next poll starts from. */
  get position(): UpstreamCursor {
    return { ...this.cursor }
  }

  /** Loads the persisted cursor and polls at once, then on the interval. */
  start(): void {
    if (this.state !== 'new') throw new Error(`cannot start an upstream sync that is ${this.state}`)
    this.state = 'running'
    this.cursor = this.options.cursors.load() ?? { epoch: null, seq: 0 }
    const { url, minIntervalMs, maxIntervalMs } = this.settings
    this.options.log.info('upstream_started', { url, since: this.cursor.seq, epoch: this.cursor.epoch, minIntervalMs, maxIntervalMs })
    this.schedule(0)
  }

  /** Clears the timer, aborts a request in flight and waits for the poll (an ingest under way finishes and its cursor is kept). */
  async stop(): Promise<void> {
    if (this.state === 'stopped') return
    const wasRunning = this.state === 'running'
    this.state = 'stopped'
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer)
    this.timer = undefined
    this.controller?.abort()
    await this.inFlight
    if (wasRunning) this.options.log.info('upstream_stopped', { url: this.settings.url, since: this.cursor.seq, epoch: this.cursor.epoch })
  }

  private schedule(ms: number): void {
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined
      const poll = this.poll().finally(() => {
        if (this.inFlight === poll) this.inFlight = undefined
      })
      this.inFlight = poll
    }, ms)
  }

  /** One poll: every page there is, then the next poll is scheduled. Never rejects. */
  private async poll(): Promise<void> {
    let brought = 0
    let failure: UpstreamFailure | undefined
    try {
      brought = await this.syncPages()
    } catch (error) {
      failure = error instanceof UpstreamFailure ? error : new UpstreamFailure(messageOf(error))
    }
    if (this.state !== 'running') return

    let delay: number
    if (failure) {
      this.failures++
      const unauthorized = failure.status === 401 || failure.status === 403
      this.idlePolls = unauthorized ? Number.MAX_SAFE_INTEGER : this.idlePolls + 1
      delay = upstreamDelay(this.idlePolls, this.settings, this.clock.random)
      if (failure.retryAfterMs !== undefined) delay = Math.max(delay, failure.retryAfterMs)
      const fields = {
        url: this.settings.url,
        ...(failure.status !== undefined ? { status: failure.status } : {}),
        message: this.redact(failure.message),
        failures: this.failures,
        retryInMs: delay,
      }
      if (unauthorized) {
        this.options.log.error('upstream_failed', { ...fields, hint: 'the upstream refused REALTIME_UPSTREAM_TOKEN; retrying at the maximum interval' })
      } else {
        this.options.log.warn('upstream_failed', fields)
      }
    } else {
      if (this.failures > 0) this.options.log.info('upstream_recovered', { url: this.settings.url, failures: this.failures })
      this.failures = 0
      this.idlePolls = brought > 0 ? 0 : this.idlePolls + 1
      delay = upstreamDelay(this.idlePolls, this.settings, this.clock.random)
    }
    this.schedule(delay)
  }

  /** Fetches and ingests pages while the upstream has more; resolves with the events received. */
  private async syncPages(): Promise<number> {
    let brought = 0
    while (this.state === 'running') {
      const since = this.cursor
      const page = await this.fetchPage(since)
      if (since.epoch !== null && page.epoch !== since.epoch) {
        // Another database answers (restored, or replaced): its page starts from its beginning.
        this.options.log.warn('upstream_epoch_changed', { url: this.settings.url, from: since.epoch, to: page.epoch, since: since.seq })
      } else if (page.truncated && since.seq > 0) {
        // Events after the cursor were pruned upstream before we fetched them, or the cursor is
        // beyond the upstream's newest seq: the page starts from the oldest event still stored.
        this.options.log.warn('upstream_truncated', { url: this.settings.url, since: since.seq, epoch: page.epoch })
      }
      const result = await this.ingestPage(page)
      const next = { epoch: page.epoch, seq: page.nextSeq }
      if (next.epoch !== since.epoch || next.seq !== since.seq) {
        // Only now that the page is committed: a crash before this line re-fetches, never skips.
        this.options.cursors.save(next)
        this.cursor = next
      }
      if (page.events.length > 0) {
        this.options.log.info('upstream_synced', { url: this.settings.url, events: page.events.length, ...result, seq: next.seq, epoch: next.epoch })
      }
      brought += page.events.length
      if (!page.hasMore || page.events.length === 0) break
    }
    return brought
  }

  private async fetchPage(cursor: UpstreamCursor): Promise<Page> {
    const query = new URLSearchParams({ since: String(cursor.seq), limit: String(UPSTREAM_PAGE_LIMIT) })
    if (cursor.epoch !== null) query.set('epoch', cursor.epoch)
    const headers: Record<string, string> = { accept: 'application/json' }
    if (this.settings.token) headers.authorization = `Bearer ${this.settings.token}`
    const controller = new AbortController()
    this.controller = controller
    const timeout = this.clock.setTimeout(() => controller.abort(), this.requestTimeoutMs)
    let response: Response
    let text: string
    try {
      response = await this.fetch(`${this.settings.url}/api/events/since?${query}`, { headers, signal: controller.signal })
      text = await response.text()
    } catch (error) {
      if (controller.signal.aborted) {
        throw new UpstreamFailure(this.state === 'running' ? `no answer within ${this.requestTimeoutMs} ms` : 'stopped')
      }
      throw new UpstreamFailure(messageOf(error))
    } finally {
      this.clock.clearTimeout(timeout)
      if (this.controller === controller) this.controller = undefined
    }
    if (!response.ok) {
      throw new UpstreamFailure(errorMessageOf(response.status, text), response.status, retryAfterOf(response))
    }
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch {
      throw new UpstreamFailure('the answer is not valid JSON', response.status)
    }
    const parsed = pageSchema.safeParse(json)
    if (!parsed.success) throw new UpstreamFailure(`unexpected answer: ${describeIssue(parsed.error.issues[0]!)}`, response.status)
    return parsed.data
  }

  /**
   * Ingests a page in upstream order. Events this service cannot accept (an invalid payload, say:
   * the upstream may know a newer catalogue) are logged and skipped, or the sync would stop for
   * good; a store failure rejects, so the cursor stays and the page is fetched again.
   */
  private async ingestPage(page: Page): Promise<{ stored: number; duplicates: number; skipped: number }> {
    let skipped = 0
    const valid: EventInput[] = []
    for (const raw of page.events) {
      const parsed = eventInput.safeParse(Object.fromEntries(KEPT_FIELDS.filter((field) => field in raw).map((field) => [field, raw[field]])))
      if (parsed.success) {
        valid.push(parsed.data)
      } else {
        skipped++
        this.skipped(raw, describeIssue(parsed.error.issues[0]!))
      }
    }
    for (const event of valid) this.checkOrg(event.orgId)

    // Consecutive events of one organisation go in one call; every call is queued in this tick,
    // so EventService commits them in one transaction, in upstream order.
    const runs: EventInput[][] = []
    for (const event of valid) {
      const last = runs.at(-1)
      if (last && last[0]!.orgId === event.orgId) last.push(event)
      else runs.push([event])
    }
    let results: IngestResult[]
    try {
      results = await Promise.all(runs.map((run) => this.options.events.ingest(principalOf(run[0]!), run)))
    } catch (error) {
      if (!(error instanceof ApiError) || error.status >= 500) throw error
      // One event was refused: ingest them one by one (those already stored come back as duplicates).
      const settled = await Promise.allSettled(valid.map((event) => this.options.events.ingest(principalOf(event), [event])))
      results = []
      settled.forEach((outcome, index) => {
        if (outcome.status === 'fulfilled') return results.push(outcome.value)
        const reason = outcome.reason
        if (!(reason instanceof ApiError) || reason.status >= 500) throw reason
        skipped++
        this.skipped(valid[index]!, reason.message)
      })
    }
    const stored = results.reduce((sum, r) => sum + r.stored, 0)
    const duplicates = results.reduce((sum, r) => sum + r.duplicates, 0)
    return { stored, duplicates, skipped }
  }

  private skipped(raw: Record<string, unknown>, reason: string): void {
    this.options.log.warn('upstream_event_skipped', {
      url: this.settings.url,
      id: typeof raw.id === 'string' ? raw.id : undefined,
      seq: typeof raw.seq === 'number' ? raw.seq : undefined,
      reason,
    })
  }

  private checkOrg(orgId: string): void {
    const local = this.options.localOrgId
    if (local === undefined || orgId === local || this.warnedOrgs.has(orgId)) return
    this.warnedOrgs.add(orgId)
    this.options.log.warn('upstream_foreign_org', {
      url: this.settings.url,
      orgId,
      localOrgId: local,
      hint: 'stored, but local callers (REALTIME_ORG_ID) cannot read them; set REALTIME_ORG_ID to the upstream organisation',
    })
  }

  private redact(message: string): string {
    const token = this.settings.token
    return token ? message.replaceAll(token, '[token]') : message
  }
}

/** The upstream is trusted configuration: its events are ingested as their own organisation. */
function principalOf(event: EventInput): Principal {
  return { orgId: event.orgId, userId: event.userId, credential: 'upstream' }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message || error.name : String(error)
}

/** Switchboard's `{"error":{"code","message"}}`, else the start of the body. */
function errorMessageOf(status: number, text: string): string {
  let detail = text.slice(0, 200)
  try {
    const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } }
    if (body?.error && typeof body.error.message === 'string') detail = `${body.error.code ?? 'error'}: ${body.error.message}`.slice(0, 200)
  } catch {}
  return `HTTP ${status}${detail ? ` ${detail}` : ''}`
}

function retryAfterOf(response: Response): number | undefined {
  const header = response.headers.get('retry-after')
  if (!header || !/^\d+$/.test(header.trim())) return undefined
  return Math.min(Number(header) * 1000, MAX_RETRY_AFTER_MS)
}

/** The cursor of one upstream in the `meta` table, under `upstream:<url>`. */
export function metaCursorStore(database: OpenedDatabase, url: string): CursorStore {
  const key = `upstream:${url}`
  const cursorSchema = z.object({ epoch: z.string().min(1).nullable(), seq: z.number().int().nonnegative() })
  return {
    load() {
      const row = database.db.select().from(meta).where(eq(meta.key, key)).get()
      if (!row) return null
      try {
        const parsed = cursorSchema.safeParse(JSON.parse(row.value))
        return parsed.success ? parsed.data : null
      } catch {
        return null
      }
    },
    save(cursor) {
      const value = JSON.stringify({ epoch: cursor.epoch, seq: cursor.seq })
      database.db.insert(meta).values({ key, value }).onConflictDoUpdate({ target: meta.key, set: { value } }).run()
    },
  }
}
