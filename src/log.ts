/**
 * JSON-line logs: `{"ts","level","event",...fields}` on stdout, one object per line, so they can be
 * searched by event name. Never pass a token or key as a field.
 */
export type Level = 'debug' | 'info' | 'warn' | 'error'

export interface Logger {
  log(level: Level, event: string, fields?: Record<string, unknown>): void
  info(event: string, fields?: Record<string, unknown>): void
  warn(event: string, fields?: Record<string, unknown>): void
  error(event: string, fields?: Record<string, unknown>): void
}

const RANK: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 }

export function createLogger(
  minLevel: Level = 'info',
  write: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
): Logger {
  const log = (level: Level, event: string, fields: Record<string, unknown> = {}) => {
    if (RANK[level] < RANK[minLevel]) return
    write(JSON.stringify({ ts: new Date().toISOString(), level, event, ...fields }))
  }
  return {
    log,
    info: (event, fields) => log('info', event, fields),
    warn: (event, fields) => log('warn', event, fields),
    error: (event, fields) => log('error', event, fields),
  }
}

export const silentLogger: Logger = createLogger('error', () => {})
