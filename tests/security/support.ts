/**
 * Shared bits of the security tests (not a test file): JWT minting, a line reader for child
 * processes, and a bounded wait for a child's exit.
 */
import type { Subprocess } from 'bun'
import { SignJWT } from 'jose'

export const SECRET = 'switchboard-security-secret-0123456789abcdef'

export interface TokenOptions {
  /** Expiry in seconds since the epoch; default one hour from now. */
  exp?: number
  secret?: string
}

/** An HS256 JWT with `sub`, `org` and `exp`, as the server expects in `jwt` mode. */
export async function jwt(sub: string, org: string, options: TokenOptions = {}): Promise<string> {
  return new SignJWT({ org })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime(options.exp ?? Math.floor(Date.now() / 1000) + 3600)
    .sign(new TextEncoder().encode(options.secret ?? SECRET))
}

export const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

/**
 * Collects the lines a child writes to a stream; `next(match)` awaits the first unconsumed line
 * matching `match` (bounded by `timeoutMs`).
 */
export class LineReader {
  readonly lines: string[] = []
  private consumed = 0
  private waiters: Array<() => void> = []
  ended = false
  readonly done: Promise<void>

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      const decoder = new TextDecoder()
      let buffered = ''
      for await (const chunk of stream) {
        buffered += decoder.decode(chunk, { stream: true })
        let newline = buffered.indexOf('\n')
        while (newline >= 0) {
          this.lines.push(buffered.slice(0, newline))
          buffered = buffered.slice(newline + 1)
          newline = buffered.indexOf('\n')
        }
        this.wake()
      }
      if (buffered) this.lines.push(buffered)
      this.ended = true
      this.wake()
    })()
  }

  /** The next unconsumed JSON line matching `match`, parsed. */
  async nextJson(match: (value: any) => boolean, timeoutMs = 5000): Promise<any> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      while (this.consumed < this.lines.length) {
        const line = this.lines[this.consumed++]!
        let value: any
        try {
          value = JSON.parse(line)
        } catch {
          continue
        }
        if (match(value)) return value
      }
      if (this.ended) throw new Error(`stream ended without a matching line; lines: ${this.lines.join('\n').slice(-1000)}`)
      if (Date.now() > deadline) throw new Error(`no matching line within ${timeoutMs} ms; lines: ${this.lines.join('\n').slice(-1000)}`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(1, deadline - Date.now()))
        this.waiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }

  private wake(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }
}

/** The exit code of `proc`, or a thrown error if it has not exited within `timeoutMs`. */
export async function exitWithin(proc: Subprocess, timeoutMs: number): Promise<number> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs)
  })
  const code = await Promise.race([proc.exited, timeout])
  clearTimeout(timer)
  if (code === 'timeout') throw new Error(`process ${proc.pid} did not exit within ${timeoutMs} ms`)
  return code
}

/** Stops a child for good: SIGCONT first (a stopped process cannot act on SIGKILL's peers), then SIGKILL. */
export async function killChild(proc: Subprocess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return
  try {
    process.kill(proc.pid, 'SIGCONT')
  } catch {}
  proc.kill('SIGKILL')
  await proc.exited
}
