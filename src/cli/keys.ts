#!/usr/bin/env bun
/**
 * `bun run keys <create|list|revoke>`: manages API keys in the service's database (REALTIME_DB or
 * --db). Safe beside a running service: SQLite WAL lets both use the file.
 */
import { parseArgs } from 'node:util'
import { ConfigError, loadConfig } from '../config'
import { openDatabase } from '../db/client'
import { PRINCIPAL_ID_PATTERN } from '../model/channels'
import { ApiKeyStore, type ApiKeyRecord } from '../store/api-key-store'

const usageText = (prog: string) => `usage: ${prog} <command> [options]

commands:
  create --org <orgId> --label <text> [--expires-days <n>]   create a key; it is printed once
  list [--org <orgId>]                                       list keys (never the keys themselves)
  revoke <keyId>                                             revoke a key at once

options:
  --db <path>     the SQLite file (default: REALTIME_DB, else ./data/realtime.db)
  --json          machine-readable output
  -h, --help      this text`

export interface Io {
  out(line: string): void
  err(line: string): void
}

/**
 * Runs the command; returns the exit code (0 ok, 1 failed, 2 usage). `prog` names the command in
 * the usage text (`switchboard keys` when run through the `switchboard` entry).
 */
export function runKeys(argv: string[], env: Record<string, string | undefined>, io: Io, now = Date.now, prog = 'bun run keys'): number {
  const USAGE = usageText(prog)
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        org: { type: 'string' },
        label: { type: 'string' },
        'expires-days': { type: 'string' },
        db: { type: 'string' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    })
  } catch (error) {
    io.err(`${(error as Error).message}\n\n${USAGE}`)
    return 2
  }
  const { values, positionals } = parsed
  const [command, ...rest] = positionals
  if (values.help || !command) {
    ;(values.help ? io.out : io.err)(USAGE)
    return values.help ? 0 : 2
  }

  let dbPath: string
  try {
    // Only the database setting matters here; other settings (and their secrets) are not read.
    dbPath = values.db ?? loadConfig({ REALTIME_DB: env.REALTIME_DB }).dbPath
  } catch (error) {
    if (error instanceof ConfigError) {
      io.err(error.message)
      return 2
    }
    throw error
  }
  const usage = (message: string) => {
    io.err(`${message}\n\n${USAGE}`)
    return 2
  }

  switch (command) {
    case 'create': {
      if (!values.org || !PRINCIPAL_ID_PATTERN.test(values.org)) return usage('create needs --org <orgId> (1-128 of A-Z a-z 0-9 . _ @ : + -)')
      if (!values.label?.trim()) return usage('create needs --label <text>')
      let expiresAt: number | null = null
      if (values['expires-days'] !== undefined) {
        const days = Number(values['expires-days'])
        if (!Number.isFinite(days) || days <= 0) return usage('--expires-days must be a positive number')
        expiresAt = now() + days * 86_400_000
      }
      return withStore(dbPath, now, (store) => {
        const { secret, record } = store.create(values.org!, values.label!.trim(), expiresAt)
        if (values.json) io.out(JSON.stringify({ key: secret, ...record }))
        else {
          io.out(`created ${record.id} for org ${record.orgId} (${record.label})`)
          io.out(`key: ${secret}`)
          io.out('This key is shown only now: store it safely. Send it as "Authorization: Bearer <key>".')
        }
        return 0
      })
    }
    case 'list':
      if (values.org !== undefined && !PRINCIPAL_ID_PATTERN.test(values.org)) return usage('--org is not a valid organisation id')
      return withStore(dbPath, now, (store) => {
        const keys = store.list(values.org)
        if (values.json) io.out(JSON.stringify(keys))
        else if (keys.length === 0) io.out('no keys')
        else for (const key of keys) io.out(describe(key, now()))
        return 0
      })
    case 'revoke': {
      const [id] = rest
      if (!id) return usage('revoke needs the key id (see `keys list`)')
      return withStore(dbPath, now, (store) => {
        if (!store.revoke(id)) {
          io.err(`no active key ${id}`)
          return 1
        }
        io.out(`revoked ${id}`)
        return 0
      })
    }
    default:
      return usage(`unknown command ${JSON.stringify(command)}`)
  }
}

function withStore(dbPath: string, now: () => number, run: (store: ApiKeyStore) => number): number {
  const database = openDatabase(dbPath)
  try {
    return run(new ApiKeyStore(database, now))
  } finally {
    database.sqlite.close()
  }
}

function describe(key: ApiKeyRecord, now: number): string {
  const date = (ms: number | null) => (ms === null ? '-' : new Date(ms).toISOString())
  const state = key.revokedAt !== null ? 'revoked' : key.expiresAt !== null && key.expiresAt <= now ? 'expired' : 'active'
  return `${key.id}  ${state.padEnd(7)}  org=${key.orgId}  label=${JSON.stringify(key.label)}  created=${date(key.createdAt)}  expires=${date(key.expiresAt)}  lastUsed=${date(key.lastUsedAt)}`
}

if (import.meta.main) {
  process.exit(runKeys(process.argv.slice(2), process.env, { out: console.log, err: console.error }))
}
