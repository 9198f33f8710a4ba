import { errors, jwtVerify } from 'jose'
import { z } from 'zod'
import type { Config } from './config'
import { PRINCIPAL_ID_PATTERN } from './model/channels'

/** Who is calling: every read, write and subscription is scoped to `orgId`. */
export interface Principal {
  orgId: string
  userId: string
}

/**
 * Turns a credential into a principal. In `none` mode every caller is the configured local
 * principal (the service binds loopback); in `jwt` mode an HS256 token with `sub`, `org` and `exp`.
 */
export interface Authenticator {
  readonly required: boolean
  /** Resolves the principal, or rejects with AuthError. */
  authenticate(token: string | undefined): Promise<Principal>
}

export class AuthError extends Error {}

const claims = z.object({
  sub: z.string().regex(PRINCIPAL_ID_PATTERN),
  org: z.string().regex(PRINCIPAL_ID_PATTERN),
  exp: z.number(),
})

export function createAuthenticator(auth: Config['auth']): Authenticator {
  if (auth.mode === 'none') {
    const principal = { orgId: auth.orgId, userId: auth.userId }
    return { required: false, authenticate: async () => principal }
  }
  const key = new TextEncoder().encode(auth.secret)
  return {
    required: true,
    async authenticate(token) {
      if (!token) throw new AuthError('missing token')
      try {
        const { payload } = await jwtVerify(token, key, { algorithms: ['HS256'], requiredClaims: ['exp'] })
        const parsed = claims.safeParse(payload)
        if (!parsed.success) throw new AuthError('token lacks valid sub, org and exp claims')
        return { orgId: parsed.data.org, userId: parsed.data.sub }
      } catch (error) {
        if (error instanceof AuthError) throw error
        if (error instanceof errors.JWTExpired) throw new AuthError('token expired')
        throw new AuthError('invalid token')
      }
    },
  }
}
