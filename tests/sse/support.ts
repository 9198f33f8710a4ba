/**
 * Shared bits of the Server-Sent Events and RPC tests (not a test file): a raw `text/event-stream`
 * reader that keeps the exact bytes and every block, and JWT minting.
 */
import { SignJWT } from 'jose'

export const SECRET = 'switchboard-sse-rpc-secret-0123456789abcdef'

/** An HS256 JWT with `sub`, `org` and `exp`, as the server expects in `jwt` mode. */
export async function jwt(sub: string, org: string, secret = SECRET): Promise<string> {
  return new SignJWT({ org })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + 3600)
    .sign(new TextEncoder().encode(secret))
}

/** One block of a stream (the lines up to a blank line), with its fields. */
export interface Block {
  /** The block's lines exactly as sent. */
  lines: string[]
  id?: string
  event?: string
  data?: string
  retry?: string
  /** Set for a comment-only block (`: keep-alive`). */
  comment?: string
}

/**
 * Reads a Server-Sent Events response as it arrives: `raw` is every byte so far, `blocks` every
 * complete block. `next(match)` awaits the first block after the previous match that matches.
 */
export class SseReader {
  raw = ''
  readonly blocks: Block[] = []
  ended = false
  failed: unknown
  private cursor = 0
  private waiters: Array<() => void> = []
  readonly done: Promise<void>

  constructor(
    readonly response: Response,
    private readonly abort: AbortController,
  ) {
    this.done = this.read()
  }

  /** GET `url` as a stream (any status: check `response.status`; a non-stream body is read whole). */
  static async open(url: string, headers: Record<string, string> = {}): Promise<SseReader> {
    const abort = new AbortController()
    const response = await fetch(url, { headers: { accept: 'text/event-stream', ...headers }, signal: abort.signal })
    return new SseReader(response, abort)
  }

  /** Blocks that are event frames (a dotted event type). */
  get events(): Block[] {
    // Event frames are the blocks with a dotted event name (only the last frame of a seq has an id).
    return this.blocks.filter((block) => block.event?.includes('.'))
  }

  get comments(): string[] {
    return this.blocks.filter((block) => block.comment !== undefined).map((block) => block.comment!)
  }

  /** The first block after the last one `next` returned that matches; fails after `timeoutMs`. */
  async next(match: (block: Block) => boolean = () => true, timeoutMs = 5000): Promise<Block> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      while (this.cursor < this.blocks.length) {
        const block = this.blocks[this.cursor++]!
        if (match(block)) return block
      }
      if (this.ended) throw new Error(`stream ended while waiting for a block; raw tail: ${this.raw.slice(-500)}`)
      if (Date.now() > deadline) throw new Error(`no matching block within ${timeoutMs} ms; raw tail: ${this.raw.slice(-500)}`)
      await this.wait(deadline)
    }
  }

  /** Waits until `condition()` holds, re-checked whenever something arrives. */
  async until(condition: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!condition()) {
      if (this.ended) throw new Error(`stream ended while waiting for ${what}; raw tail: ${this.raw.slice(-500)}`)
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; raw tail: ${this.raw.slice(-300)}`)
      await this.wait(deadline)
    }
  }

  /** Resolves once the body ended (bounded). */
  async waitEnded(timeoutMs = 5000): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs)
    })
    const outcome = await Promise.race([this.done.then(() => 'done' as const), timeout])
    clearTimeout(timer)
    if (outcome === 'timeout') throw new Error(`the stream did not end within ${timeoutMs} ms`)
  }

  close(): void {
    this.abort.abort()
  }

  private wait(deadline: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, Math.max(1, deadline - Date.now()))
      this.waiters.push(() => {
        clearTimeout(timer)
        resolve()
      })
    })
  }

  private async read(): Promise<void> {
    const decoder = new TextDecoder()
    let buffer = ''
    try {
      if (!this.response.body) return
      for await (const chunk of this.response.body) {
        const text = decoder.decode(chunk, { stream: true })
        this.raw += text
        buffer += text
        let end = buffer.indexOf('\n\n')
        while (end >= 0) {
          this.blocks.push(parseBlock(buffer.slice(0, end)))
          buffer = buffer.slice(end + 2)
          end = buffer.indexOf('\n\n')
        }
        this.wake()
      }
    } catch (error) {
      this.failed = error
    } finally {
      this.ended = true
      this.wake()
    }
  }

  private wake(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }
}

function parseBlock(text: string): Block {
  const lines = text.split('\n')
  const block: Block = { lines }
  const data: string[] = []
  for (const line of lines) {
    if (line.startsWith(':')) {
      block.comment = line.slice(1).trim()
      continue
    }
    const colon = line.indexOf(':')
    const field = colon < 0 ? line : line.slice(0, colon)
    const value = colon < 0 ? '' : line.slice(colon + (line[colon + 1] === ' ' ? 2 : 1))
    if (field === 'data') data.push(value)
    else if (field === 'id' || field === 'event' || field === 'retry') block[field] = value
  }
  if (data.length > 0) block.data = data.join('\n')
  return block
}
