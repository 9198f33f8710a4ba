/**
 * `switchboard publish <type> --payload '{…}'`: sends one event to a running service
 * (POST /ingest through the typed client) and prints the server's {stored, duplicates}.
 */
import { createHttp, unwrap } from '../client/http'
import type { IngestResult } from '../model/http'
import { CONNECTION_HELP, CONNECTION_OPTIONS, consoleIo, type Env, EXIT, guard, type Io, parseCommand, target, UsageError } from './common'

const USAGE_LINE = "usage: switchboard publish <type> [--payload '{…}'] [options]"

export const PUBLISH_USAGE = `${USAGE_LINE}

Publishes one event, filling in what the in-process publish fills in, and prints the server's
answer as one JSON line: {"stored":1,"duplicates":0,"id":"…"} (duplicates: 1 when that id was
already stored).

  <type>                  dotted lowercase event type, e.g. agent.status or deploy.finished
  --payload <json>        the payload, a JSON object (default: {}); catalogue types must match their schema

options:
  --org <orgId>           default: the token's \`org\` claim (a JWT), else REALTIME_ORG_ID, else local
  --user <userId>         default: the token's \`sub\` claim (a JWT), else REALTIME_USER_ID, else local
  --channel <channelId>   a channel to publish to instead of the derived ones; repeat for several
  --key <entity>          the entity the event describes, for channel state
  --id <uuid>             the event id, the dedup key (default: a random UUID)
  --timestamp <time>      Unix milliseconds or an ISO date (default: now)
  -h, --help              this text

${CONNECTION_HELP}

exit codes: 0 accepted (stored or duplicate), 1 refused by the server (its message is printed)
or unreachable, 2 usage error (including a payload that is not a JSON object)`

export async function runPublish(argv: string[], env: Env, io: Io = consoleIo): Promise<number> {
  return guard(io, 'publish', USAGE_LINE, async () => {
    const { values, positionals } = parseCommand({
      args: argv,
      allowPositionals: true,
      options: {
        ...CONNECTION_OPTIONS,
        payload: { type: 'string' },
        org: { type: 'string' },
        user: { type: 'string' },
        channel: { type: 'string', multiple: true },
        key: { type: 'string' },
        id: { type: 'string' },
        timestamp: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    })
    if (values.help) {
      io.out(PUBLISH_USAGE)
      return EXIT.ok
    }
    const [type, ...extra] = positionals
    if (!type) throw new UsageError('missing the event type, e.g. `switchboard publish agent.status --payload {…}`')
    if (extra.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(extra[0])} (quote the payload: --payload '{…}')`)

    const service = target(values, env)
    const claims = jwtClaims(service.token)
    const event = {
      id: values.id ?? crypto.randomUUID(),
      type,
      orgId: values.org ?? claims.org ?? (env.REALTIME_ORG_ID || 'local'),
      userId: values.user ?? claims.sub ?? (env.REALTIME_USER_ID || 'local'),
      timestamp: parseTimestamp(values.timestamp),
      payload: parsePayload(values.payload),
      ...(values.channel ? { channels: values.channel } : {}),
      ...(values.key !== undefined ? { key: values.key } : {}),
    }
    const http = createHttp(service.url, async () => service.token, service.fetch)
    let result: IngestResult
    try {
      result = unwrap(await http.ingest.post(event as never)) as IngestResult
    } catch (error) {
      io.err(`switchboard publish: ${service.describe(error)}`)
      return EXIT.failed
    }
    io.out(JSON.stringify({ stored: result.stored, duplicates: result.duplicates, id: event.id }))
    return EXIT.ok
  })
}

function parsePayload(text: string | undefined): Record<string, unknown> {
  if (text === undefined) return {}
  let payload: unknown
  try {
    payload = JSON.parse(text)
  } catch (error) {
    throw new UsageError(`--payload is not valid JSON (${(error as Error).message}): ${JSON.stringify(text.length > 80 ? `${text.slice(0, 79)}…` : text)}`)
  }
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
    throw new UsageError(`--payload must be a JSON object like '{"agentId":"a1"}', not ${Array.isArray(payload) ? 'an array' : JSON.stringify(payload)}`)
  }
  return payload as Record<string, unknown>
}

function parseTimestamp(text: string | undefined): number {
  if (text === undefined) return Date.now()
  const ms = /^-?\d+$/.test(text.trim()) ? Number(text) : Date.parse(text)
  if (!Number.isSafeInteger(ms)) throw new UsageError(`--timestamp must be Unix milliseconds or an ISO date, not ${JSON.stringify(text)}`)
  return ms
}

/**
 * The `org` and `sub` claims of a JWT, read without verifying it (the server verifies): the
 * organisation and user the server will require. An API key (or no token) has none.
 */
function jwtClaims(token: string | undefined): { org?: string; sub?: string } {
  const body = token?.split('.')[1]
  if (!body || token!.split('.').length !== 3) return {}
  try {
    const claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as Record<string, unknown>
    return {
      ...(typeof claims.org === 'string' ? { org: claims.org } : {}),
      ...(typeof claims.sub === 'string' ? { sub: claims.sub } : {}),
    }
  } catch {
    return {}
  }
}
