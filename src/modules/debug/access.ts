import type { Config } from '../../config'

/**
 * Who may load the debug console.
 *
 * - `none` mode has no credentials: whoever reaches the API *is* the local principal. So the page is
 *   served only to a peer on a loopback address, and only under a loopback Host name: a remote page
 *   that rebinds its DNS name to 127.0.0.1 (Host: evil.example) is refused too, and so is a peer
 *   reaching a server bound to 0.0.0.0 from the network. When the peer address is unknown (the app
 *   driven through `app.handle`, with no socket), the Host check alone decides.
 * - `jwt` mode: the page is static content that shows nothing until the user gives a token; the
 *   data comes from the API, which checks that token like any other client's.
 */
export type DebugAccess = { allowed: true } | { allowed: false; reason: string }

export function debugAccess(mode: Config['auth']['mode'], peer: string | null | undefined, host: string | null | undefined): DebugAccess {
  if (mode === 'jwt') return { allowed: true }
  if (peer != null && !isLoopbackAddress(peer)) {
    return { allowed: false, reason: `the debug console is served only to loopback clients when REALTIME_AUTH=none (this request came from ${peer})` }
  }
  if (!isLoopbackHost(host)) {
    return { allowed: false, reason: 'the debug console is served only under a loopback host name (127.0.0.1, localhost, [::1]) when REALTIME_AUTH=none' }
  }
  return { allowed: true }
}

/** 127.0.0.0/8, ::1, and IPv4-mapped 127.x (`::ffff:127.0.0.1`). */
export function isLoopbackAddress(address: string): boolean {
  const ip = address.toLowerCase().replace(/^\[|\]$/g, '')
  if (ip === '::1' || ip === '0:0:0:0:0:0:0:1') return true
  const v4 = ip.startsWith('::ffff:') ? ip.slice(7) : ip
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4)
}

/** A Host header naming this machine: a loopback address or `localhost` (`*.localhost` resolves there too), any port. */
export function isLoopbackHost(host: string | null | undefined): boolean {
  if (!host) return false
  const name = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : host.replace(/:\d+$/, '')
  const lower = name.toLowerCase().replace(/\.$/, '')
  return lower === 'localhost' || lower.endsWith('.localhost') || isLoopbackAddress(lower)
}
