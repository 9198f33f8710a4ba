#!/usr/bin/env bun
/**
 * The floor: the least a Bun pub/sub server can do for the same traffic. WebSocket `subscribe`
 * frames subscribe to a topic; POST /publish (or /ingest) with one event or {"events":[…]} publishes
 * each event to each of its `channels` as a flat frame shaped like Switchboard's. No validation, no
 * storage, no auth. Prints one JSON line with its port when listening.
 *
 *   bun bench/bare-server.ts [--port 0] [--host 127.0.0.1]
 */
interface BareEvent {
  type: string
  id: string
  orgId?: string
  userId?: string
  timestamp?: number
  payload: unknown
  channels?: string[]
}

const args = process.argv.slice(2)
const option = (name: string, fallback: string) => {
  const at = args.indexOf(`--${name}`)
  return at >= 0 && args[at + 1] !== undefined ? args[at + 1]! : fallback
}

let seq = 0
const topics = new Map<string, number>()

const server = Bun.serve({
  hostname: option('host', process.env.BARE_HOST ?? '127.0.0.1'),
  port: Number(option('port', process.env.BARE_PORT ?? '0')),
  async fetch(request, srv) {
    const { pathname } = new URL(request.url)
    if (pathname === '/ws') {
      if (srv.upgrade(request, { data: { topics: new Set<string>() } })) return undefined
      return new Response('upgrade failed', { status: 400 })
    }
    if (request.method === 'POST' && (pathname === '/publish' || pathname === '/ingest')) {
      const body = (await request.json()) as BareEvent | { events: BareEvent[] }
      const events = 'events' in body ? body.events : [body]
      for (const event of events) {
        const s = ++seq
        const payload = JSON.stringify(event.payload)
        for (const channel of event.channels ?? []) {
          if (!topics.has(channel)) continue
          srv.publish(
            channel,
            `{"type":${JSON.stringify(event.type)},"id":"${event.id}","seq":${s},"channelId":${JSON.stringify(channel)},"orgId":${JSON.stringify(event.orgId ?? 'local')},"userId":${JSON.stringify(event.userId ?? 'local')},"timestamp":${event.timestamp ?? 0},"payload":${payload}}`,
          )
        }
      }
      return Response.json({ stored: events.length, duplicates: 0 })
    }
    if (pathname === '/health') return Response.json({ status: 'ok', connections, channels: topics.size })
    return new Response('not found', { status: 404 })
  },
  websocket: {
    data: {} as { topics: Set<string> },
    open() {
      connections++
    },
    message(ws, message) {
      let frame: { type?: string; channelId?: string }
      try {
        frame = JSON.parse(String(message))
      } catch {
        return
      }
      const channel = frame.channelId
      if (frame.type === 'subscribe' && typeof channel === 'string') {
        if (!ws.data.topics.has(channel)) {
          ws.data.topics.add(channel)
          topics.set(channel, (topics.get(channel) ?? 0) + 1)
          ws.subscribe(channel)
        }
        ws.send(`{"type":"subscribed","channelId":${JSON.stringify(channel)},"lastSeq":${seq}}`)
      } else if (frame.type === 'ping') ws.send('{"type":"pong"}')
    },
    close(ws) {
      connections--
      for (const channel of ws.data.topics) {
        const left = (topics.get(channel) ?? 1) - 1
        if (left > 0) topics.set(channel, left)
        else topics.delete(channel)
      }
    },
  },
})
let connections = 0

console.log(JSON.stringify({ ts: new Date().toISOString(), level: 'info', event: 'listening', port: server.port, url: `http://${server.hostname}:${server.port}` }))
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    server.stop(true)
    process.exit(0)
  })
}
export {}
