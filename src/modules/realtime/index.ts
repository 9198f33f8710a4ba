import { Elysia } from 'elysia'
import type { Socket } from '../../realtime/hub'
import { Session, type SessionDeps } from '../../realtime/session'

/**
 * The WebSocket endpoint: each connection gets a Session; the protocol lives there.
 *
 * Frames go to the session as Bun delivers them (text or bytes). Elysia's own message step would
 * rewrite the text first (numbers and `true` become values, JSON is parsed only when it starts with
 * `{`), which loses what the client actually sent; so `open` points the socket's message callback,
 * which Bun's handler in Elysia calls as `ws.data.message`, straight at the session.
 */
export function realtimeModule(deps: SessionDeps) {
  const sessions = new WeakMap<object, Session>()
  return new Elysia({ name: 'realtime' }).ws('/ws', {
    open(ws) {
      const session = new Session(ws.raw as unknown as Socket, deps)
      sessions.set(ws.raw, session)
      ;(ws.raw.data as { message?: (socket: unknown, message: string | Buffer) => void }).message = (_socket, message) =>
        session.received(message)
      const query = ws.data.query as Record<string, string | undefined>
      session.opened(query.token, query.clientId)
    },
    drain(ws) {
      sessions.get(ws.raw)?.drained()
    },
    close(ws) {
      sessions.get(ws.raw)?.closed()
      sessions.delete(ws.raw)
    },
  })
}
