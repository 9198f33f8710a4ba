import { Elysia } from 'elysia'
import { AuthError, type Authenticator, type Principal } from './auth'
import { ApiError, describeIssue } from './errors'
import { MAX_JSON_DEPTH, nestsDeeperThan } from './json'
import type { Logger } from './log'
import type { Metrics } from './metrics'
import type { KeyedRateLimiter } from './rate-limit'

/** `Authorization: Bearer <token>` → the token. */
export function bearerToken(header: string | undefined): string | undefined {
  const match = header ? /^Bearer\s+(.+)$/i.exec(header) : null
  return match?.[1]?.trim()
}

/** The HTTP API behind credentials: `/ingest` and everything under `/api/`. */
const isApiPath = (path: string) => path === '/ingest' || path.startsWith('/api/')
/**
 * Where `?token=` is accepted instead of the Authorization header: a browser's EventSource cannot
 * send headers. A token in a URL can end up in proxy logs, so only there.
 */
const QUERY_TOKEN_PATHS = new Set(['/api/events/stream'])

/**
 * Authenticates API requests and counts them against the per-credential rate limit before their
 * body is read: a caller without credentials gets 401, and a limited one 429, not the cost of
 * parsing what it sent. Route modules take the principal with `principalOf`.
 */
export function createApiGate(auth: Authenticator, limiter: KeyedRateLimiter | null, metrics?: Metrics) {
  const principals = new WeakMap<Request, Principal>()
  const reject = refusal(metrics)
  const plugin = new Elysia({ name: 'api-gate' }).onRequest(async ({ request, set }) => {
    const url = new URL(request.url)
    if (!isApiPath(url.pathname)) return
    let principal: Principal
    try {
      const token =
        bearerToken(request.headers.get('authorization') ?? undefined) ??
        (QUERY_TOKEN_PATHS.has(url.pathname) ? (url.searchParams.get('token') ?? undefined) : undefined)
      principal = await auth.authenticate(token)
    } catch (error) {
      if (!(error instanceof AuthError)) throw error
      set.status = 401
      set.headers['www-authenticate'] = 'Bearer'
      return reject('unauthorized', error.message)
    }
    const waitMs = limiter?.hit(principal.credential ?? `${principal.orgId}|${principal.userId}`) ?? 0
    if (waitMs > 0) {
      const seconds = Math.ceil(waitMs / 1000)
      set.status = 429
      set.headers['retry-after'] = String(seconds)
      return reject('rate_limited', `too many requests for this credential; retry in ${seconds} s`)
    }
    principals.set(request, principal)
  })
  /** Elysia `derive` handler for API routes: the principal the gate resolved for this request. */
  const principalOf = ({ request }: { request: Request }) => {
    const principal = principals.get(request)
    if (!principal) throw new Error(`no principal for ${request.url}: is the route outside the API paths?`)
    return { principal }
  }
  return { plugin, principalOf }
}
export type ApiGate = ReturnType<typeof createApiGate>

const errorBody = (code: string, message: string) => ({ error: { code, message } })

/** An error body for a refused input, counted in switchboard_rejected_inputs_total by its code. */
const refusal = (metrics: Metrics | undefined) => (code: string, message: string) => {
  metrics?.rejected.inc({ reason: code })
  return errorBody(code, message)
}

interface Issue {
  code?: string
  path?: readonly PropertyKey[]
  message: string
  errors?: Issue[][]
}

/**
 * The first issue to report. For a union (POST /ingest takes one event or `{events}`), report the
 * issue of the branch the caller meant: the batch form when the body has `events`.
 */
function reportedIssue(issue: Issue, value: unknown): Issue {
  if (issue.code !== 'invalid_union' || !issue.errors?.length) return issue
  const meantBatch = typeof value === 'object' && value !== null && 'events' in value
  const branch = meantBatch ? issue.errors[0] : issue.errors.at(-1)
  return branch?.[0] ? reportedIssue(branch[0], value) : issue
}

/**
 * Request limits and the one error mapping of the HTTP API: every error is
 * `{"error":{"code","message"}}` with a fitting status; validation failures are 400 naming the field.
 */
export const httpErrors = (maxBodyBytes: number, log: Logger, metrics?: Metrics) => {
  const reject = refusal(metrics)
  return new Elysia({ name: 'http-errors' })
    .onRequest(({ request, set }) => {
      if (request.method !== 'POST' && request.method !== 'PUT' && request.method !== 'PATCH') return
      const length = Number(request.headers.get('content-length') ?? 0)
      if (length > maxBodyBytes) {
        set.status = 413
        return reject('body_too_large', `request body is ${length} bytes; the limit is ${maxBodyBytes}`)
      }
      const type = request.headers.get('content-type') ?? ''
      if (!/^application\/json\b/i.test(type)) {
        set.status = 415
        return reject('unsupported_media_type', 'send the body as JSON with Content-Type: application/json')
      }
    })
    // JSON bodies are read here, under the size limit, so a body sent without Content-Length
    // (chunked) is refused with the same 413 as one that declares its size.
    .onParse({ as: 'global' }, async ({ request, contentType }) => {
      if (!/^application\/json\b/i.test(contentType)) return
      const bytes = await request.arrayBuffer()
      if (bytes.byteLength > maxBodyBytes) {
        throw new ApiError(413, 'body_too_large', `request body is over the limit of ${maxBodyBytes} bytes`)
      }
      let body: unknown
      try {
        body = JSON.parse(new TextDecoder().decode(bytes))
      } catch {
        throw new ApiError(400, 'invalid_json', 'request body is not valid JSON')
      }
      if (nestsDeeperThan(body)) throw new ApiError(400, 'invalid_body', `request body nests deeper than ${MAX_JSON_DEPTH} levels`)
      return body
    })
    .onError({ as: 'global' }, ({ code, error: thrown, set }) => {
      // Elysia wraps whatever the parse step throws in a ParseError.
      const error = code === 'PARSE' && thrown.cause instanceof ApiError ? thrown.cause : thrown
      if (error instanceof ApiError) {
        set.status = error.status
        Object.assign(set.headers, error.headers)
        return reject(error.code, error.message)
      }
      if (error instanceof AuthError) {
        set.status = 401
        set.headers['www-authenticate'] = 'Bearer'
        return reject('unauthorized', error.message)
      }
      switch (code) {
        case 'VALIDATION': {
          set.status = 400
          const issue = reportedIssue((thrown.valueError ?? { message: 'invalid value' }) as unknown as Issue, thrown.value)
          const where = thrown.type === 'query' ? 'query' : undefined
          const code = thrown.type === 'query' ? 'invalid_query' : thrown.type === 'params' ? 'invalid_path' : 'invalid_body'
          return reject(code, describeIssue({ path: issue.path ?? [], message: issue.message }, where))
        }
        case 'PARSE':
          set.status = 400
          return reject('invalid_json', 'request body is not valid JSON')
        case 'NOT_FOUND':
          set.status = 404
          return reject('not_found', 'no such endpoint')
        default:
          log.error('http_error', { code, error: String(error) })
          set.status = 500
          return errorBody('internal_error', 'internal error')
      }
    })
}
