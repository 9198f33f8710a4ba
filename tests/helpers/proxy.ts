import type { Server, ServerWebSocket } from 'bun'

/**
 * A loopback proxy in front of a real server, for client resilience tests. HTTP requests are
 * forwarded as they are; WebSocket upgrades are either refused (like a proxy that blocks them) or
 * bridged to the upstream `/ws` with a client WebSocket. Live bridges can be dropped abruptly
 * (no close frame, like a network failure) or frozen (frames swallowed both ways, the TCP
 * connection kept open: a server that stops answering without closing). Upgrades can also be held
 * without an answer.
 */
export interface Proxy {
  url: string
  port: number
  /** Upgrades answered 503 (true) or bridged (false, the default). */
  refuseUpgrades: boolean
  /** Upgrades left unanswered, the request held open (until stop()). Checked before refuseUpgrades. */
  hangUpgrades: boolean
  /** Refuse plain HTTP too (answered 502), as if the upstream were unreachable. */
  refuseHttp: boolean
  /** Upgrade requests seen (refused or not). */
  upgradeAttempts: number
  /** Upgrades that were bridged to the upstream. */
  bridged: number
  /** HTTP requests forwarded, by path. */
  requests: string[]
  /** Live bridges right now. */
  readonly live: number
  /** Terminates every live bridge: the client side without a close frame, the upstream closed. */
  dropAll(): void
  /** Stops forwarding frames on every live bridge, both ways, and keeps the connections open. */
  freezeAll(): void
  stop(): Promise<void>
}

interface Bridge {
  upstream: WebSocket
  /** Frames from the client while the upstream was still connecting. */
  queued: string[]
  /** Frames from the upstream before the client side was open. */
  toClient: string[]
  /** The upstream closed before the client side was open. */
  upstreamClosed?: { code: number; reason: string }
  frozen: boolean
  client?: ServerWebSocket<Bridge>
}

/** Closes the client side the way the upstream closed. */
function endClient(ws: ServerWebSocket<Bridge>, code: number, reason: string): void {
  if (ws.readyState !== 1) return
  // 1005/1006 cannot be sent in a close frame: an abnormal upstream end is an abrupt one here too.
  if (code === 1005 || code === 1006) ws.terminate()
  else ws.close(code, reason)
}

function bridgeTo(url: string, bridges: Set<Bridge>): Bridge {
  const bridge: Bridge = { upstream: new WebSocket(url), queued: [], toClient: [], frozen: false }
  const { upstream } = bridge
  upstream.addEventListener('open', () => {
    for (const frame of bridge.queued.splice(0)) upstream.send(frame)
  })
  upstream.addEventListener('message', (event) => {
    if (bridge.frozen) return
    if (!bridge.client) bridge.toClient.push(String(event.data))
    else if (bridge.client.readyState === 1) bridge.client.send(String(event.data))
  })
  upstream.addEventListener('close', (event) => {
    bridges.delete(bridge)
    if (bridge.frozen) return
    if (!bridge.client) bridge.upstreamClosed = { code: event.code, reason: event.reason }
    else endClient(bridge.client, event.code, event.reason)
  })
  return bridge
}

export function startProxy(upstreamUrl: string): Proxy {
  const upstreamWs = upstreamUrl.replace(/^http/, 'ws')
  const bridges = new Set<Bridge>()
  const held: Array<(response: Response) => void> = []

  const server: Server<Bridge> = Bun.serve<Bridge>({
    hostname: '127.0.0.1',
    port: 0,
    async fetch(request, server) {
      const url = new URL(request.url)
      if (request.headers.get('upgrade')?.toLowerCase() === 'websocket') {
        proxy.upgradeAttempts++
        if (proxy.hangUpgrades) return new Promise<Response>((resolve) => held.push(resolve))
        if (proxy.refuseUpgrades) return new Response('upgrades blocked by proxy', { status: 503 })
        const bridge = bridgeTo(`${upstreamWs}${url.pathname}${url.search}`, bridges)
        if (!server.upgrade(request, { data: bridge })) {
          bridge.upstream.close()
          return new Response('upgrade failed', { status: 400 })
        }
        proxy.bridged++
        return undefined
      }
      proxy.requests.push(url.pathname)
      if (proxy.refuseHttp) return new Response('upstream unreachable', { status: 502 })
      const body = request.method === 'GET' || request.method === 'HEAD' ? undefined : await request.arrayBuffer()
      const headers = new Headers(request.headers)
      headers.delete('host')
      try {
        const answer = await fetch(`${upstreamUrl}${url.pathname}${url.search}`, { method: request.method, headers, body })
        // Streamed, not buffered, as a real proxy does: Server-Sent Events must pass through.
        return new Response(answer.body, { status: answer.status, headers: answer.headers })
      } catch (error) {
        return new Response(`upstream failed: ${String(error)}`, { status: 502 })
      }
    },
    websocket: {
      open(ws) {
        const bridge = ws.data
        bridge.client = ws
        for (const frame of bridge.toClient.splice(0)) ws.send(frame)
        if (bridge.upstreamClosed) return endClient(ws, bridge.upstreamClosed.code, bridge.upstreamClosed.reason)
        bridges.add(bridge)
      },
      message(ws, message) {
        const bridge = ws.data
        if (bridge.frozen) return
        const text = String(message)
        if (bridge.upstream.readyState === WebSocket.OPEN) bridge.upstream.send(text)
        else if (bridge.upstream.readyState === WebSocket.CONNECTING) bridge.queued.push(text)
      },
      close(ws) {
        bridges.delete(ws.data)
        const { upstream } = ws.data
        if (upstream.readyState === WebSocket.OPEN || upstream.readyState === WebSocket.CONNECTING) upstream.close()
      },
    },
  })

  const proxy: Proxy = {
    url: `http://127.0.0.1:${server.port}`,
    port: server.port!,
    refuseUpgrades: false,
    hangUpgrades: false,
    refuseHttp: false,
    upgradeAttempts: 0,
    bridged: 0,
    requests: [],
    get live() {
      return bridges.size
    },
    dropAll() {
      for (const bridge of [...bridges]) {
        bridges.delete(bridge)
        bridge.frozen = true // nothing more crosses this bridge
        bridge.client?.terminate()
        bridge.upstream.close()
      }
    },
    freezeAll() {
      for (const bridge of bridges) bridge.frozen = true
    },
    async stop() {
      for (const release of held.splice(0)) release(new Response('proxy stopped', { status: 503 }))
      for (const bridge of [...bridges]) {
        bridge.frozen = true
        bridge.upstream.close()
      }
      bridges.clear()
      await server.stop(true)
    },
  }
  return proxy
}
