import { Elysia } from 'elysia'
import type { Principal } from '../../auth'
import { ApiError, forbidden } from '../../errors'
import type { ApiGate } from '../../http'
import { rpcBody } from '../../model/http'
import { RpcError, type RpcResult, type RpcRouter } from '../../realtime/rpc'

/** HTTP status of each way a call can fail. */
const STATUS: Record<string, number> = {
  [RpcError.TargetNotConnected]: 404,
  [RpcError.MethodNotOffered]: 404,
  [RpcError.Timeout]: 504,
  [RpcError.TargetGone]: 502,
  [RpcError.Failed]: 502,
  [RpcError.TooManyCalls]: 429,
}

/**
 * POST /api/rpc: a service calls a connected client of a user. A JWT calls its own user's clients;
 * an API key (a service of the organisation) names the user with `userId`.
 */
export const rpcModule = (rpc: RpcRouter, gate: ApiGate) =>
  new Elysia({ name: 'rpc' }).derive(gate.principalOf).post(
    '/api/rpc',
    async ({ body, principal, request }) => {
      const isService = principal.credential?.startsWith('key:') ?? false
      if (isService && !body.userId) throw new ApiError(400, 'invalid_body', 'userId: an API key must name the user whose client it calls')
      if (!isService && body.userId !== undefined && body.userId !== principal.userId) {
        throw forbidden("userId: calls reach only the caller's own clients")
      }
      const as: Principal = { orgId: principal.orgId, userId: isService ? body.userId! : principal.userId }
      const caller = {}
      request.signal.addEventListener('abort', () => rpc.callerGone(caller), { once: true })
      const result = await new Promise<RpcResult>((settle) =>
        rpc.call(as, caller, { target: body.target, method: body.method, payload: body.payload, timeoutMs: body.timeoutMs }, settle),
      )
      if (!result.success) throw new ApiError(STATUS[result.code] ?? 502, result.code, result.error)
      return { success: true as const, data: result.data }
    },
    { body: rpcBody },
  )
