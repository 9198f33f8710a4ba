/**
 * `switchboard history <channel>`: prints a channel's stored events (GET /api/events/since through
 * the typed client), oldest first, one line each.
 */
import { createHttp, unwrap } from '../client/http'
import type { HistoryPage } from '../model/http'
import { channelArgument, CONNECTION_HELP, CONNECTION_OPTIONS, consoleIo, type Env, EXIT, formatEvent, guard, type Io, parseCommand, target, wholeNumber } from './common'

const USAGE_LINE = 'usage: switchboard history <channel> [--since N] [--limit N] [--json]'
/** The server's largest page. */
const PAGE = 1000

export const HISTORY_USAGE = `${USAGE_LINE}

Prints the stored events of a channel with a seq above --since, oldest first, one line each:
  time  #seq  type  channel  payload
A note on stderr says when more events follow (and the --since to get them), or when events
after --since were already pruned.

  <channel>        a channel id, e.g. agent:my-coder-agent or org:local
  --since <seq>    only events after this seq (default: 0, everything stored)
  --limit <n>      at most this many events (default: 100); pages are fetched as needed
  --json           one JSON object per line, the event as the HTTP API returns it
  -h, --help       this text

${CONNECTION_HELP}

exit codes: 0 ok (also when there are no events), 1 refused by the server or unreachable,
2 usage error`

export async function runHistory(argv: string[], env: Env, io: Io = consoleIo): Promise<number> {
  return guard(io, 'history', USAGE_LINE, async () => {
    const { values, positionals } = parseCommand({
      args: argv,
      allowPositionals: true,
      options: {
        ...CONNECTION_OPTIONS,
        since: { type: 'string' },
        limit: { type: 'string' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h' },
      },
    })
    if (values.help) {
      io.out(HISTORY_USAGE)
      return EXIT.ok
    }
    const channel = channelArgument(positionals, 'history')
    let since = wholeNumber(values.since, '--since') ?? 0
    let remaining = wholeNumber(values.limit, '--limit', 1) ?? 100

    const service = target(values, env)
    const http = createHttp(service.url, async () => service.token, service.fetch)
    let printed = 0
    let page: HistoryPage
    try {
      for (;;) {
        const query = { channel, since, limit: Math.min(remaining, PAGE) }
        page = unwrap(await http.api.events.since.get({ query })) as HistoryPage
        if (page.truncated && printed === 0 && since > 0) {
          io.err(`note: events of ${channel} after seq ${since} were already pruned; starting from the oldest one stored`)
        }
        for (const event of page.events) io.out(values.json ? JSON.stringify(event) : formatEvent(event, channel))
        printed += page.events.length
        remaining -= page.events.length
        since = page.nextSeq
        if (!page.hasMore || remaining <= 0 || page.events.length === 0) break
      }
    } catch (error) {
      io.err(`switchboard history: ${service.describe(error)}`)
      return EXIT.failed
    }
    if (printed === 0) io.err(`no events in ${channel} after seq ${values.since ?? 0} (newest seq stored: ${page.lastSeq})`)
    else if (page.hasMore) io.err(`more events follow: switchboard history ${channel} --since ${page.nextSeq}`)
    return EXIT.ok
  })
}
