/**
 * A real WebSocket client for tests: every frame is queued, and `next` awaits the first one that
 * matches (consuming it and the non-matching frames before it are kept).
 */
export class TestSocket {
  readonly frames: any[] = []
  private waiters: Array<() => void> = []
  closed: { code: number; reason: string } | null = null
  private readonly opened: Promise<void>

  constructor(readonly ws: WebSocket) {
    this.opened = new Promise((resolve, reject) => {
      ws.addEventListener('open', () => resolve(), { once: true })
      ws.addEventListener('error', () => reject(new Error('websocket error before open')), { once: true })
    })
    ws.addEventListener('message', (event) => {
      this.frames.push(JSON.parse(String(event.data)))
      this.wake()
    })
    ws.addEventListener('close', (event) => {
      this.closed = { code: event.code, reason: event.reason }
      this.wake()
    })
  }

  static async open(url: string): Promise<TestSocket> {
    const socket = new TestSocket(new WebSocket(url))
    await socket.opened
    return socket
  }

  send(message: unknown): void {
    this.ws.send(typeof message === 'string' ? message : JSON.stringify(message))
  }

  /** Resolves with (and removes) the first queued frame matching `match`. */
  async next(match: (frame: any) => boolean = () => true, timeoutMs = 5000): Promise<any> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const index = this.frames.findIndex(match)
      if (index >= 0) return this.frames.splice(index, 1)[0]
      if (this.closed) throw new Error(`socket closed (${this.closed.code}) while waiting for a frame`)
      if (Date.now() > deadline) throw new Error(`no matching frame within ${timeoutMs} ms; have ${JSON.stringify(this.frames).slice(0, 500)}`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(1, deadline - Date.now()))
        this.waiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }

  /** Sends a message and awaits the frame of the given type. */
  async request(message: Record<string, unknown>, replyType: string): Promise<any> {
    this.send(message)
    return this.next((frame) => frame.type === replyType)
  }

  /** Collects `count` event frames (frames that carry a seq) of `channelId`. */
  async events(channelId: string, count: number, timeoutMs = 5000): Promise<any[]> {
    const out: any[] = []
    while (out.length < count) out.push(await this.next((f) => typeof f.seq === 'number' && f.channelId === channelId, timeoutMs))
    return out
  }

  async waitClosed(timeoutMs = 5000): Promise<{ code: number; reason: string }> {
    const deadline = Date.now() + timeoutMs
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('socket did not close')
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 50)
        this.waiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
    return this.closed
  }

  close(): void {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close()
  }

  private wake(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }
}
