import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRealtimeServer, type RealtimeServer, type RealtimeServerOptions } from '../../src/server'
import { silentLogger } from '../../src/log'

/** A fresh directory for SQLite files; removed by the returned cleanup. */
export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'switchboard-test-'))
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) }
}

export interface TestServer {
  server: RealtimeServer
  url: string
  wsUrl: string
  dbPath: string
  /** Stops the server (if still running) and removes its files. */
  close(): Promise<void>
}

/** A real server on 127.0.0.1, port 0, with a real SQLite file in a temp dir. */
export async function startServer(options: RealtimeServerOptions = {}): Promise<TestServer> {
  const tmp = tempDir()
  const dbPath = options.dbPath ?? join(tmp.dir, 'realtime.db')
  const server = createRealtimeServer({ host: '127.0.0.1', port: 0, logger: silentLogger, rateLimit: null, httpRateLimit: null, ...options, dbPath })
  const { url } = await server.start()
  return {
    server,
    url,
    wsUrl: `${url.replace('http', 'ws')}/ws`,
    dbPath,
    async close() {
      await server.stop()
      tmp.cleanup()
    },
  }
}

let counter = 0
/** A valid event of a type outside the catalogue (any payload), unique id. */
export function makeEvent(overrides: Record<string, unknown> = {}) {
  counter++
  return {
    id: crypto.randomUUID(),
    type: 'test.happened',
    orgId: 'local',
    userId: 'local',
    timestamp: Date.now(),
    payload: { n: counter },
    ...overrides,
  }
}

/** POST /ingest with a JSON body; returns status and parsed body. */
export async function ingest(url: string, body: unknown, headers: Record<string, string> = {}) {
  const response = await fetch(`${url}/ingest`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  })
  return { status: response.status, body: (await response.json()) as any, headers: response.headers }
}

export async function getJson(url: string, headers: Record<string, string> = {}) {
  const response = await fetch(url, { headers })
  return { status: response.status, body: (await response.json()) as any }
}

/** Polls `condition` until it is truthy (never a fixed sleep); fails after `timeoutMs`. */
export async function waitFor<T>(condition: () => T | Promise<T>, timeoutMs = 5000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await condition()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await Bun.sleep(10)
  }
}
