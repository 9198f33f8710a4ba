/**
 * A minimal WebSocket client over Bun.connect, for load generation. Bun's own WebSocket client
 * dispatches one JS event (with a decoded string) per message, which makes a loader with 1,000
 * subscribers slower than the server it measures. This one parses frame headers straight out of each
 * TCP chunk and hands the handler byte offsets, so a chunk of many frames costs one callback and a
 * loop. Text frames only, no extensions (permessage-deflate is never offered), no fragmentation
 * (the servers measured never fragment); pings are answered, close frames are recorded.
 */
import type { Socket } from 'bun'
import { openRaw } from './raw-socket'

export interface RawWsHandlers {
  /** A text frame: its payload is bytes[start, end). `at` is the clock reading when its chunk arrived. */
  onText(conn: RawWs, bytes: Uint8Array, start: number, end: number, at: number): void
  onClose?(conn: RawWs): void
}

const encoder = new TextEncoder()
const decoder = new TextDecoder()
const HEADER_END = encoder.encode('\r\n\r\n')

export class RawWs {
  socket: Socket<RawWs> | null = null
  upgraded = false
  closed = false
  /** Close code from the server's close frame (1006 if the TCP connection ended without one). */
  closeCode = 0
  private pending: Uint8Array | null = null
  private upgrade!: { resolve(conn: RawWs): void; reject(error: Error): void }

  constructor(
    readonly id: number,
    private readonly handlers: RawWsHandlers,
    private readonly clock: () => number,
  ) {}

  /** Sends one text frame (masked, as a client must). */
  sendText(text: string): void {
    const payload = encoder.encode(text)
    const len = payload.length
    const header = len < 126 ? 6 : len < 65536 ? 8 : 14
    const frame = new Uint8Array(header + len)
    frame[0] = 0x81
    if (len < 126) frame[1] = 0x80 | len
    else if (len < 65536) {
      frame[1] = 0x80 | 126
      frame[2] = len >> 8
      frame[3] = len & 0xff
    } else {
      frame[1] = 0x80 | 127
      new DataView(frame.buffer).setBigUint64(2, BigInt(len))
    }
    const mask = (Math.random() * 0x100000000) >>> 0
    const m = [mask >>> 24, (mask >>> 16) & 0xff, (mask >>> 8) & 0xff, mask & 0xff]
    frame.set(m, header - 4)
    for (let i = 0; i < len; i++) frame[header + i] = payload[i]! ^ m[i & 3]!
    this.write(frame)
  }

  /** Ends the TCP connection at once (no close handshake: the load is over). */
  end(): void {
    this.closed = true
    this.socket?.end()
  }

  private write(bytes: Uint8Array): void {
    const socket = this.socket
    if (!socket || this.closed) return
    const written = socket.write(bytes)
    // Frames sent by loaders are tiny; a short write means the socket is backed up, which the
    // loaders never do. Keep it correct anyway by writing the rest synchronously.
    if (written < bytes.length && written >= 0) socket.write(bytes.subarray(written))
  }

  /** @internal */
  startUpgrade(resolve: (conn: RawWs) => void, reject: (error: Error) => void): void {
    this.upgrade = { resolve, reject }
  }

  /** @internal */
  handshake(host: string, port: number, path: string): void {
    const key = Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString('base64')
    this.write(
      encoder.encode(
        `GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      ),
    )
  }

  /** @internal */
  feed(chunk: Uint8Array): void {
    const at = this.clock()
    let buf = chunk
    if (this.pending) {
      buf = new Uint8Array(this.pending.length + chunk.length)
      buf.set(this.pending)
      buf.set(chunk, this.pending.length)
      this.pending = null
    }
    let pos = 0
    if (!this.upgraded) {
      const end = indexOfBytes(buf, HEADER_END)
      if (end < 0) {
        if (buf.length > 16384) return this.fail(new Error('upgrade response too long'))
        this.pending = copy(buf, 0)
        return
      }
      const head = decoder.decode(buf.subarray(0, end))
      if (!/^HTTP\/1\.1 101 /.test(head)) return this.fail(new Error(`upgrade refused: ${head.split('\r\n')[0]}`))
      this.upgraded = true
      pos = end + 4
      this.upgrade.resolve(this)
    }
    const n = buf.length
    while (n - pos >= 2) {
      const b0 = buf[pos]!
      const b1 = buf[pos + 1]!
      let len = b1 & 0x7f
      let header = 2
      if (len === 126) {
        if (n - pos < 4) break
        len = (buf[pos + 2]! << 8) | buf[pos + 3]!
        header = 4
      } else if (len === 127) {
        if (n - pos < 10) break
        len = (buf[pos + 6]! * 0x1000000 + ((buf[pos + 7]! << 16) | (buf[pos + 8]! << 8) | buf[pos + 9]!)) + buf[pos + 5]! * 0x100000000
        header = 10
      }
      if (b1 & 0x80) header += 4 // a masked server frame would be a protocol error; skip the key
      if (n - pos < header + len) break
      const start = pos + header
      const end = start + len
      const opcode = b0 & 0x0f
      if (opcode === 1 || opcode === 2 || opcode === 0) this.handlers.onText(this, buf, start, end, at)
      else if (opcode === 9) this.pong(buf.subarray(start, end))
      else if (opcode === 8) this.closeCode = len >= 2 ? (buf[start]! << 8) | buf[start + 1]! : 1005
      pos = end
    }
    if (pos < n) this.pending = copy(buf, pos)
  }

  /** @internal */
  ended(): void {
    if (!this.upgraded) this.fail(new Error('connection closed before the upgrade'))
    if (this.closeCode === 0) this.closeCode = 1006
    this.closed = true
    this.socket = null
    this.handlers.onClose?.(this)
  }

  /** @internal */
  fail(error: Error): void {
    this.closed = true
    this.socket?.end()
    this.upgrade?.reject(error)
  }

  private pong(payload: Uint8Array): void {
    const frame = new Uint8Array(6 + payload.length)
    frame[0] = 0x8a
    frame[1] = 0x80 | payload.length
    frame.set(payload, 6) // zero mask key: payload unchanged
    this.write(frame)
  }
}

/** Opens a socket and performs the WebSocket upgrade; resolves once the server answered 101. */
export function connectRaw(
  host: string,
  port: number,
  path: string,
  id: number,
  handlers: RawWsHandlers,
  clock: () => number,
): Promise<RawWs> {
  const conn = new RawWs(id, handlers, clock)
  return openRaw(host, port, conn, (resolve, reject) => conn.startUpgrade(resolve, reject), (open) => open.handshake(host, port, path))
}

function copy(buf: Uint8Array, from: number): Uint8Array {
  return new Uint8Array(buf.subarray(from))
}

function indexOfBytes(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer
    return i
  }
  return -1
}

const SENT_AT = encoder.encode('"sentAt":')

/**
 * Reads the send time a loader put last in an event's payload: every event frame of both servers
 * ends with `…,"sentAt":<ms>}}`. Returns -1 for any other frame (subscribed, pong, errors).
 */
export function sentAtOf(bytes: Uint8Array, start: number, end: number): number {
  if (end - start < 14 || bytes[end - 1] !== 0x7d || bytes[end - 2] !== 0x7d) return -1
  let i = end - 3
  while (i > start && bytes[i] !== 0x3a) i--
  const keyStart = i - SENT_AT.length + 1
  if (keyStart < start) return -1
  for (let j = 0; j < SENT_AT.length; j++) if (bytes[keyStart + j] !== SENT_AT[j]) return -1
  let value = 0
  let scale = 0
  for (let k = i + 1; k < end - 2; k++) {
    const c = bytes[k]!
    if (c === 0x2e) scale = 1
    else {
      value = value * 10 + (c - 48)
      if (scale) scale *= 10
    }
  }
  return scale ? value / scale : value
}

/** True when the frame is a text frame starting with `{"type":"<type>"`. */
export function isFrameOfType(bytes: Uint8Array, start: number, end: number, type: string): boolean {
  const prefix = `{"type":"${type}"`
  if (end - start < prefix.length) return false
  for (let i = 0; i < prefix.length; i++) if (bytes[start + i] !== prefix.charCodeAt(i)) return false
  return true
}

export function frameText(bytes: Uint8Array, start: number, end: number): string {
  return decoder.decode(bytes.subarray(start, end))
}
