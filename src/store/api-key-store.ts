import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { and, asc, eq, getTableColumns, isNull, sql } from 'drizzle-orm'
import type { OpenedDatabase } from '../db/client'
import { apiKeys } from '../db/schema'

/** Every key starts with this, so it is told apart from a JWT (and found by secret scanners). */
export const API_KEY_PREFIX = 'sbk_'
/** lastUsedAt is written at most this often per key: a busy key must not cost a write per request. */
const LAST_USED_RESOLUTION_MS = 60_000

export type ApiKeyRecord = Omit<typeof apiKeys.$inferSelect, 'hash'>

const hashOf = (secret: string) => createHash('sha256').update(secret).digest('hex')

/**
 * API keys (seed 003's sync tokens): 32 random bytes, base64url, shown once, stored as a SHA-256
 * hash with their organisation, label, creation, expiry, last use and revocation.
 */
export class ApiKeyStore {
  private readonly byHash
  private readonly touched = new Map<string, number>()

  constructor(
    private readonly database: OpenedDatabase,
    private readonly now: () => number = Date.now,
  ) {
    this.byHash = database.db
      .select()
      .from(apiKeys)
      .where(eq(apiKeys.hash, sql.placeholder('hash')))
      .prepare()
  }

  /** Creates a key; the returned `secret` is the only copy that will ever exist. */
  create(orgId: string, label: string, expiresAt: number | null = null): { secret: string; record: ApiKeyRecord } {
    const secret = API_KEY_PREFIX + randomBytes(32).toString('base64url')
    const record: ApiKeyRecord = {
      id: `key_${randomBytes(6).toString('hex')}`,
      orgId,
      label,
      createdAt: this.now(),
      expiresAt,
      lastUsedAt: null,
      revokedAt: null,
    }
    this.database.db.insert(apiKeys).values({ ...record, hash: hashOf(secret) }).run()
    return { secret, record }
  }

  list(orgId?: string): ApiKeyRecord[] {
    const { hash: _, ...columns } = getTableColumns(apiKeys)
    return this.database.db
      .select(columns)
      .from(apiKeys)
      .where(orgId === undefined ? undefined : eq(apiKeys.orgId, orgId))
      .orderBy(asc(apiKeys.createdAt))
      .all()
  }

  /** Revokes a key at once; false if there is no such (unrevoked) key. */
  revoke(id: string): boolean {
    const revoked = this.database.db
      .update(apiKeys)
      .set({ revokedAt: this.now() })
      .where(and(eq(apiKeys.id, id), isNull(apiKeys.revokedAt)))
      .returning({ id: apiKeys.id })
      .all()
    return revoked.length > 0
  }

  /** The key's record when `secret` is a live key (not revoked, not expired); else undefined. */
  verify(secret: string): ApiKeyRecord | undefined {
    const hash = hashOf(secret)
    const row = this.byHash.get({ hash })
    if (!row || !timingSafeEqual(Buffer.from(row.hash), Buffer.from(hash))) return undefined
    const now = this.now()
    if (row.revokedAt !== null || (row.expiresAt !== null && row.expiresAt <= now)) return undefined
    if (now - (this.touched.get(row.id) ?? 0) >= LAST_USED_RESOLUTION_MS) {
      this.touched.set(row.id, now)
      this.database.db.update(apiKeys).set({ lastUsedAt: now }).where(eq(apiKeys.id, row.id)).run()
    }
    const { hash: _, ...record } = row
    return record
  }
}
