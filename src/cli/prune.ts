/**
 * `switchboard prune`: runs the retention job once on the database file, as the service does at
 * startup and every REALTIME_PRUNE_INTERVAL_SECONDS. Safe beside a running service: SQLite WAL
 * lets both use the file, and the job deletes in small transactions.
 */
import { existsSync } from 'node:fs'
import { ConfigError, loadConfig } from '../config'
import { openDatabase } from '../db/client'
import { silentLogger } from '../log'
import { RetentionJob } from '../retention'
import { SqliteEventStore } from '../store/sqlite-event-store'
import { consoleIo, type Env, EXIT, guard, type Io, parseCommand, UsageError } from './common'

const USAGE_LINE = 'usage: switchboard prune [--db <path>] [--retention-hours <h>] [--json]'

export const PRUNE_USAGE = `${USAGE_LINE}

Removes the events whose timestamp is older than the retention window from the database file,
exactly as the service's own retention job does (the latest event of each live entity is kept),
and prints how many it removed. Safe while the service runs on the same file.

  --db <path>              the SQLite file (default: REALTIME_DB, else ./data/realtime.db)
  --retention-hours <h>    the window (default: REALTIME_RETENTION_HOURS, else 24; fractions allowed)
  --json                   one JSON object: {"pruned":n,"cutoff":ms,"db":path}
  -h, --help               this text

exit codes: 0 ok (also when nothing was old enough), 1 no such database or it could not be
pruned, 2 usage error or invalid setting`

export async function runPrune(argv: string[], env: Env, io: Io = consoleIo, now: () => number = Date.now): Promise<number> {
  return guard(io, 'prune', USAGE_LINE, async () => {
    const { values, positionals } = parseCommand({
      args: argv,
      allowPositionals: true,
      options: {
        db: { type: 'string' },
        'retention-hours': { type: 'string' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h' },
      },
    })
    if (values.help) {
      io.out(PRUNE_USAGE)
      return EXIT.ok
    }
    if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`)
    let config
    try {
      // Only these two settings are read (validated as the service validates them); no secrets.
      const flags = [
        ...(values.db !== undefined ? ['--db', values.db] : []),
        ...(values['retention-hours'] !== undefined ? ['--retention-hours', values['retention-hours']] : []),
      ]
      config = loadConfig({ REALTIME_DB: env.REALTIME_DB, REALTIME_RETENTION_HOURS: env.REALTIME_RETENTION_HOURS }, flags)
    } catch (error) {
      if (error instanceof ConfigError) throw new UsageError(error.message)
      throw error
    }
    const { dbPath, retentionHours } = config
    if (dbPath === ':memory:') throw new UsageError('an in-memory database (:memory:) keeps nothing to prune')
    if (!existsSync(dbPath)) {
      io.err(`switchboard prune: no database at ${dbPath} (set --db or REALTIME_DB)`)
      return EXIT.failed
    }

    const at = now()
    const retentionMs = retentionHours * 3_600_000
    let pruned: number
    try {
      const store = new SqliteEventStore(openDatabase(dbPath))
      try {
        pruned = await new RetentionJob(store, retentionMs, retentionMs, silentLogger, () => at).run()
      } finally {
        store.close()
      }
    } catch (error) {
      io.err(`switchboard prune: could not prune ${dbPath}: ${(error as Error).message}`)
      return EXIT.failed
    }
    const cutoff = at - retentionMs
    if (values.json) io.out(JSON.stringify({ pruned, cutoff, db: dbPath }))
    else io.out(`pruned ${pruned} event${pruned === 1 ? '' : 's'} older than ${new Date(cutoff).toISOString()} (${retentionHours} h) from ${dbPath}`)
    return EXIT.ok
  })
}
