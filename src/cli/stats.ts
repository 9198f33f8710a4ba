/**
 * `switchboard stats`: the service's health figures (GET /health) plus its `stats` answer over the
 * WebSocket (request('stats') of the typed client): last seq, epoch and whatever else it reports.
 */
import { createRealtimeClient } from '../client'
import type { ConnectionInfo } from '../client/types'
import type { HealthBody } from '../model/http'
import { CONNECTION_HELP, CONNECTION_OPTIONS, consoleIo, type Env, EXIT, guard, type Io, parseCommand, target, UsageError, wholeNumber } from './common'

const USAGE_LINE = 'usage: switchboard stats [--json]'

export const STATS_USAGE = `${USAGE_LINE}

Prints the service's figures: status, open sockets (this command's own included), channels with
subscribers, events stored, uptime (from GET /health), then the newest seq, the database epoch
and any other figure of the WebSocket \`stats\` request.

  --json               one JSON object: the /health body merged with the stats answer
  --timeout <ms>       how long to wait for the WebSocket and its answer (default: 5000)
  -h, --help           this text

${CONNECTION_HELP}

exit codes: 0 ok, 1 unreachable or refused (the health figures are still printed when only the
WebSocket part failed), 2 usage error`

/** Shown by the socket answer but meaningless for this command's own, unsubscribed socket. */
const OWN_SOCKET_FIELDS = new Set(['subscriptions', 'entities'])

export async function runStats(argv: string[], env: Env, io: Io = consoleIo): Promise<number> {
  return guard(io, 'stats', USAGE_LINE, async () => {
    const { values, positionals } = parseCommand({
      args: argv,
      allowPositionals: true,
      options: {
        ...CONNECTION_OPTIONS,
        json: { type: 'boolean', default: false },
        timeout: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    })
    if (values.help) {
      io.out(STATS_USAGE)
      return EXIT.ok
    }
    if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`)
    const timeoutMs = wholeNumber(values.timeout, '--timeout', 1) ?? 5000
    const service = target(values, env)

    const client = createRealtimeClient({
      url: service.url,
      ...(service.token ? { token: service.token } : {}),
      kind: 'cli',
      fetch: service.fetch,
      reconnect: false,
      heartbeat: false,
      polling: false,
      ping: { intervalMs: 60_000, timeoutMs },
      requestTimeoutMs: timeoutMs,
    })
    try {
      let health: HealthBody
      try {
        health = await client.health()
      } catch (error) {
        io.err(`switchboard stats: ${service.describe(error)}`)
        return EXIT.failed
      }
      let stats: Record<string, unknown> = {}
      let failure: string | null = null
      try {
        await opened(client.state, client.onState, timeoutMs)
        stats = await client.request<Record<string, unknown>>('stats')
      } catch (error) {
        failure = (error as Error).message
      }
      const figures: Record<string, unknown> = { ...health, ...stats }
      for (const field of OWN_SOCKET_FIELDS) delete figures[field]
      if (values.json) io.out(JSON.stringify({ url: service.url, ...figures }))
      else for (const line of describe(service.url, figures)) io.out(line)
      if (failure !== null) {
        io.err(`switchboard stats: only the health figures: the WebSocket part failed (${failure})`)
        return EXIT.failed
      }
      return EXIT.ok
    } finally {
      client.close()
    }
  })
}

/** Resolves once the socket is open and authenticated; rejects when the client gives up or on timeout. */
function opened(initial: ConnectionInfo, onState: (listener: (state: ConnectionInfo) => void) => () => void, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => settle(new Error(`no WebSocket within ${timeoutMs} ms`)), timeoutMs)
    const off = onState(check)
    function settle(error?: Error) {
      clearTimeout(timer)
      off()
      if (error) reject(error)
      else resolve()
    }
    function check(state: ConnectionInfo) {
      if (state.status === 'open' && state.transport === 'websocket') settle()
      else if (state.status === 'offline' || state.status === 'closed') settle(new Error(state.lastError ?? 'the connection was refused'))
    }
    check(initial)
  })
}

const LABELS: Record<string, string> = {
  status: 'status',
  connections: 'connections',
  channels: 'channels',
  eventsStored: 'events stored',
  uptime: 'uptime',
  lastSeq: 'last seq',
  epoch: 'epoch',
}

function describe(url: string, figures: Record<string, unknown>): string[] {
  const rows: Array<[string, string]> = [['url', url]]
  for (const [field, value] of Object.entries(figures)) {
    const label = LABELS[field] ?? field
    if (field === 'uptime' && typeof value === 'number') rows.push([label, value < 60 ? `${value} s` : `${duration(value)} (${value} s)`])
    else rows.push([label, typeof value === 'string' || typeof value === 'number' ? String(value) : JSON.stringify(value)])
  }
  const width = Math.max(...rows.map(([label]) => label.length)) + 2
  return rows.map(([label, value]) => `${label.padEnd(width)}${value}`)
}

function duration(seconds: number): string {
  const d = Math.floor(seconds / 86_400)
  const h = Math.floor((seconds % 86_400) / 3600)
  const m = Math.floor((seconds % 3600) / 60)
  const s = seconds % 60
  return [d && `${d}d`, (d || h) && `${h}h`, (d || h || m) && `${m}m`, `${s}s`].filter(Boolean).join(' ')
}
