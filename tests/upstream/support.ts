/**
 * Shared bits of the upstream-sync process tests (not a test file): processes that are always
 * stopped, a logging proxy with a switchable target, and bounded waits on logs and stores.
 */
import type { Server } from 'bun'
import { join } from 'node:path'
import { spawnService, type ServiceProcess } from '../helpers/process'
import { getJson, tempDir, waitFor } from '../helpers/server'

/** Fast intervals: a poll every 50 ms after events, backing off to 200 ms. */
export const FAST = { REALTIME_UPSTREAM_MIN_INTERVAL_MS: '50', REALTIME_UPSTREAM_MAX_INTERVAL_MS: '200' }

/** Tracks everything a test file starts, so `cleanup` (in afterAll/afterEach) stops it all. */
export class Fixture {
  private readonly services: ServiceProcess[] = []
  private readonly proxies: LoggingProxy[] = []
  private readonly dirs: Array<() => void> = []

  dbFile(): string {
    const tmp = tempDir()
    this.dirs.push(tmp.cleanup)
    return join(tmp.dir, 'realtime.db')
  }

  /** A Switchboard process (upstream sync off unless `env` turns it on). */
  async service(env: Record<string, string>): Promise<ServiceProcess> {
    const service = await spawnService({ REALTIME_UPSTREAM_URL: '', REALTIME_UPSTREAM_TOKEN: '', ...env })
    this.services.push(service)
    return service
  }

  proxy(target: string): LoggingProxy {
    const proxy = startLoggingProxy(target)
    this.proxies.push(proxy)
    return proxy
  }

  async cleanup(): Promise<void> {
    for (const service of this.services.splice(0)) {
      if (service.proc.exitCode === null && service.proc.signalCode === null) service.proc.kill(9)
      await service.exited
    }
    for (const proxy of this.proxies.splice(0)) await proxy.stop()
    for (const cleanup of this.dirs.splice(0)) cleanup()
  }
}

/** SIGTERM, and the exit code (bounded: a hung process fails the test instead of hanging it). */
export async function terminate(service: ServiceProcess): Promise<number> {
  service.proc.kill('SIGTERM')
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), 8000)))
  const code = await Promise.race([service.exited, timeout])
  clearTimeout(timer)
  if (code === 'timeout') throw new Error(`service ${service.url} did not exit within 8 s of SIGTERM`)
  return code
}

/** Resolves with the first log line (from `from` on) matching `match`. */
export function waitForLog(service: ServiceProcess, match: (line: any) => boolean, what: string, from = 0, timeoutMs = 5000): Promise<any> {
  return waitFor(() => service.logs.slice(from).find(match), timeoutMs, `${what} in the logs of ${service.url}`)
}

/** Resolves with the first `count` log lines (from `from` on) matching `match`. */
export async function waitForLogs(service: ServiceProcess, match: (line: any) => boolean, count: number, what: string, from = 0): Promise<any[]> {
  const lines = await waitFor(
    () => {
      const found = service.logs.slice(from).filter(match)
      return found.length >= count ? found.slice(0, count) : undefined
    },
    5000,
    `${count} × ${what} in the logs of ${service.url}`,
  )
  return lines!
}

/** Every event of the caller's organisation, read page by page (bounded). */
export async function allEvents(url: string, headers: Record<string, string> = {}): Promise<any[]> {
  const out: any[] = []
  let since = 0
  for (let pages = 0; pages < 100; pages++) {
    const { status, body } = await getJson(`${url}/api/events/since?since=${since}&limit=1000`, headers)
    if (status !== 200) throw new Error(`GET since → ${status} ${JSON.stringify(body)}`)
    out.push(...body.events)
    if (!body.hasMore) return out
    since = body.nextSeq
  }
  throw new Error('too many pages')
}

/** Waits until the service holds `count` events of the caller's organisation, then returns them. */
export async function waitForEvents(url: string, count: number, headers: Record<string, string> = {}, timeoutMs = 5000): Promise<any[]> {
  let seen = 0
  const events = await waitFor(
    async () => {
      const events = await allEvents(url, headers)
      seen = events.length
      if (seen > count) throw new Error(`${url} holds ${seen} events, expected ${count}`)
      return seen === count ? events : undefined
    },
    timeoutMs,
    `${count} events at ${url} (last seen ${seen})`,
  )
  return events!
}

/** The event as it was ingested (what a downstream must store unchanged): no seq, no channelId. */
export function asIngested(event: any) {
  const { seq, channelId, ...rest } = event
  return rest
}

/**
 * A loopback HTTP proxy that records every request's path and query, and forwards to `target`
 * (which can be switched, e.g. to a restarted upstream). An unreachable target is answered 502,
 * like a gateway in front of a dead upstream.
 */
export interface LoggingProxy {
  url: string
  target: string
  /** `pathname?search` of every request, in order. */
  requests: string[]
  stop(): Promise<void>
}

function startLoggingProxy(initialTarget: string): LoggingProxy {
  const server: Server<undefined> = Bun.serve({
    hostname: '127.0.0.1',
    port: 0,
    async fetch(request) {
      const url = new URL(request.url)
      proxy.requests.push(`${url.pathname}${url.search}`)
      const headers = new Headers(request.headers)
      headers.delete('host')
      try {
        const answer = await fetch(`${proxy.target}${url.pathname}${url.search}`, { method: request.method, headers })
        return new Response(await answer.arrayBuffer(), { status: answer.status, headers: answer.headers })
      } catch (error) {
        return Response.json({ error: { code: 'bad_gateway', message: `upstream unreachable: ${String(error)}` } }, { status: 502 })
      }
    },
  })
  const proxy: LoggingProxy = {
    url: `http://127.0.0.1:${server.port}`,
    target: initialTarget,
    requests: [],
    stop: () => server.stop(true),
  }
  return proxy
}

/** The `since` and `epoch` of each `/api/events/since` request a proxy saw. */
export function sinceRequests(proxy: LoggingProxy, from = 0): Array<{ since: string | null; epoch: string | null }> {
  return proxy.requests
    .slice(from)
    .filter((request) => request.startsWith('/api/events/since'))
    .map((request) => {
      const params = new URL(request, 'http://x').searchParams
      return { since: params.get('since'), epoch: params.get('epoch') }
    })
}

/** A port nothing listens on right now (briefly bound, then released). */
export function freePort(): number {
  const server = Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: () => new Response('') })
  const port = server.port!
  server.stop(true)
  return port
}
