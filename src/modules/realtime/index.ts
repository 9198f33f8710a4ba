import { Elysia } from 'elysia'
import type { Socket } from '../../realtime/hub'
import { Session, type SessionDeps } from '../../realtime/session'

/** The WebSocket endpoint: each connection gets a Session; the protocol lives there. */
export function realtimeModule(deps: SessionDeps) {
  const sessions = new WeakMap<object, Session>()
  return new Elysia({ name: 'realtime' }).ws('/ws', {
    open(ws) {
      const session = new Session(ws.raw as unknown as Socket, deps)
      sessions.set(ws.raw, session)
      const token = (ws.data.query as Record<string, string | undefined>).token
      session.opened(token)
    },
    message(ws, message) {
      sessions.get(ws.raw)?.received(message)
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
