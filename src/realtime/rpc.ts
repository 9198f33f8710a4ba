import type { Principal } from '../auth'

/** Why a call failed, as the caller sees it (`result.code`). */
export const RpcError = {
  /** No connection of the caller's user is announced under that clientId or kind. Immediate. */
  TargetNotConnected: 'target_not_connected',
  /** The target is connected but did not announce the method. Immediate. */
  MethodNotOffered: 'method_not_offered',
  /** No result within the call's timeout. */
  Timeout: 'timeout',
  /** The target disconnected before answering. Immediate. */
  TargetGone: 'target_gone',
  /** The target's handler answered with an error. */
  Failed: 'call_failed',
  /** The caller has too many calls waiting for results. */
  TooManyCalls: 'too_many_calls',
} as const

export type RpcResult = { success: true; data: unknown } | { success: false; code: string; error: string }

/** A connection that announced itself with `hello`: it can be called. */
export interface Endpoint {
  clientId: string
  kind?: string
  methods: ReadonlySet<string>
  /** Delivers a call to the connection; `callId` is the id its `result` must carry. */
  deliver(call: { callId: string; method: string; payload: unknown; from: { userId: string; clientId?: string; kind?: string } }): void
}

/** Whoever waits for results: a WebSocket session, or an HTTP request of POST /api/rpc. */
export interface Caller {
  clientId?: string
  kind?: string
}

interface Pending {
  caller: Caller
  endpoint: Endpoint
  settle(result: RpcResult): void
  timer: ReturnType<typeof setTimeout>
}

export const DEFAULT_CALL_TIMEOUT_MS = 10_000
export const MAX_CALL_TIMEOUT_MS = 120_000
/** Calls one caller may have waiting at once. */
export const MAX_PENDING_CALLS = 100

/**
 * Routes calls between the connections of one user (seed 004's RPC between clients and
 * machines). The rule: a call reaches only connections of the caller's own organisation and user —
 * in `jwt` mode the token's `org` and `sub`; in `none` mode every connection is the local user.
 * Every pending call is settled exactly once: by the target's result, its timeout, or either side
 * going away.
 */
export class RpcRouter {
  private readonly endpoints = new Map<string, Map<string, Endpoint>>()
  private readonly pending = new Map<string, Pending>()
  private counter = 0

  announce(principal: Principal, endpoint: Endpoint): void {
    const user = userKey(principal)
    let mine = this.endpoints.get(user)
    if (!mine) {
      mine = new Map()
      this.endpoints.set(user, mine)
    }
    const previous = mine.get(endpoint.clientId)
    if (previous && previous !== endpoint) this.withdraw(principal, previous)
    mine.set(endpoint.clientId, endpoint)
  }

  /** The endpoint is gone: its pending calls fail at once with target_gone. */
  withdraw(principal: Principal, endpoint: Endpoint): void {
    const user = userKey(principal)
    const mine = this.endpoints.get(user)
    if (mine?.get(endpoint.clientId) === endpoint) {
      mine.delete(endpoint.clientId)
      if (mine.size === 0) this.endpoints.delete(user)
    }
    for (const [id, call] of this.pending) {
      if (call.endpoint === endpoint) this.finish(id, { success: false, code: RpcError.TargetGone, error: `${endpoint.clientId} disconnected before answering` })
    }
  }

  /** The caller is gone: its pending calls are dropped (a late result is ignored). */
  callerGone(caller: Caller): void {
    for (const [id, call] of this.pending) {
      if (call.caller === caller) {
        clearTimeout(call.timer)
        this.pending.delete(id)
      }
    }
  }

  /** The endpoints of a user, for presence. */
  endpointsOf(principal: Principal): Endpoint[] {
    return [...(this.endpoints.get(userKey(principal))?.values() ?? [])]
  }

  /**
   * Calls `method` on `target` (a clientId, else a kind) among the caller's user's endpoints.
   * `settle` is called exactly once.
   */
  call(
    principal: Principal,
    caller: Caller,
    request: { target: string; method: string; payload: unknown; timeoutMs?: number },
    settle: (result: RpcResult) => void,
  ): void {
    const mine = [...(this.endpoints.get(userKey(principal))?.values() ?? [])].filter((endpoint) => endpoint !== caller)
    const named = mine.find((endpoint) => endpoint.clientId === request.target)
    const candidates = named ? [named] : mine.filter((endpoint) => endpoint.kind === request.target)
    if (candidates.length === 0) {
      return settle({ success: false, code: RpcError.TargetNotConnected, error: `no connected client ${JSON.stringify(request.target)}` })
    }
    const endpoint = candidates.find((candidate) => candidate.methods.has(request.method))
    if (!endpoint) {
      return settle({ success: false, code: RpcError.MethodNotOffered, error: `${JSON.stringify(request.target)} does not offer ${JSON.stringify(request.method)}` })
    }
    let waiting = 0
    for (const call of this.pending.values()) if (call.caller === caller) waiting++
    if (waiting >= MAX_PENDING_CALLS) {
      return settle({ success: false, code: RpcError.TooManyCalls, error: `at most ${MAX_PENDING_CALLS} calls may wait at once` })
    }
    const callId = `c${++this.counter}`
    const timeoutMs = Math.min(request.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS, MAX_CALL_TIMEOUT_MS)
    const timer = setTimeout(
      () => this.finish(callId, { success: false, code: RpcError.Timeout, error: `no result within ${timeoutMs} ms` }),
      timeoutMs,
    )
    this.pending.set(callId, { caller, endpoint, settle, timer })
    endpoint.deliver({
      callId,
      method: request.method,
      payload: request.payload,
      from: { userId: principal.userId, ...(caller.clientId ? { clientId: caller.clientId } : {}), ...(caller.kind ? { kind: caller.kind } : {}) },
    })
  }

  /** A target's answer to call `callId`; ignored unless that endpoint holds the call. */
  result(endpoint: Endpoint, callId: string, result: { success: boolean; data?: unknown; error?: string }): boolean {
    const call = this.pending.get(callId)
    if (!call || call.endpoint !== endpoint) return false
    this.finish(
      callId,
      result.success ? { success: true, data: result.data ?? null } : { success: false, code: RpcError.Failed, error: result.error ?? 'the handler failed' },
    )
    return true
  }

  /** Calls waiting for a result (for stats and tests). */
  get pendingCalls(): number {
    return this.pending.size
  }

  private finish(callId: string, result: RpcResult): void {
    const call = this.pending.get(callId)
    if (!call) return
    clearTimeout(call.timer)
    this.pending.delete(callId)
    call.settle(result)
  }
}

const userKey = (principal: Principal) => `${principal.orgId}|${principal.userId}`
