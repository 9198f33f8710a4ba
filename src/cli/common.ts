/**
 * What the `switchboard` subcommands share: argument parsing with plain messages, the exit codes,
 * the service's address and token, error wording, and how an event is printed.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { RealtimeHttpError } from '../client/http'
import { isChannelId } from '../model/channels'
import type { WireEvent } from '../model/http'
import type { Io } from './keys'

export type { Io }
export type Env = Record<string, string | undefined>

/** 0 ok, 1 failed (server error, unreachable, refused), 2 usage error. */
export const EXIT = { ok: 0, failed: 1, usage: 2 } as const

export const consoleIo: Io = {
  out: (line) => console.log(line),
  err: (line) => console.error(line),
}

/** A mistake in the command line: printed with the command's usage line, exit code 2. */
export class UsageError extends Error {}

/** Node's parseArgs, strict, with its errors reworded plainly as UsageErrors. */
export function parseCommand<T extends ParseArgsConfig>(config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config)
  } catch (error) {
    const { code, message } = error as { code?: string; message: string }
    const quoted = /'([^']*)'/.exec(message)?.[1]
    switch (code) {
      case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
        throw new UsageError(`unknown option ${quoted ?? message}`)
      case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
        throw new UsageError(`unexpected argument ${JSON.stringify(quoted ?? message)}`)
      case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE': {
        const flag = quoted?.split(/[ =]/)[0] ?? ''
        throw new UsageError(message.includes('does not take') ? `option ${flag} takes no value` : `option ${flag} needs a value`)
      }
      default:
        throw new UsageError(message)
    }
  }
}

/** `--since 12` → 12; refuses anything but a whole number ≥ min. */
export function wholeNumber(value: string | undefined, flag: string, min = 0): number | undefined {
  if (value === undefined) return undefined
  const n = Number(value)
  if (value.trim() === '' || !Number.isSafeInteger(n) || n < min) throw new UsageError(`${flag} must be a whole number ≥ ${min}, not ${JSON.stringify(value)}`)
  return n
}

/**
 * Runs a command body: a UsageError → its message, the usage line and exit 2; any other error →
 * its message in plain words and exit 1.
 */
export async function guard(io: Io, command: string, usageLine: string, run: () => Promise<number> | number): Promise<number> {
  try {
    return await run()
  } catch (error) {
    if (error instanceof UsageError) {
      io.err(`switchboard ${command}: ${error.message}`)
      io.err(`${usageLine}  (--help for details)`)
      return EXIT.usage
    }
    io.err(`switchboard ${command}: ${error instanceof Error ? error.message : String(error)}`)
    return EXIT.failed
  }
}

/** The running service a client command talks to. */
export interface Target {
  url: string
  token: string | undefined
  /** fetch, remembering why the last request could not reach the server at all. */
  fetch: typeof fetch
  /** Turns an error of a client call into a sentence. */
  describe(error: unknown): string
}

export const CONNECTION_OPTIONS = {
  url: { type: 'string' },
  token: { type: 'string' },
} as const

export const CONNECTION_HELP = `connection:
  --url <url>       the service (default: REALTIME_URL, else http://127.0.0.1:$REALTIME_PORT,
                    else http://127.0.0.1:3693)
  --token <token>   REALTIME_AUTH=jwt: a user's JWT or an API key (default: REALTIME_TOKEN)`

/** --url / --token, else the environment. */
export function target(values: { url?: string; token?: string }, env: Env): Target {
  const raw = values.url ?? (env.REALTIME_URL || `http://127.0.0.1:${env.REALTIME_PORT || 3693}`)
  let parsed: URL
  try {
    parsed = new URL(raw)
  } catch {
    throw new UsageError(`--url ${JSON.stringify(raw)} is not a URL (e.g. http://127.0.0.1:3693)`)
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new UsageError(`--url must be an http:// or https:// address, not ${JSON.stringify(raw)}`)
  }
  const url = raw.replace(/\/+$/, '')
  const token = values.token ?? (env.REALTIME_TOKEN || undefined)
  let networkError: unknown
  const fetcher = (async (input: RequestInfo | URL, init?: RequestInit) => {
    try {
      const response = await fetch(input, init)
      networkError = undefined
      return response
    } catch (error) {
      networkError = error
      throw error
    }
  }) as typeof fetch
  return {
    url,
    token,
    fetch: fetcher,
    describe(error) {
      // Eden turns a failed fetch into an answer with status 503; what really happened is kept here.
      if (networkError !== undefined && error instanceof RealtimeHttpError && error.code === 'http_error') {
        return `cannot reach Switchboard at ${url}: ${networkReason(networkError)}. Is it running? (set --url, or REALTIME_PORT)`
      }
      if (error instanceof RealtimeHttpError) {
        if (error.code === 'http_error') return `${url} answered HTTP ${error.status}, not as a Switchboard service would`
        if (error.status === 401) {
          return `the server refused the credentials: ${error.message} (pass --token or set REALTIME_TOKEN)`
        }
        return `the server refused (${error.status} ${error.code}): ${error.message}`
      }
      return error instanceof Error ? error.message : String(error)
    },
  }
}

function networkReason(error: unknown): string {
  const { code, message } = (error ?? {}) as { code?: string; message?: string }
  switch (code) {
    case 'ECONNREFUSED':
      return 'connection refused'
    case 'ENOTFOUND':
      return 'host not found'
    case 'ETIMEDOUT':
      return 'timed out'
    case 'ECONNRESET':
      return 'connection reset'
    default:
      return message ?? String(error)
  }
}

/** The fields `tail` and `history` print of an event (a frame or a history entry). */
export type PrintableEvent = Omit<WireEvent, 'channels'>

/** The one positional argument of `tail` and `history`: a channel id. */
export function channelArgument(positionals: string[], command: string): string {
  const [channel, ...extra] = positionals
  if (!channel) throw new UsageError(`missing the channel id, e.g. \`switchboard ${command} agent:my-coder-agent\``)
  if (extra.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(extra[0])}`)
  if (!isChannelId(channel)) throw new UsageError(`${JSON.stringify(channel)} is not a channel id (<kind>:<name>, e.g. agent:my-coder-agent)`)
  return channel
}

/** Longest payload shown on a human-readable line; `--json` prints it whole. */
export const PAYLOAD_CHARS = 200

/** `2025-11-22T10:13:20.000Z  #42  agent.completed  agent:my-coder-agent  {"agentId":"a1",…}` */
export function formatEvent(event: PrintableEvent, channelId = event.channelId): string {
  const time = Number.isFinite(event.timestamp) ? new Date(event.timestamp).toISOString() : String(event.timestamp)
  let payload = JSON.stringify(event.payload)
  if (payload.length > PAYLOAD_CHARS) payload = `${payload.slice(0, PAYLOAD_CHARS - 1)}…`
  const key = event.key === undefined ? '' : `  key=${event.key}`
  return `${time}  #${event.seq}  ${event.type}  ${channelId ?? '-'}${key}  ${payload}`
}

