import { Database } from 'bun:sqlite'
import { mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { drizzle } from 'drizzle-orm/bun-sqlite'
import { migrate } from 'drizzle-orm/bun-sqlite/migrator'
import * as schema from './schema'

export type Db = ReturnType<typeof drizzle<typeof schema>>

/** The generated migrations, found relative to this file so an embedding program needs no setup. */
const MIGRATIONS = join(import.meta.dir, '..', '..', 'drizzle')

export interface OpenedDatabase {
  sqlite: Database
  db: Db
}

/**
 * Opens (creating if needed) the SQLite file and brings its tables up to date.
 * WAL lets readers run beside the writer; `synchronous = NORMAL` makes every commit durable
 * against a crash or kill of this process (the OS holds the WAL), trading only the last
 * transactions on power loss (fsync happens at checkpoints) for a much faster commit.
 */
/** The default page cache: replays and snapshots of large logs read pages scattered through it. */
export const DEFAULT_CACHE_MB = 64

export function openDatabase(path: string, cacheMb: number = DEFAULT_CACHE_MB): OpenedDatabase {
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
  const sqlite = new Database(path, { create: true, strict: true })
  sqlite.run('PRAGMA journal_mode = WAL')
  sqlite.run('PRAGMA synchronous = NORMAL')
  // Checkpoint every 16 384 pages (64 MiB) rather than 1 000: hot index pages are then copied into
  // the database once per checkpoint instead of many times, a third more ingest (BENCHMARKS.md);
  // the log is truncated back to 64 MiB after each checkpoint.
  sqlite.run('PRAGMA wal_autocheckpoint = 16384')
  sqlite.run('PRAGMA journal_size_limit = 67108864')
  // SQLite's own default is 2 MiB; snapshots of large channels read events scattered through the
  // whole log, and missed pages were most of their time (BENCHMARKS.md).
  sqlite.run(`PRAGMA cache_size = -${Math.round(cacheMb * 1024)}`)
  sqlite.run('PRAGMA busy_timeout = 5000')
  const db = drizzle({ client: sqlite, schema })
  migrate(db, { migrationsFolder: MIGRATIONS })
  return { sqlite, db }
}
