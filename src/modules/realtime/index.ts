import { Elysia } from 'elysia'
import type { Socket } from '../../realtime/hub'
import { Session, type SessionDeps } from '../../realtime/session'

/**
 * The WebSocket endpoint: each connection gets a Session; the protocol lives there.
 *
 * Once a socket is open, its `data` — where Bun's handler in Elysia looks up `message`, `drain` and
 * `close` — is replaced by three calls into the session:
 * - frames then reach the session as Bun delivers them: Elysia's own message step would rewrite
 *   the text first (numbers and `true` become values, JSON is parsed only when it starts with `{`),
 *   losing what the client actually sent;
 * - the upgrade's whole request context, which Elysia keeps in `data` for the socket's lifetime,
 *   is let go: it was more than half of an idle socket's memory (BENCHMARKS.md).
 */
export function realtimeModule(deps: SessionDeps) {
  return new Elysia({ name: 'realtime' }).ws('/ws', {
    open(ws) {
      const session = new Session(ws.raw as unknown as Socket, deps)
      const query = ws.data.query as Record<string, string | undefined>
      ;(ws.raw as { data: unknown }).data = {
        message: (_socket: unknown, message: string | Buffer) => session.received(message),
        drain: () => session.drained(),
        close: () => session.closed(),
      }
      session.opened(query.token, query.clientId)
    },
  })
}
