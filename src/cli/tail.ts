/**
 * `switchboard tail <channel>`: follows a channel live in the terminal through the typed client
 * (which reconnects and resumes on its own), one line per event, until SIGINT/SIGTERM.
 */
import { createRealtimeClient } from '../client'
import type { ConnectionInfo } from '../client/types'
import { channelArgument, CONNECTION_HELP, CONNECTION_OPTIONS, consoleIo, type Env, EXIT, formatEvent, guard, type Io, parseCommand, type PrintableEvent, target, wholeNumber } from './common'

const USAGE_LINE = 'usage: switchboard tail <channel> [--since N] [--json]'

export const TAIL_USAGE = `${USAGE_LINE}

Follows a channel live, one line per event on stdout:
  time  #seq  type  channel  payload (compact JSON, cut at 200 characters)
Connection news (following, connection lost, reconnected, events pruned) goes to stderr. After a
lost connection it reconnects with backoff and resumes from the last seq shown: no gap, no
duplicate. Ctrl-C (SIGINT) or SIGTERM stops it with exit code 0.

  <channel>        a channel id, e.g. agent:my-coder-agent or org:local
  --since <seq>    first replay the stored events after this seq (0: everything stored), then follow
  --json           one JSON object per line: the event frame as the WebSocket delivers it
  -h, --help       this text

${CONNECTION_HELP}

exit codes: 0 stopped by Ctrl-C/SIGTERM, 1 unreachable at the start or refused (bad token,
forbidden channel, session replaced), 2 usage error`

export interface TailOptions {
  /** Aborting it stops the tail (exit 0). Default: the process's SIGINT and SIGTERM. */
  stop?: AbortSignal
}

function interrupted(): { signal: AbortSignal; release(): void } {
  const controller = new AbortController()
  const abort = () => controller.abort()
  process.on('SIGINT', abort)
  process.on('SIGTERM', abort)
  return {
    signal: controller.signal,
    release() {
      process.off('SIGINT', abort)
      process.off('SIGTERM', abort)
    },
  }
}

/** Error frames that mean the subscription itself was refused: waiting longer cannot help. */
const REFUSED = /^(forbidden|invalid_channel|too_many_subscriptions|not_authenticated):/

export async function runTail(argv: string[], env: Env, io: Io = consoleIo, options: TailOptions = {}): Promise<number> {
  return guard(io, 'tail', USAGE_LINE, async () => {
    const { values, positionals } = parseCommand({
      args: argv,
      allowPositionals: true,
      options: {
        ...CONNECTION_OPTIONS,
        since: { type: 'string' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h' },
      },
    })
    if (values.help) {
      io.out(TAIL_USAGE)
      return EXIT.ok
    }
    const channel = channelArgument(positionals, 'tail')
    const since = wholeNumber(values.since, '--since')
    const service = target(values, env)

    const signals = options.stop ? undefined : interrupted()
    const stop = options.stop ?? signals!.signal
    let finish: (code: number) => void = () => {}
    const finished = new Promise<number>((resolve) => (finish = resolve))
    const onAbort = () => finish(EXIT.ok)
    stop.addEventListener('abort', onAbort, { once: true })
    if (stop.aborted) finish(EXIT.ok)

    // `--since 0` asks for whatever is stored: that older events were pruned is no news then.
    let quietTruncation = since === 0
    const client = createRealtimeClient({
      url: service.url,
      ...(service.token ? { token: service.token } : {}),
      kind: 'cli',
      fetch: service.fetch,
      onTruncated: (id) => {
        if (quietTruncation) return
        io.err(`note: some events of ${id} were pruned before they could be shown`)
      },
    })
    try {
      // One HTTP round trip first: an unreachable server, a refused token or a forbidden channel is
      // reported at once, instead of being retried in the background forever.
      const preflight = client.history(channel, { since: 0, limit: 1 }).then(
        () => null,
        (error: unknown) => service.describe(error),
      )
      const refused = await Promise.race([preflight, finished.then(() => null)])
      if (refused !== null) {
        io.err(`switchboard tail: ${refused}`)
        return EXIT.failed
      }
      if (stop.aborted) return EXIT.ok

      const print = (event: PrintableEvent) => io.out(values.json ? JSON.stringify(event) : formatEvent(event))
      client.subscribe(channel, print, { ...(since === undefined ? {} : { since }), onOther: print })

      let following = false
      let previous: ConnectionInfo = client.state
      const watch = (state: ConnectionInfo) => {
        const before = previous
        previous = state
        if (!following && state.epoch !== null && state.status === 'open') {
          following = true
          const from = since === undefined ? `live, after seq ${client.cursor(channel)}` : `replaying after seq ${since}, then live`
          io.err(`following ${channel} at ${service.url} (${from}); Ctrl-C to stop`)
          // The first `subscribed` reports its truncation right after this state change.
          queueMicrotask(() => (quietTruncation = false))
        }
        if (state.status === 'offline') {
          io.err(`switchboard tail: the server refused the connection (${state.lastError ?? 'no reason given'})`)
          finish(EXIT.failed)
          return
        }
        if (state.lastError !== before.lastError && state.lastError && REFUSED.test(state.lastError)) {
          io.err(`switchboard tail: the server refused the subscription (${state.lastError})`)
          finish(EXIT.failed)
          return
        }
        if (state.status === 'reconnecting' && before.status === 'open') {
          io.err(`connection lost (${state.lastError ?? 'no reason given'}); reconnecting…`)
        } else if (state.status === 'open' && before.status !== 'open' && state.reconnects > 0) {
          const fallback = state.transport && state.transport !== 'websocket' ? ` (${state.transport}: the WebSocket cannot be opened)` : ''
          io.err(`reconnected${fallback}; resuming after seq ${client.cursor(channel)}`)
        } else if (state.transport === 'websocket' && before.transport && before.transport !== 'websocket') {
          io.err('back on the WebSocket')
        }
      }
      const offState = client.onState(watch)
      watch(client.state)
      const code = await finished
      offState()
      return code
    } finally {
      stop.removeEventListener('abort', onAbort)
      signals?.release()
      client.close()
    }
  })
}
