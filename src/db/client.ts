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
 * transactions on power loss for a much faster commit.
 */
export function openDatabase(path: string): OpenedDatabase {
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
  const sqlite = new Database(path, { create: true, strict: true })
  sqlite.run('PRAGMA journal_mode = WAL')
  sqlite.run('PRAGMA synchronous = NORMAL')
  sqlite.run('PRAGMA busy_timeout = 5000')
  const db = drizzle({ client: sqlite, schema })
  migrate(db, { migrationsFolder: MIGRATIONS })
  return { sqlite, db }
}
