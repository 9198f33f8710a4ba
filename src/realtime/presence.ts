import type { Principal } from '../auth'
import type { PresenceEntry } from '../model/http'

/** A client counts as present while it was seen within this window or has a socket open. */
export const PRESENCE_WINDOW_MS = 60_000

interface Entry extends Omit<PresenceEntry, 'socketOpen' | 'methods'> {
  orgId: string
  sockets: number
  methods?: string[]
}

/**
 * Who is connected, from both halves of seed 003's dual channel: HTTP heartbeats and open sockets,
 * per (organisation, user, clientId). Stale entries are swept, so memory follows live clients.
 */
export class Presence {
  private readonly entries = new Map<string, Entry>()
  private touches = 0

  constructor(private readonly now: () => number = Date.now) {}

  seen(principal: Principal, clientId: string, kind?: string): void {
    const entry = this.entry(principal, clientId)
    entry.lastSeen = this.now()
    if (kind !== undefined) entry.kind = kind
    if (++this.touches % 1000 === 0) this.sweep()
  }

  socketOpened(principal: Principal, clientId: string): void {
    const entry = this.entry(principal, clientId)
    entry.sockets++
    entry.lastSeen = this.now()
  }

  socketClosed(principal: Principal, clientId: string): void {
    const entry = this.entries.get(keyOf(principal, clientId))
    if (!entry) return
    entry.sockets = Math.max(0, entry.sockets - 1)
    entry.lastSeen = this.now()
    if (entry.sockets === 0) entry.methods = undefined
  }

  /** What a socket announced with `hello`: its kind and the methods it answers. */
  describe(principal: Principal, clientId: string, kind: string | undefined, methods: string[]): void {
    const entry = this.entry(principal, clientId)
    if (kind !== undefined) entry.kind = kind
    entry.methods = methods
  }

  /** Present clients of an organisation (of one user, when `userId` is given), most recently seen first. */
  list(orgId: string, userId?: string): PresenceEntry[] {
    this.sweep()
    return [...this.entries.values()]
      .filter((entry) => entry.orgId === orgId && (userId === undefined || entry.userId === userId))
      .sort((a, b) => b.lastSeen - a.lastSeen)
      .map(({ userId, clientId, kind, lastSeen, sockets, methods }) => ({
        userId,
        clientId,
        ...(kind === undefined ? {} : { kind }),
        lastSeen,
        socketOpen: sockets > 0,
        ...(methods === undefined ? {} : { methods }),
      }))
  }

  private entry(principal: Principal, clientId: string): Entry {
    const key = keyOf(principal, clientId)
    let entry = this.entries.get(key)
    if (!entry) {
      entry = { orgId: principal.orgId, userId: principal.userId, clientId, lastSeen: this.now(), sockets: 0 }
      this.entries.set(key, entry)
    }
    return entry
  }

  private sweep(): void {
    const cutoff = this.now() - PRESENCE_WINDOW_MS
    for (const [key, entry] of this.entries) {
      if (entry.sockets === 0 && entry.lastSeen < cutoff) this.entries.delete(key)
    }
  }
}

const keyOf = (principal: Principal, clientId: string) => `${principal.orgId}|${principal.userId}|${clientId}`
