/**
 * A minimal Server-Sent Events reader over Bun.connect, the counterpart of raw-ws.ts for
 * `GET /api/events/stream`: one HTTP/1.1 request per connection, the chunked body decoded in place
 * and its lines scanned straight out of each TCP chunk, so a chunk holding many events costs one
 * callback and a loop (no fetch, no web stream, no string per event). Only what Switchboard sends
 * is handled: `event:`, `data:` (one line per event), `id:`, `retry:` and comment lines.
 *
 * Each `data:` line is handed to `onText` as byte offsets, like a WebSocket text frame, so the
 * loaders' frame helpers (sentAtOf, isFrameOfType) work on it unchanged; the `ready` event (the
 * stream is accepted and listening) goes to `onReady` instead.
 */
import type { Socket } from 'bun'
import { openRaw } from './raw-socket'

export interface RawSseHandlers {
  /** The data of one event (any but `ready`): bytes[start, end). `at`: when its chunk arrived. */
  onText(conn: RawSse, bytes: Uint8Array, start: number, end: number, at: number): void
  /** The `ready` event: the server follows the stream's channels from now on. */
  onReady?(conn: RawSse): void
  onClose?(conn: RawSse): void
}

const encoder = new TextEncoder()
const decoder = new TextDecoder()
const HEADER_END = encoder.encode('\r\n\r\n')
const DATA = encoder.encode('data: ')
const EVENT_READY = encoder.encode('event: ready')
const NL = 0x0a
const CR = 0x0d

export class RawSse {
  socket: Socket<RawSse> | null = null
  /** The response headers have arrived (status 200). */
  upgraded = false
  closed = false
  /** 1000 when the server ended the body (last chunk), 1006 when the connection ended without it. */
  closeCode = 0
  /** The HTTP status of the response. */
  status = 0
  private pending: Uint8Array | null = null
  private chunked = false
  /** Data bytes left in the current chunk (chunked encoding). */
  private chunkLeft = 0
  /** Bytes of the CRLF after a chunk's data still to skip. */
  private skip = 0
  private readingSize = true
  private sizeLine = ''
  /** An SSE line cut by a TCP or HTTP chunk boundary: its first part. */
  private partial: Uint8Array | null = null
  /** The current event is `ready`. */
  private isReady = false
  private open!: { resolve(conn: RawSse): void; reject(error: Error): void }

  constructor(
    readonly id: number,
    private readonly handlers: RawSseHandlers,
    private readonly clock: () => number,
  ) {}

  /** Ends the TCP connection at once (the load is over). */
  end(): void {
    this.closed = true
    this.socket?.end()
  }

  /** @internal */
  start(resolve: (conn: RawSse) => void, reject: (error: Error) => void): void {
    this.open = { resolve, reject }
  }

  /** @internal */
  request(host: string, port: number, path: string): void {
    this.socket?.write(encoder.encode(`GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nAccept: text/event-stream\r\n\r\n`))
  }

  /** @internal */
  feed(chunk: Uint8Array): void {
    if (this.closed) return // ended by us or by the last chunk: the rest (a trailer) means nothing
    const at = this.clock()
    let buf = chunk
    let pos = 0
    if (!this.upgraded) {
      if (this.pending) {
        buf = new Uint8Array(this.pending.length + chunk.length)
        buf.set(this.pending)
        buf.set(chunk, this.pending.length)
        this.pending = null
      }
      const end = indexOfBytes(buf, HEADER_END)
      if (end < 0) {
        if (buf.length > 16384) return this.fail(new Error('response head too long'))
        this.pending = new Uint8Array(buf)
        return
      }
      const head = decoder.decode(buf.subarray(0, end))
      this.status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0)
      if (this.status !== 200) {
        return this.fail(new Error(`stream refused: ${head.split('\r\n')[0]} ${decoder.decode(buf.subarray(end + 4, end + 304))}`))
      }
      this.chunked = /\r\ntransfer-encoding:\s*chunked/i.test(head)
      this.upgraded = true
      pos = end + 4
      this.open.resolve(this)
    }
    if (!this.chunked) return this.body(buf, pos, buf.length, at)
    const n = buf.length
    while (pos < n) {
      if (this.skip > 0) {
        const k = Math.min(this.skip, n - pos)
        this.skip -= k
        pos += k
        if (this.skip === 0) this.readingSize = true
      } else if (this.readingSize) {
        const newline = buf.indexOf(NL, pos)
        const stop = newline < 0 ? n : newline
        this.sizeLine += decoder.decode(buf.subarray(pos, stop))
        if (newline < 0) return
        pos = newline + 1
        const sizeLine = this.sizeLine
        this.sizeLine = ''
        const size = Number.parseInt(sizeLine.trim().split(';')[0]!, 16)
        if (!Number.isFinite(size)) return this.fail(new Error(`bad chunk size ${JSON.stringify(sizeLine.slice(0, 40))} in the response body`))
        if (size === 0) {
          // The server ended the stream (shutdown, slow_consumer): no more events will come.
          this.closeCode = 1000
          this.end()
          return
        }
        this.readingSize = false
        this.chunkLeft = size
      } else {
        const take = Math.min(this.chunkLeft, n - pos)
        this.body(buf, pos, pos + take, at)
        pos += take
        this.chunkLeft -= take
        if (this.chunkLeft === 0) this.skip = 2
      }
    }
  }

  /** Body bytes [start, end): complete lines are handled in place, a cut one is kept. */
  private body(buf: Uint8Array, start: number, end: number, at: number): void {
    let lineStart = start
    if (this.partial) {
      const newline = buf.indexOf(NL, start)
      if (newline < 0 || newline >= end) {
        this.partial = concat(this.partial, buf.subarray(start, end))
        return
      }
      const joined = concat(this.partial, buf.subarray(start, newline))
      this.partial = null
      this.line(joined, 0, joined.length, at)
      lineStart = newline + 1
    }
    for (;;) {
      const newline = buf.indexOf(NL, lineStart)
      if (newline < 0 || newline >= end) break
      this.line(buf, lineStart, newline, at)
      lineStart = newline + 1
    }
    if (lineStart < end) this.partial = new Uint8Array(buf.subarray(lineStart, end))
  }

  private line(buf: Uint8Array, start: number, end: number, at: number): void {
    if (end > start && buf[end - 1] === CR) end--
    if (end === start) {
      this.isReady = false // a blank line ends the event
      return
    }
    if (startsWith(buf, start, end, DATA)) {
      if (this.isReady) this.handlers.onReady?.(this)
      else this.handlers.onText(this, buf, start + DATA.length, end, at)
    } else if (end - start === EVENT_READY.length && startsWith(buf, start, end, EVENT_READY)) this.isReady = true
    // `event:` of other types, `id:`, `retry:` and `: comment` lines carry nothing the loaders use.
  }

  /** @internal */
  ended(): void {
    if (!this.upgraded) this.fail(new Error('connection closed before the response'))
    if (this.closeCode === 0) this.closeCode = 1006
    this.closed = true
    this.socket = null
    this.handlers.onClose?.(this)
  }

  /** @internal */
  fail(error: Error): void {
    this.closed = true
    this.socket?.end()
    this.open?.reject(error)
  }
}

/** Opens a socket and sends `GET path`; resolves once the server answered 200 with its headers. */
export function connectSse(
  host: string,
  port: number,
  path: string,
  id: number,
  handlers: RawSseHandlers,
  clock: () => number,
): Promise<RawSse> {
  const conn = new RawSse(id, handlers, clock)
  return openRaw(host, port, conn, (resolve, reject) => conn.start(resolve, reject), (open) => open.request(host, port, path))
}

function startsWith(buf: Uint8Array, start: number, end: number, prefix: Uint8Array): boolean {
  if (end - start < prefix.length) return false
  for (let i = 0; i < prefix.length; i++) if (buf[start + i] !== prefix[i]) return false
  return true
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length)
  out.set(a)
  out.set(b, a.length)
  return out
}

function indexOfBytes(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer
    return i
  }
  return -1
}
