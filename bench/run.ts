#!/usr/bin/env bun
/**
 * Switchboard's benchmark suite: `bun run bench` (= `bun bench/run.ts`).
 *
 *   bun run bench                         every scenario at full scale
 *   BENCH_SCALE=0.05 bun run bench        a smoke run: every count scaled down (floors keep it meaningful)
 *   bun run bench --only fanout,idle      some scenarios (fanout, ingest, connections, replay, idle,
 *                                         snapshot, statecost, ssefanout, rpc)
 *   bun run bench --scale 0.1             same as BENCH_SCALE
 *   BENCH_VERBOSE=1 …                     children's stderr and loader progress on stderr
 *   BENCH_PROFILE=1 …                     Switchboard under Bun's CPU profiler: bench/results/profiles/<scenario>.md
 *
 * Every server and every loader is its own process (loopback only): this process only orchestrates.
 * Each scenario starts its servers fresh, each Switchboard with its own temp database. Per scenario
 * it prints a table row and one JSON line on stdout (`grep '^{'` keeps only the JSON), then the whole
 * table and the targets, and writes bench/results/latest.json (a full run with every scenario also
 * appends to bench/results/history.jsonl). Exit code 1 if any scenario failed.
 */
import { appendFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, release, totalmem } from 'node:os'
import { join } from 'node:path'
import { cpuMsOf, killAllNow, memoryOf, ROOT, sleep, spawnJson, stopAll } from './lib/proc'
import { PROFILE_DIR, profiling, removeAllScratch, removeScratch, type RunningServer, scratchDir, startServer, startSwitchboard, type Target } from './lib/servers'
import { Histogram, median } from './lib/stats'

// ---------------------------------------------------------------------------------------------
// Options

const argv = process.argv.slice(2)
const flag = (name: string): string | undefined => {
  const at = argv.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`))
  if (at < 0) return undefined
  const inline = argv[at]!.split('=').slice(1).join('=')
  return inline || argv[at + 1]
}
if (argv.includes('--help') || argv.includes('-h')) {
  console.log(readFileSync(import.meta.path, 'utf8').split('*/')[0])
  process.exit(0)
}
const SCALE = Number(flag('scale') ?? process.env.BENCH_SCALE ?? 1)
if (!(SCALE > 0 && SCALE <= 10)) {
  console.error(`BENCH_SCALE must be a number in (0, 10], got ${JSON.stringify(flag('scale') ?? process.env.BENCH_SCALE)}`)
  process.exit(2)
}
const SCENARIOS = ['fanout', 'ingest', 'connections', 'replay', 'idle', 'snapshot', 'statecost', 'ssefanout', 'rpc'] as const
type Scenario = (typeof SCENARIOS)[number]
const onlyArg = flag('only') ?? process.env.BENCH_ONLY
const only = onlyArg ? onlyArg.split(',').map((s) => s.trim()).filter(Boolean) : [...SCENARIOS]
for (const name of only) {
  if (!(SCENARIOS as readonly string[]).includes(name)) {
    console.error(`unknown scenario ${JSON.stringify(name)} (known: ${SCENARIOS.join(', ')})`)
    process.exit(2)
  }
}
const scaled = (full: number, min: number) => Math.max(min, Math.round(full * SCALE))

/** The default figures of every scenario at BENCH_SCALE=1. */
const PLAN = {
  fanout: {
    subscribers: scaled(1000, 20),
    batchSize: 100,
    padBytes: 64,
    warmupBatches: 5,
    /** The scenario's default rate, at which its latency is reported. */
    paced: { batchesPerSecond: 4, batches: scaled(20, 6) },
    saturated: { batches: scaled(100, 20), window: 4 },
  },
  ingest: [
    { batchSize: 1, senders: 8, requestsPerSender: scaled(2500, 100), warmupRequests: scaled(200, 20) },
    { batchSize: 100, senders: 8, requestsPerSender: scaled(250, 10), warmupRequests: scaled(20, 4) },
  ],
  connections: { count: scaled(10_000, 200), perLoader: 2500, concurrency: 200 },
  replay: [
    { label: '100k', total: scaled(100_000, 2000), target: scaled(100_000, 2000) },
    { label: '100k of 1M', total: scaled(1_000_000, 20_000), target: scaled(100_000, 2000) },
  ],
  idle: { roundTrips: scaled(1000, 100), warmup: scaled(100, 20), padBytes: 64 },
  snapshot: { total: scaled(1_000_000, 20_000), entities: scaled(10_000, 200), channel: 'org:local', share: 0.5, warmup: 2, runs: scaled(20, 5) },
  /** The ingest scenario's batches of 100, once per kind of event, `rounds` times in turn (median). */
  statecost: {
    kinds: ['state', 'nostate', 'key'] as const,
    rounds: 3,
    ingest: { batchSize: 100, senders: 8, requestsPerSender: scaled(250, 10), warmupRequests: scaled(20, 4) },
  },
  /** The fan-out scenario (PLAN.fanout), its subscribers on WebSockets and on Server-Sent Events. */
  ssefanout: { transports: ['ws', 'sse'] as const },
  rpc: { calls: scaled(1000, 100), warmup: scaled(100, 20), pings: scaled(1000, 100), padBytes: 64 },
}

/** Deadlines: generous, but every wait in the suite has one. */
const LOADER_TIMEOUT_MS = 10 * 60_000
const WAIT_TIMEOUT_MS = 60_000

// ---------------------------------------------------------------------------------------------
// Output

interface Row {
  scenario: string
  server: string
  throughput: string
  p50?: number | null
  p95?: number | null
  p99?: number | null
  notes: string
}

const rows: Row[] = []
const results: Record<string, unknown>[] = []
const failures: Array<{ scenario: string; error: string }> = []
const COLUMNS: Array<[keyof Row, string, number]> = [
  ['scenario', 'scenario', 22],
  ['server', 'server', 12],
  ['throughput', 'throughput', 34],
  ['p50', 'p50 ms', 9],
  ['p95', 'p95 ms', 9],
  ['p99', 'p99 ms', 9],
  ['notes', 'notes', 0],
]
const cell = (row: Row, key: keyof Row) => {
  const v = row[key]
  if (v === undefined || v === null) return '-'
  return typeof v === 'number' ? v.toFixed(3) : String(v)
}
const formatRow = (row: Row) => COLUMNS.map(([key, , width]) => (width ? cell(row, key).padEnd(width) : cell(row, key))).join(' ')
const header = () => {
  const head = COLUMNS.map(([, title, width]) => (width ? title.padEnd(width) : title)).join(' ')
  return `${head}\n${'-'.repeat(Math.max(head.length, 120))}`
}

/** One measurement: its table row and its JSON line, printed as soon as it is known. */
function report(row: Row, json: Record<string, unknown>): void {
  rows.push(row)
  const line = { scenario: row.scenario, server: row.server, scale: SCALE, ...json }
  results.push(line)
  console.log(formatRow(row))
  console.log(JSON.stringify(line))
}

const fmt = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : String(n))
const ratio = (a: number | null | undefined, b: number | null | undefined) =>
  typeof a === 'number' && typeof b === 'number' && b > 0 ? Math.round((a / b) * 1000) / 1000 : null
const pct = (v: number | null | undefined) => (typeof v === 'number' ? `${v}%` : 'n/a')
const info = (message: string) => process.stderr.write(`· ${message}\n`)

// ---------------------------------------------------------------------------------------------
// Processes

/**
 * Runs one loader process to its `{"result"}` line. `marks` receives the loader's `{"mark"}` lines
 * at once, so the server's CPU time can be sampled around the measured part.
 */
async function runLoader(name: string, script: string, cfg: unknown, onMark?: (mark: string) => void): Promise<any> {
  const loader = spawnJson(name, ['bun', `bench/load/${script}.ts`, JSON.stringify(cfg)], {
    raiseFdLimit: true,
    onLine: (line) => {
      if (typeof line.mark === 'string') onMark?.(line.mark)
    },
  })
  try {
    const line = await loader.waitFor((l) => 'result' in l || 'error' in l, LOADER_TIMEOUT_MS, 'result')
    if (line.error) throw new Error(`${name}: ${line.error}`)
    await loader.exited
    return line.result
  } finally {
    await loader.stop(2000)
  }
}

/** Server CPU use between two loader marks, as % of one core. */
function cpuMeter(pid: number) {
  const marks = new Map<string, { cpu: number; wall: number }>()
  return {
    mark(name: string) {
      marks.set(name, { cpu: cpuMsOf(pid), wall: performance.now() })
    },
    pct(from: string, to: string): number | null {
      const a = marks.get(from)
      const b = marks.get(to)
      // /proc counts CPU in clock ticks (10 ms): a shorter interval says nothing.
      if (!a || !b || b.wall - a.wall < 250) return null
      return Math.round(((b.cpu - a.cpu) / (b.wall - a.wall)) * 1000) / 10
    },
  }
}

async function withServer<T>(target: Target, label: string, body: (server: RunningServer) => Promise<T>): Promise<T> {
  const server = await startServer(target, label)
  try {
    return await body(server)
  } finally {
    await server.stop()
  }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

const floor: Record<string, number | null> = {}
const measured: Record<string, any> = {}

/** One fan-out loader run (PLAN.fanout) against a running server, with its server CPU and RSS. */
async function runFanout(server: RunningServer, name: string, transport?: 'ws' | 'sse'): Promise<any> {
  const plan = PLAN.fanout
  const meter = cpuMeter(server.pid)
  const result = await runLoader(name, 'fanout', {
    host: server.host,
    port: server.port,
    publishUrl: `${server.url}${server.publishPath}`,
    channel: 'bench:fanout',
    subscribers: plan.subscribers,
    batchSize: plan.batchSize,
    padBytes: plan.padBytes,
    warmupBatches: plan.warmupBatches,
    paced: plan.paced,
    saturated: plan.saturated,
    connectConcurrency: 100,
    timeoutMs: WAIT_TIMEOUT_MS,
    ...(transport ? { transport } : {}),
  }, meter.mark)
  result.saturated.serverCpuPct = meter.pct('saturated:start', 'saturated:end')
  result.paced.serverCpuPct = meter.pct('paced:start', 'paced:end')
  result.serverRssKiB = memoryOf(server.pid).rssKiB
  return result
}

async function fanout(): Promise<void> {
  const plan = PLAN.fanout
  const byTarget: Record<string, any> = {}
  for (const target of ['switchboard', 'bare'] as const) {
    info(`fanout/${target}: ${plan.subscribers} subscribers, batches of ${plan.batchSize}`)
    const r = await withServer(target, 'fanout', (server) => runFanout(server, `fanout-${target}`))
    byTarget[target] = r
    report(
      {
        scenario: 'fanout',
        server: target,
        throughput: `${fmt(r.saturated.deliveredPerSec)} delivered/s`,
        p50: r.paced.latencyMs.p50,
        p95: r.paced.latencyMs.p95,
        p99: r.paced.latencyMs.p99,
        notes:
          `${r.subscribers} subs; latency at ${r.paced.batchesPerSecond} batches/s; ` +
          `saturated p99 ${r.saturated.latencyMs.p99} ms; cpu server ${pct(r.saturated.serverCpuPct)} loader ${pct(r.saturated.loaderCpuPct)}`,
      },
      r,
    )
  }
  measured.fanout = byTarget
  const sb = byTarget.switchboard
  const bare = byTarget.bare
  floor.fanoutThroughput = ratio(sb.saturated.deliveredPerSec, bare.saturated.deliveredPerSec)
  floor.fanoutPacedP99 = ratio(sb.paced.latencyMs.p99, bare.paced.latencyMs.p99)
  floor.fanoutPacedP50 = ratio(sb.paced.latencyMs.p50, bare.paced.latencyMs.p50)
  report(
    {
      scenario: 'floor: fanout',
      server: 'sb / bare',
      throughput: `${floor.fanoutThroughput}× delivered/s`,
      p50: floor.fanoutPacedP50,
      p99: floor.fanoutPacedP99,
      notes: 'ratios Switchboard / bare (throughput: higher is better; latency columns: ratio, lower is better)',
    },
    { throughputRatio: floor.fanoutThroughput, pacedP50Ratio: floor.fanoutPacedP50, pacedP99Ratio: floor.fanoutPacedP99 },
  )
}

async function ingest(): Promise<void> {
  measured.ingest = {}
  for (const plan of PLAN.ingest) {
    info(`ingest: batches of ${plan.batchSize}, ${plan.senders} senders × ${plan.requestsPerSender} requests`)
    const r = await withServer('switchboard', `ingest-batch${plan.batchSize}`, async (server) => {
      const meter = cpuMeter(server.pid)
      const result = await runLoader(`ingest-${plan.batchSize}`, 'ingest', { url: `${server.url}/ingest`, ...plan, timeoutMs: LOADER_TIMEOUT_MS }, meter.mark)
      result.serverCpuPct = meter.pct('measure:start', 'measure:end')
      const health = (await (await fetch(`${server.url}/health`)).json()) as { eventsStored: number }
      result.eventsStoredAfter = health.eventsStored
      return result
    })
    measured.ingest[`batch${plan.batchSize}`] = r
    report(
      {
        scenario: `ingest batch ${plan.batchSize}`,
        server: 'switchboard',
        throughput: `${fmt(r.eventsPerSec)} events/s`,
        p50: r.requestLatencyMs.p50,
        p95: r.requestLatencyMs.p95,
        p99: r.requestLatencyMs.p99,
        notes: `${fmt(r.requestsPerSec)} req/s, ${r.senders} senders, ${fmt(r.stored)} stored, ${r.duplicates} dup; cpu server ${pct(r.serverCpuPct)} loader ${pct(r.loaderCpuPct)}; latency per request`,
      },
      r,
    )
  }
}

async function hardFdLimit(): Promise<number> {
  const out = Bun.spawnSync(['sh', '-c', 'ulimit -Hn']).stdout.toString().trim()
  return out === 'unlimited' ? Number.POSITIVE_INFINITY : Number(out)
}

async function connections(): Promise<void> {
  const plan = PLAN.connections
  const fdLimit = await hardFdLimit()
  const loaders = Math.max(1, Math.ceil(plan.count / plan.perLoader))
  if (fdLimit < plan.count + 256) {
    info(`connections: the hard descriptor limit is ${fdLimit}, below the ${plan.count + 256} the server needs; expect failures`)
  }
  measured.connections = {}
  for (const target of ['switchboard', 'bare'] as const) {
    info(`connections/${target}: ${plan.count} idle subscribed sockets from ${loaders} loader processes`)
    const r = await withServer(target, 'connections', async (server) => {
      const spawnLoaders = (total: number, processes: number, prefix: string) => {
        const per = Math.ceil(total / processes)
        return Array.from({ length: processes }, (_, i) =>
          spawnJson(`connections-${i}`, ['bun', 'bench/load/connections.ts', JSON.stringify({
            host: server.host,
            port: server.port,
            count: Math.min(per, total - i * per),
            offset: i * per,
            channelPrefix: prefix,
            concurrency: Math.max(1, Math.round(plan.concurrency / processes)),
            holdMs: WAIT_TIMEOUT_MS * 2,
            timeoutMs: LOADER_TIMEOUT_MS,
          })], { stdin: 'pipe', raiseFdLimit: true }),
        )
      }
      // Warm-up: a few connections opened and closed first, so the baseline already includes the
      // code and the JIT of the WebSocket path (otherwise a small run charges them to each socket).
      const warm = spawnLoaders(Math.min(100, plan.count), 1, 'bench:warm-')
      try {
        await warm[0]!.waitFor((l) => l.loaded || l.error, WAIT_TIMEOUT_MS, '"loaded" line')
        warm[0]!.send('go')
        await warm[0]!.waitFor((l) => l.ready || l.error, WAIT_TIMEOUT_MS, '"ready" line')
        warm[0]!.send('close')
        await warm[0]!.exited
      } finally {
        await warm[0]!.stop(2000)
      }
      await sleep(1000)
      const before = memoryOf(server.pid)
      const cpuBefore = cpuMsOf(server.pid)
      const children = spawnLoaders(plan.count, loaders, 'bench:conn-')
      try {
        await Promise.all(children.map((c) => c.waitFor((l) => l.loaded || l.error, WAIT_TIMEOUT_MS, '"loaded" line')))
        for (const c of children) c.send('go')
        const ready = await Promise.all(
          children.map(async (c) => {
            const line = await c.waitFor((l) => l.ready || l.error, LOADER_TIMEOUT_MS, '"ready" line')
            if (line.error) throw new Error(`${c.name}: ${line.error}`)
            return line.result
          }),
        )
        const cpuConnect = cpuMsOf(server.pid) - cpuBefore
        await sleep(1000)
        const after1s = memoryOf(server.pid)
        await sleep(2000)
        const after3s = memoryOf(server.pid)
        const health = (await (await fetch(`${server.url}/health`)).json()) as { connections: number; channels: number }
        for (const c of children) c.send('close')
        const closed = await Promise.all(children.map((c) => c.waitFor((l) => l.closed || l.error, WAIT_TIMEOUT_MS, '"closed" line')))
        const opened = ready.reduce((n, r) => n + r.opened, 0)
        const hist = new Histogram()
        for (const r of ready) hist.merge(Histogram.from(r.histogram))
        const startedAt = Math.min(...ready.map((r) => r.startedAt))
        const finishedAt = Math.max(...ready.map((r) => r.finishedAt))
        const perConn = (kib: number) => Math.round(((kib * 1024) / Math.max(1, opened)) * 10) / 10
        return {
          count: plan.count,
          opened,
          failed: plan.count - opened,
          loaders,
          fdHardLimit: fdLimit,
          connectSeconds: Math.round(finishedAt - startedAt) / 1000,
          connectsPerSec: Math.round(opened / ((finishedAt - startedAt) / 1000)),
          connectMs: hist.summary(),
          serverConnections: health.connections,
          serverChannels: health.channels,
          serverCpuMsForConnects: Math.round(cpuConnect),
          rssBeforeKiB: before.rssKiB,
          rssAfterKiB: after3s.rssKiB,
          rssAfter1sKiB: after1s.rssKiB,
          bytesPerConnection: perConn(after3s.rssKiB - before.rssKiB),
          anonBytesPerConnection: perConn(after3s.rssAnonKiB - before.rssAnonKiB),
          peakRssKiB: after3s.hwmKiB,
          closedEarly: closed.reduce((n, c) => n + (c.closedEarly ?? 0), 0),
          failures: ready.flatMap((r) => r.failures).slice(0, 5),
        }
      } finally {
        await Promise.all(children.map((c) => c.stop(5000)))
      }
    })
    measured.connections[target] = r
    report(
      {
        scenario: 'connections',
        server: target,
        throughput: `${fmt(r.opened)} in ${r.connectSeconds} s (${fmt(r.connectsPerSec)}/s)`,
        p50: r.connectMs.p50,
        p95: r.connectMs.p95,
        p99: r.connectMs.p99,
        notes: `${(r.bytesPerConnection / 1024).toFixed(2)} KiB RSS/conn (anon ${(r.anonBytesPerConnection / 1024).toFixed(2)} KiB); ${r.failed} failed; server sees ${r.serverConnections}; latency = connect→subscribed`,
      },
      r,
    )
  }
}

async function replay(): Promise<void> {
  measured.replay = {}
  for (const plan of PLAN.replay) {
    const dir = scratchDir('replay')
    const dbPath = join(dir, 'realtime.db')
    try {
      info(`replay ${plan.label}: filling ${fmt(plan.total)} events (${fmt(plan.target)} on the channel)`)
      const fill = spawnJson('fill-db', ['bun', 'bench/setup/fill-db.ts', JSON.stringify({ db: dbPath, total: plan.total, target: plan.target, channel: 'bench:replay' })])
      const filled = await fill.waitFor((l) => 'result' in l, LOADER_TIMEOUT_MS, 'result').finally(() => fill.stop(2000))
      await fill.exited
      info(`replay ${plan.label}: filled in ${filled.result.ms} ms; replaying`)
      const server = await startSwitchboard({ dir, dbPath, label: `replay-${plan.label.replace(/ /g, '-')}` })
      let r: any
      try {
        const meter = cpuMeter(server.pid)
        r = await runLoader('replay', 'replay', {
          host: server.host,
          port: server.port,
          channel: 'bench:replay',
          expected: filled.result.target,
          eventType: 'agent.status',
          runs: 3,
          timeoutMs: LOADER_TIMEOUT_MS,
        }, meter.mark)
        r.serverCpuPctLastRun = meter.pct('run:start', 'run:end')
        r.stored = filled.result.stored
        r.fillMs = filled.result.ms
        r.fillEventsPerSec = Math.round(filled.result.stored / (filled.result.ms / 1000))
      } finally {
        await server.stop()
      }
      measured.replay[plan.label] = r
      report(
        {
          scenario: `replay ${plan.label}`,
          server: 'switchboard',
          throughput: `${fmt(r.eventsPerSec)} events/s`,
          notes: `${fmt(r.expected)} of ${fmt(r.stored)} stored, since=0; median of ${r.runs.length} runs (${r.runs.map((x: any) => fmt(x.eventsPerSec)).join(', ')}); first event ${r.firstEventMs} ms; server cpu ${pct(r.serverCpuPctLastRun)}`,
        },
        r,
      )
    } finally {
      removeScratch(dir)
    }
  }
  const small = measured.replay['100k']
  const large = measured.replay['100k of 1M']
  if (small && large) floor.replayLargeOverSmall = ratio(large.eventsPerSec, small.eventsPerSec)
}

async function idle(): Promise<void> {
  const plan = PLAN.idle
  const byTarget: Record<string, any> = {}
  for (const target of ['switchboard', 'bare'] as const) {
    info(`idle/${target}: ${plan.roundTrips} round trips`)
    const r = await withServer(target, 'idle', async (server) => {
      const meter = cpuMeter(server.pid)
      const result = await runLoader(`idle-${target}`, 'idle', {
        host: server.host,
        port: server.port,
        publishUrl: `${server.url}${server.publishPath}`,
        channel: 'bench:idle',
        ...plan,
        timeoutMs: WAIT_TIMEOUT_MS,
      }, meter.mark)
      result.serverCpuPct = meter.pct('measure:start', 'measure:end')
      return result
    })
    byTarget[target] = r
    report(
      {
        scenario: 'idle latency',
        server: target,
        throughput: `${fmt(r.roundTripsPerSec)} round trips/s`,
        p50: r.latencyMs.p50,
        p95: r.latencyMs.p95,
        p99: r.latencyMs.p99,
        notes: `POST → frame, ${r.roundTrips} one at a time; HTTP answer p50 ${r.httpAnswerMs.p50} p99 ${r.httpAnswerMs.p99} ms`,
      },
      r,
    )
  }
  measured.idle = byTarget
  floor.idleP50 = ratio(byTarget.switchboard.latencyMs.p50, byTarget.bare.latencyMs.p50)
  floor.idleP99 = ratio(byTarget.switchboard.latencyMs.p99, byTarget.bare.latencyMs.p99)
  report(
    {
      scenario: 'floor: idle latency',
      server: 'sb / bare',
      throughput: '-',
      p50: floor.idleP50,
      p99: floor.idleP99,
      notes: 'latency ratios Switchboard / bare (lower is better)',
    },
    { p50Ratio: floor.idleP50, p99Ratio: floor.idleP99 },
  )
}

async function snapshot(): Promise<void> {
  const plan = PLAN.snapshot
  const dir = scratchDir('snapshot')
  const dbPath = join(dir, 'realtime.db')
  try {
    info(`snapshot: filling ${fmt(plan.total)} events (${fmt(plan.entities)} entities on ${plan.channel})`)
    const fill = spawnJson('fill-state', [
      'bun',
      'bench/setup/fill-state.ts',
      JSON.stringify({ db: dbPath, total: plan.total, entities: plan.entities, channel: plan.channel, share: plan.share }),
    ])
    const filled = await fill.waitFor((l) => 'result' in l, LOADER_TIMEOUT_MS, 'result').finally(() => fill.stop(2000))
    await fill.exited
    if (filled.result.stateRows !== plan.entities) {
      throw new Error(`fill-state left ${filled.result.stateRows} entities on ${plan.channel}, expected ${plan.entities}`)
    }
    info(`snapshot: filled in ${filled.result.ms} ms; ${plan.warmup} + ${plan.runs} runs over WebSocket, then over HTTP`)
    const server = await startSwitchboard({ dir, dbPath, label: 'snapshot' })
    let r: any
    try {
      const meter = cpuMeter(server.pid)
      r = await runLoader('snapshot', 'snapshot', {
        host: server.host,
        port: server.port,
        url: server.url,
        channel: plan.channel,
        expected: plan.entities,
        warmup: plan.warmup,
        runs: plan.runs,
        timeoutMs: WAIT_TIMEOUT_MS,
      }, meter.mark)
      r.ws.serverCpuPct = meter.pct('ws:start', 'ws:end')
      r.http.serverCpuPct = meter.pct('http:start', 'http:end')
      r.stored = filled.result.stored
      r.onChannel = filled.result.onChannel
      r.fillMs = filled.result.ms
      r.serverRssKiB = memoryOf(server.pid).rssKiB
    } finally {
      await server.stop()
    }
    measured.snapshot = r
    const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`
    report(
      {
        scenario: 'snapshot ws',
        server: 'switchboard',
        throughput: `${fmt(r.entities)} entities, ${r.ws.parts} parts, ${mb(r.ws.bytes)}`,
        p50: r.ws.doneMs.p50,
        p95: r.ws.doneMs.p95,
        p99: r.ws.doneMs.p99,
        notes:
          `subscribe → done part; of ${fmt(r.stored)} stored (${fmt(r.onChannel)} on ${r.channel}); ${r.runs} runs; caught_up p50 ${r.ws.caughtUpMs.p50} p95 ${r.ws.caughtUpMs.p95}; ` +
          `first part p50 ${r.ws.firstPartMs.p50}; cold ${r.ws.coldMs} ms; cpu server ${pct(r.ws.serverCpuPct)}`,
      },
      { ...r, http: undefined },
    )
    report(
      {
        scenario: 'snapshot http',
        server: 'switchboard',
        throughput: `${fmt(r.entities)} entities, ${mb(r.http.bytes)}`,
        p50: r.http.ms.p50,
        p95: r.http.ms.p95,
        p99: r.http.ms.p99,
        notes: `GET /api/channels/${r.channel}/state until the body is read; ${r.runs} runs; cold ${r.http.coldMs} ms; cpu server ${pct(r.http.serverCpuPct)}`,
      },
      { ...r, ws: undefined },
    )
  } finally {
    removeScratch(dir)
  }
}

async function statecost(): Promise<void> {
  const plan = PLAN.statecost
  const label = { state: 'state', nostate: 'none', key: 'key' } as const
  const runs: Record<string, any[]> = { state: [], nostate: [], key: [] }
  // Rounds in turn (state, no state, key, state, …), each on a fresh server and database, so a
  // slow spell of the machine does not fall on one kind only.
  for (let round = 0; round < plan.rounds; round++) {
    for (const kind of plan.kinds) {
      info(`statecost: ${label[kind]}, round ${round + 1} of ${plan.rounds}: ${plan.ingest.senders} senders × ${plan.ingest.requestsPerSender} batches of ${plan.ingest.batchSize}`)
      const r = await withServer('switchboard', `statecost-${kind}`, async (server) => {
        const meter = cpuMeter(server.pid)
        const result = await runLoader(`statecost-${kind}`, 'ingest', { url: `${server.url}/ingest`, ...plan.ingest, kind, timeoutMs: LOADER_TIMEOUT_MS }, meter.mark)
        result.serverCpuPct = meter.pct('measure:start', 'measure:end')
        return result
      })
      runs[kind]!.push(r)
    }
  }
  const byKind: Record<string, any> = {}
  for (const kind of plan.kinds) {
    const all = runs[kind]!
    const eventsPerSec = Math.round(median(all.map((r) => r.eventsPerSec)))
    // The round whose throughput is the median (the upper one of two), for its latency and CPU.
    const mid = [...all].sort((a, b) => a.eventsPerSec - b.eventsPerSec)[all.length >> 1]
    const r = { kind, eventsPerSec, rounds: all.map((x) => x.eventsPerSec), median: mid, runs: all }
    byKind[kind] = r
    report(
      {
        scenario: `state cost: ${label[kind]}`,
        server: 'switchboard',
        throughput: `${fmt(eventsPerSec)} events/s`,
        p50: mid.requestLatencyMs.p50,
        p95: mid.requestLatencyMs.p95,
        p99: mid.requestLatencyMs.p99,
        notes:
          `${kind === 'state' ? 'agent.status, 1,000 agents' : kind === 'nostate' ? 'bench.status, no key' : 'bench.status + key'}; batches of ${mid.batchSize}; ` +
          `median of ${all.length} (${all.map((x) => fmt(x.eventsPerSec)).join(', ')}); cpu server ${pct(mid.serverCpuPct)} loader ${pct(mid.loaderCpuPct)}; latency per request`,
      },
      { ...r, runs: undefined },
    )
  }
  measured.statecost = byKind
  floor.stateCostRatio = ratio(byKind.state.eventsPerSec, byKind.nostate.eventsPerSec)
  floor.stateKeyRatio = ratio(byKind.key.eventsPerSec, byKind.nostate.eventsPerSec)
  const costPct = (r: number | null) => (typeof r === 'number' ? Math.round((1 - r) * 1000) / 10 : null)
  report(
    {
      scenario: 'ratio: state cost',
      server: 'state / none',
      throughput: `${floor.stateCostRatio}× events/s`,
      notes: `state costs ${costPct(floor.stateCostRatio)} % of ingest throughput; with an explicit key instead (no catalogue schema check) ${costPct(floor.stateKeyRatio)} %`,
    },
    { stateRatio: floor.stateCostRatio, stateCostPct: costPct(floor.stateCostRatio), keyRatio: floor.stateKeyRatio, keyCostPct: costPct(floor.stateKeyRatio) },
  )
}

async function ssefanout(): Promise<void> {
  const plan = PLAN.fanout
  const byTransport: Record<string, any> = {}
  for (const transport of PLAN.ssefanout.transports) {
    info(`ssefanout/${transport}: ${plan.subscribers} ${transport === 'sse' ? 'event streams' : 'WebSockets'}, batches of ${plan.batchSize}`)
    const r = await withServer('switchboard', `ssefanout-${transport}`, (server) => runFanout(server, `ssefanout-${transport}`, transport))
    byTransport[transport] = r
    report(
      {
        scenario: 'sse fanout',
        server: `sb ${transport}`,
        throughput: `${fmt(r.saturated.deliveredPerSec)} delivered/s`,
        p50: r.paced.latencyMs.p50,
        p95: r.paced.latencyMs.p95,
        p99: r.paced.latencyMs.p99,
        notes:
          `${r.subscribers} ${transport === 'sse' ? 'streams' : 'sockets'}; latency at ${r.paced.batchesPerSecond} batches/s; ` +
          `saturated p50 ${r.saturated.latencyMs.p50} p99 ${r.saturated.latencyMs.p99} ms; cpu server ${pct(r.saturated.serverCpuPct)} loader ${pct(r.saturated.loaderCpuPct)}; ` +
          `server RSS ${fmt(r.serverRssKiB / 1024)} MiB`,
      },
      { transport, ...r },
    )
  }
  measured.ssefanout = byTransport
  const { ws, sse } = byTransport
  floor.sseOverWs = ratio(sse.saturated.deliveredPerSec, ws.saturated.deliveredPerSec)
  floor.sseOverWsPacedP50 = ratio(sse.paced.latencyMs.p50, ws.paced.latencyMs.p50)
  floor.sseOverWsPacedP99 = ratio(sse.paced.latencyMs.p99, ws.paced.latencyMs.p99)
  report(
    {
      scenario: 'ratio: sse fanout',
      server: 'sse / ws',
      throughput: `${floor.sseOverWs}× delivered/s`,
      p50: floor.sseOverWsPacedP50,
      p99: floor.sseOverWsPacedP99,
      notes: 'ratios SSE / WebSocket (throughput: higher is better; latency columns: ratio, lower is better)',
    },
    { throughputRatio: floor.sseOverWs, pacedP50Ratio: floor.sseOverWsPacedP50, pacedP99Ratio: floor.sseOverWsPacedP99 },
  )
}

async function rpc(): Promise<void> {
  const plan = PLAN.rpc
  info(`rpc: ${plan.warmup} + ${plan.calls} sequential calls between two sockets`)
  const r = await withServer('switchboard', 'rpc', async (server) => {
    const meter = cpuMeter(server.pid)
    const result = await runLoader('rpc', 'rpc', { host: server.host, port: server.port, ...plan, timeoutMs: WAIT_TIMEOUT_MS }, meter.mark)
    result.serverCpuPct = meter.pct('measure:start', 'measure:end')
    return result
  })
  measured.rpc = r
  report(
    {
      scenario: 'rpc',
      server: 'switchboard',
      throughput: `${fmt(r.callsPerSec)} calls/s (one at a time)`,
      p50: r.roundTripMs.p50,
      p95: r.roundTripMs.p95,
      p99: r.roundTripMs.p99,
      notes: `call → result through the desk socket, ${r.calls} calls; ping → pong p50 ${r.pingMs.p50} p99 ${r.pingMs.p99} ms; cpu server ${pct(r.serverCpuPct)}`,
    },
    r,
  )
}

const RUNNERS: Record<Scenario, () => Promise<void>> = { fanout, ingest, connections, replay, idle, snapshot, statecost, ssefanout, rpc }

// ---------------------------------------------------------------------------------------------
// Targets (context for the reader; never a pass/fail of the run)

function targets(): Array<{ target: string; value: string; met: boolean | null }> {
  const out: Array<{ target: string; value: string; met: boolean | null }> = []
  const add = (target: string, value: number | null | undefined, met: (v: number) => boolean, unit = '') =>
    out.push({ target, value: typeof value === 'number' ? `${value}${unit}` : 'n/a', met: typeof value === 'number' ? met(value) : null })
  if (measured.fanout) {
    add('fan-out ≥ 0.8× bare', floor.fanoutThroughput, (v) => v >= 0.8, '×')
    add('fan-out p99 < 5 ms at the default rate', measured.fanout.switchboard.paced.latencyMs.p99, (v) => v < 5, ' ms')
  }
  if (measured.ingest) {
    add('ingest ≥ 100,000 events/s (batches of 100)', measured.ingest.batch100?.eventsPerSec, (v) => v >= 100_000, '/s')
    add('ingest ≥ 10,000 events/s (single)', measured.ingest.batch1?.eventsPerSec, (v) => v >= 10_000, '/s')
  }
  if (measured.idle) add('idle p99 < 1 ms', measured.idle.switchboard.latencyMs.p99, (v) => v < 1, ' ms')
  if (measured.connections) {
    const sb = measured.connections.switchboard
    add(`≤ 3 KiB per idle subscribed connection (at ${fmt(sb.count)})`, Math.round((sb.bytesPerConnection / 1024) * 100) / 100, (v) => v <= 3, ' KiB')
  }
  if (measured.replay) {
    add('replay ≥ 200,000 events/s (100k stored)', measured.replay['100k']?.eventsPerSec, (v) => v >= 200_000, '/s')
    add('replay ≥ 200,000 events/s (100k of 1M)', measured.replay['100k of 1M']?.eventsPerSec, (v) => v >= 200_000, '/s')
    add('replay with 1M stored no slower than with 100k', floor.replayLargeOverSmall, (v) => v >= 0.95, '×')
  }
  if (measured.snapshot) {
    const s = measured.snapshot
    const what = `${fmt(s.entities)} entities among ${fmt(s.stored)} events`
    add(`snapshot of ${what} < 100 ms (WebSocket, p95)`, s.ws.doneMs.p95, (v) => v < 100, ' ms')
    add(`snapshot of ${what} < 100 ms (HTTP, p95)`, s.http.ms.p95, (v) => v < 100, ' ms')
  }
  if (measured.statecost) {
    const cost = typeof floor.stateCostRatio === 'number' ? Math.round((1 - floor.stateCostRatio) * 1000) / 10 : null
    add('state costs ingest < 10 % of its throughput (batches of 100)', cost, (v) => v < 10, ' %')
  }
  if (measured.ssefanout) add('SSE fan-out ≥ 0.5× WebSocket', floor.sseOverWs, (v) => v >= 0.5, '×')
  if (measured.rpc) add('RPC round trip p99 < 2 ms', measured.rpc.roundTripMs.p99, (v) => v < 2, ' ms')
  return out
}

// ---------------------------------------------------------------------------------------------
// Machine

function machine() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8')
  const meminfo = readFileSync('/proc/meminfo', 'utf8')
  const git = (args: string[]) => Bun.spawnSync(['git', ...args], { cwd: ROOT }).stdout.toString().trim()
  return {
    cpu: /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round((Number(/^MemTotal:\s+(\d+)/m.exec(meminfo)?.[1] ?? totalmem() / 1024) / 1024 / 1024) * 10) / 10,
    kernel: release(),
    bun: Bun.version,
    commit: git(['rev-parse', '--short', 'HEAD']),
    dirty: git(['status', '--porcelain', '--', 'src']).length > 0,
    loadAvgAtStart: loadavg().map((l) => Math.round(l * 100) / 100),
  }
}

// ---------------------------------------------------------------------------------------------
// Main

let interrupted = false
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (interrupted) return
    interrupted = true
    process.stderr.write(`\n${signal}: stopping every benchmark process\n`)
    killAllNow()
    removeAllScratch()
    process.exit(130)
  })
}
process.on('exit', () => {
  killAllNow()
  removeAllScratch()
})

const startedAt = new Date()
const host = machine()
info(`machine: ${host.cpu}, ${host.cores} cores, ${host.memoryGiB} GiB, bun ${host.bun}, load ${host.loadAvgAtStart.join(' ')}`)
info(`scale ${SCALE}; scenarios: ${only.join(', ')}`)
if (profiling()) info(`BENCH_PROFILE: Switchboard runs under the CPU profiler (figures are not comparable); profiles go to ${PROFILE_DIR}`)
console.log(header())

for (const name of only as Scenario[]) {
  try {
    await RUNNERS[name]()
  } catch (error) {
    const message = String((error as Error)?.message ?? error)
    failures.push({ scenario: name, error: message })
    const row: Row = { scenario: name, server: '-', throughput: 'FAILED', notes: message.split('\n')[0]! }
    rows.push(row)
    console.log(formatRow(row))
    console.log(JSON.stringify({ scenario: name, error: message }))
    process.stderr.write(`${name} failed: ${message}\n`)
  } finally {
    await stopAll()
  }
}

const finishedAt = new Date()
const goals = targets()
console.log(`\n${header()}`)
for (const row of rows) console.log(formatRow(row))
console.log('\ntargets (context only):')
for (const t of goals) console.log(`  ${t.met === null ? '?' : t.met ? '✓' : '✗'} ${t.target}: ${t.value}`)
console.log(
  `\nscale ${SCALE}, ${((finishedAt.getTime() - startedAt.getTime()) / 1000).toFixed(1)} s; ${host.cpu}, ${host.cores} cores, bun ${host.bun}; ` +
    `load average ${host.loadAvgAtStart.join(' ')} at start, ${loadavg().map((l) => l.toFixed(2)).join(' ')} at end`,
)

const summary = {
  startedAt: startedAt.toISOString(),
  finishedAt: finishedAt.toISOString(),
  seconds: Math.round((finishedAt.getTime() - startedAt.getTime()) / 100) / 10,
  scale: SCALE,
  scenarios: only,
  profiling: profiling(),
  machine: { ...host, loadAvgAtEnd: loadavg().map((l) => Math.round(l * 100) / 100) },
  plan: PLAN,
  floor,
  targets: goals,
  results,
  failures,
}
const resultsDir = join(ROOT, 'bench', 'results')
mkdirSync(resultsDir, { recursive: true })
writeFileSync(join(resultsDir, 'latest.json'), `${JSON.stringify(summary, null, 2)}\n`)
if (SCALE === 1 && only.length === SCENARIOS.length && failures.length === 0 && !profiling()) {
  appendFileSync(join(resultsDir, 'history.jsonl'), `${JSON.stringify({ ...summary, plan: undefined })}\n`)
}
info(`wrote bench/results/latest.json${failures.length ? `; ${failures.length} scenario(s) failed` : ''}`)
process.exit(failures.length ? 1 : 0)
