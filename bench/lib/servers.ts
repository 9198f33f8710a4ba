/** The two servers a benchmark measures, each started fresh in its own process. */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type JsonProcess, ROOT, spawnJson } from './proc'

export type Target = 'switchboard' | 'bare'

export interface RunningServer {
  target: Target
  child: JsonProcess
  pid: number
  host: string
  port: number
  /** http://host:port */
  url: string
  /** Where events are POSTed: /ingest for Switchboard, /publish for the bare server. */
  publishPath: string
  dbPath?: string
  stop(): Promise<void>
}

const HOST = '127.0.0.1'
const START_TIMEOUT_MS = 60_000

const scratch = new Set<string>()

/** A fresh temp dir for one scenario's database (removed with removeScratch, or removeAllScratch on exit). */
export function scratchDir(label: string): string {
  const dir = mkdtempSync(join(tmpdir(), `switchboard-bench-${label}-`))
  scratch.add(dir)
  return dir
}

export function removeScratch(dir: string): void {
  rmSync(dir, { recursive: true, force: true })
  scratch.delete(dir)
}

export function removeAllScratch(): void {
  for (const dir of [...scratch]) removeScratch(dir)
}

/**
 * `bun src/main.ts` with its own database and every limit that would get in a benchmark's way off
 * or raised. The log level stays `info`: at `warn` the `listening` line (an info line) is not
 * printed, and in `none` mode nothing else is logged at info per request or socket.
 */
export async function startSwitchboard(
  options: { dir?: string; dbPath?: string; env?: Record<string, string>; label?: string } = {},
): Promise<RunningServer> {
  const dir = options.dir ?? scratchDir('sb')
  const dbPath = options.dbPath ?? join(dir, 'realtime.db')
  const child = spawnJson('switchboard', ['bun', ...profileFlags(options.label ?? 'switchboard'), 'src/main.ts'], {
    raiseFdLimit: true,
    env: {
      REALTIME_HOST: HOST,
      REALTIME_PORT: '0',
      REALTIME_DB: dbPath,
      REALTIME_RATE_LIMIT: 'off',
      REALTIME_HTTP_RATE_LIMIT: 'off',
      REALTIME_MAX_CONNECTIONS: '200000',
      REALTIME_MAX_CONNECTIONS_PER_USER: '200000',
      REALTIME_MAX_SUBSCRIPTIONS: '100000',
      // In none mode every event stream is the same credential (sse fan-out opens 1,000).
      REALTIME_MAX_STREAMS_PER_CREDENTIAL: '100000',
      REALTIME_LOG_LEVEL: 'info',
      ...options.env,
    },
  })
  try {
    const listening = await child.waitFor((line) => line.event === 'listening', START_TIMEOUT_MS, '"listening" line')
    return {
      target: 'switchboard',
      child,
      pid: child.pid,
      host: HOST,
      port: listening.port,
      url: `http://${HOST}:${listening.port}`,
      publishPath: '/ingest',
      dbPath,
      async stop() {
        await child.stop()
        if (!options.dir) removeScratch(dir)
      },
    }
  } catch (error) {
    await child.stop(2000)
    if (!options.dir) removeScratch(dir)
    throw error
  }
}

/** bench/bare-server.ts: Bun.serve pub/sub with nothing else. */
export async function startBare(): Promise<RunningServer> {
  const child = spawnJson('bare', ['bun', 'bench/bare-server.ts', '--host', HOST, '--port', '0'], { raiseFdLimit: true })
  try {
    const listening = await child.waitFor((line) => line.event === 'listening', START_TIMEOUT_MS, '"listening" line')
    return {
      target: 'bare',
      child,
      pid: child.pid,
      host: HOST,
      port: listening.port,
      url: `http://${HOST}:${listening.port}`,
      publishPath: '/publish',
      async stop() {
        await child.stop()
      },
    }
  } catch (error) {
    await child.stop(2000)
    throw error
  }
}

export function startServer(target: Target, label?: string): Promise<RunningServer> {
  return target === 'bare' ? startBare() : startSwitchboard({ label })
}

/** Where BENCH_PROFILE=1 puts the servers' CPU profiles (markdown, written when the server exits). */
export const PROFILE_DIR = join(ROOT, 'bench', 'results', 'profiles')
export const profiling = () => !!process.env.BENCH_PROFILE && process.env.BENCH_PROFILE !== '0'

/** With BENCH_PROFILE=1, Switchboard runs under Bun's sampling profiler: one `<label>.md` per server. */
function profileFlags(label: string): string[] {
  if (!profiling()) return []
  return ['--cpu-prof-md', `--cpu-prof-dir=${PROFILE_DIR}`, `--cpu-prof-name=${label.replace(/[^a-z0-9._-]+/gi, '-')}.md`]
}
