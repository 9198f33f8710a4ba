import { treaty } from '@elysiajs/eden'
import type { App } from '../app'

/** An HTTP API error, with the server's `{"error":{"code","message"}}` when it sent one. */
export class RealtimeHttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

/** The typed HTTP side of the client: Eden's treaty over the server's `type App`. */
export function createHttp(url: string, token: () => Promise<string | undefined>, fetcher?: typeof fetch) {
  return treaty<App>(url, {
    fetcher,
    headers: async () => {
      const value = await token()
      return value ? { authorization: `Bearer ${value}` } : {}
    },
  })
}
export type Http = ReturnType<typeof createHttp>

/** Unwraps an Eden answer: its data, or a RealtimeHttpError. */
export function unwrap<T>(answer: { data: T; error: null } | { data: null; error: { status: unknown; value: unknown } }): T {
  if (answer.error === null) return answer.data as T
  const status = typeof answer.error.status === 'number' ? answer.error.status : 0
  const body = answer.error.value as { error?: { code?: string; message?: string } } | undefined
  throw new RealtimeHttpError(status, body?.error?.code ?? 'http_error', body?.error?.message ?? `HTTP ${status}`)
}
