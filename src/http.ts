import { Elysia } from 'elysia'
import { AuthError } from './auth'
import { ApiError, describeIssue } from './errors'
import type { Logger } from './log'

/** `Authorization: Bearer <token>` → the token. */
export function bearerToken(header: string | undefined): string | undefined {
  const match = header ? /^Bearer\s+(.+)$/i.exec(header) : null
  return match?.[1]?.trim()
}

const errorBody = (code: string, message: string) => ({ error: { code, message } })

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
export const httpErrors = (maxBodyBytes: number, log: Logger) =>
  new Elysia({ name: 'http-errors' })
    .onRequest(({ request, set }) => {
      if (request.method !== 'POST' && request.method !== 'PUT' && request.method !== 'PATCH') return
      const length = Number(request.headers.get('content-length') ?? 0)
      if (length > maxBodyBytes) {
        set.status = 413
        return errorBody('body_too_large', `request body is ${length} bytes; the limit is ${maxBodyBytes}`)
      }
      const type = request.headers.get('content-type') ?? ''
      if (!/^application\/json\b/i.test(type)) {
        set.status = 415
        return errorBody('unsupported_media_type', 'send the body as JSON with Content-Type: application/json')
      }
    })
    .onError({ as: 'global' }, ({ code, error, set }) => {
      if (error instanceof ApiError) {
        set.status = error.status
        return errorBody(error.code, error.message)
      }
      if (error instanceof AuthError) {
        set.status = 401
        set.headers['www-authenticate'] = 'Bearer'
        return errorBody('unauthorized', error.message)
      }
      switch (code) {
        case 'VALIDATION': {
          set.status = 400
          const issue = reportedIssue((error.valueError ?? { message: 'invalid value' }) as unknown as Issue, error.value)
          const where = error.type === 'query' ? 'query' : undefined
          return errorBody(error.type === 'query' ? 'invalid_query' : 'invalid_body', describeIssue({ path: issue.path ?? [], message: issue.message }, where))
        }
        case 'PARSE':
          set.status = 400
          return errorBody('invalid_json', 'request body is not valid JSON')
        case 'NOT_FOUND':
          set.status = 404
          return errorBody('not_found', 'no such endpoint')
        default:
          log.error('http_error', { code, error: String(error) })
          set.status = 500
          return errorBody('internal_error', 'internal error')
      }
    })
