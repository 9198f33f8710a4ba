import { errors, jwtVerify } from 'jose'
import { z } from 'zod'
import type { Config } from './config'
import { PRINCIPAL_ID_PATTERN } from './model/channels'
import { API_KEY_PREFIX, type ApiKeyStore } from './store/api-key-store'

/** Who is calling: every read, write and subscription is scoped to `orgId`. */
export interface Principal {
  orgId: string
  userId: string
  /** What rate limits count against: one user's tokens, one API key, or the local principal. */
  credential?: string
}

/**
 * Turns a credential into a principal.
 * - `none` mode: every caller is the configured local principal (the service binds loopback).
 * - `jwt` mode: an HS256 JWT with `sub`, `org` and `exp` (a user), or an API key `sbk_…` (a service
 *   of one organisation, whose principal's userId is `key:<id>`).
 */
export interface Authenticator {
  readonly required: boolean
  /** Resolves the principal, or rejects with AuthError. */
  authenticate(token: string | undefined): Promise<Principal>
}

/** A credential was missing, invalid or expired. Its message never contains the credential. */
export class AuthError extends Error {}

const claims = z.object({
  sub: z.string().regex(PRINCIPAL_ID_PATTERN),
  org: z.string().regex(PRINCIPAL_ID_PATTERN),
  exp: z.number(),
})

export function createAuthenticator(auth: Config['auth'], apiKeys?: ApiKeyStore): Authenticator {
  if (auth.mode === 'none') {
    const principal = { orgId: auth.orgId, userId: auth.userId, credential: 'local' }
    return { required: false, authenticate: async () => principal }
  }
  const key = new TextEncoder().encode(auth.secret)
  return {
    required: true,
    async authenticate(token) {
      if (!token) throw new AuthError('missing token')
      if (token.startsWith(API_KEY_PREFIX)) {
        const record = apiKeys?.verify(token)
        if (!record) throw new AuthError('invalid, expired or revoked API key')
        return { orgId: record.orgId, userId: `key:${record.id}`, credential: `key:${record.id}` }
      }
      try {
        const { payload } = await jwtVerify(token, key, { algorithms: ['HS256'], requiredClaims: ['exp'] })
        const parsed = claims.safeParse(payload)
        if (!parsed.success) throw new AuthError('token lacks valid sub, org and exp claims')
        const { org, sub } = parsed.data
        return { orgId: org, userId: sub, credential: `user:${org}|${sub}` }
      } catch (error) {
        if (error instanceof AuthError) throw error
        if (error instanceof errors.JWTExpired) throw new AuthError('token expired')
        throw new AuthError('invalid token')
      }
    },
  }
}
