/**
 * `switchboard serve` (the default command; also what `bun start` runs through src/main.ts): runs
 * Switchboard from environment variables and flags until SIGINT/SIGTERM.
 */
import { ConfigError, loadConfig, SETTINGS } from '../config'
import { createLogger, type Logger } from '../log'
import { createRealtimeServer } from '../server'
import { consoleIo, type Env, EXIT, type Io } from './common'

const flagOf = (setting: string) => `--${setting.slice('REALTIME_'.length).toLowerCase().replaceAll('_', '-')}`

export function serveUsage(): string {
  const width = Math.max(...SETTINGS.map((name) => flagOf(name).length)) + 11
  const flags = SETTINGS.map((name) => `  ${`${flagOf(name)} <value>`.padEnd(width)}${name}`).join('\n')
  return `usage: switchboard [serve] [--<setting> <value> …]

Runs the service until SIGINT or SIGTERM, then closes every socket with 1001, commits pending
writes, closes the database and exits 0. Logs are JSON lines on stdout; the first one after the
start is {"event":"listening","url":…}.

Every setting is an environment variable; a flag overrides it (see the README's settings table):
${flags}
  -h, --help${' '.repeat(width - 10)}this text

exit codes: 0 stopped by a signal, 1 could not start (e.g. every port taken), 2 invalid setting`
}

export type Signal = 'SIGINT' | 'SIGTERM'

export interface ServeOptions {
  /** Where the boot lines (`invalid_config`, `shutdown`, `start_failed`) go. Default: JSON on stdout. */
  log?: Logger
  /** Registers the stop handler; returns its removal. Default: the process's SIGINT and SIGTERM. */
  onSignal?: (handler: (signal: Signal) => void) => () => void
}

function processSignals(handler: (signal: Signal) => void): () => void {
  const listeners = (['SIGINT', 'SIGTERM'] as const).map((signal) => {
    const listener = () => handler(signal)
    process.on(signal, listener)
    return () => process.off(signal, listener)
  })
  return () => listeners.forEach((off) => off())
}

/**
 * Starts the service and resolves with the exit code once it has stopped: 0 after a signal,
 * 1 when it could not start, 2 for an invalid setting.
 */
export async function runServe(argv: string[], env: Env, io: Io = consoleIo, options: ServeOptions = {}): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    io.out(serveUsage())
    return EXIT.ok
  }
  const bootLog = options.log ?? createLogger('info')
  let config
  try {
    config = loadConfig(env, argv)
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error
    bootLog.error('invalid_config', { message: error.message })
    return EXIT.usage
  }

  let server
  try {
    server = createRealtimeServer(config)
  } catch (error) {
    bootLog.error('start_failed', { message: (error as Error).message })
    return EXIT.failed
  }
  let stopped: (code: number) => void = () => {}
  const done = new Promise<number>((resolve) => (stopped = resolve))
  // The handler goes in before `start` prints `listening`: a supervisor may signal the moment it sees it.
  let starting: Promise<unknown> = Promise.resolve()
  let stopping = false
  const off = (options.onSignal ?? processSignals)(async (signal) => {
    if (stopping) return
    stopping = true
    bootLog.info('shutdown', { signal })
    await starting.catch(() => {})
    await server.stop()
    stopped(EXIT.ok)
  })

  starting = server.start()
  try {
    await starting
  } catch (error) {
    off()
    bootLog.error('start_failed', { message: (error as Error).message })
    return EXIT.failed
  }
  const code = await done
  off()
  return code
}
