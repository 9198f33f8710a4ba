import type { Subprocess } from 'bun'
import { join } from 'node:path'

const ROOT = join(import.meta.dir, '..', '..')
export const ENTRY = join(ROOT, 'src/cli/index.ts')

/** The test process's environment without any REALTIME_* setting, plus `env`. */
export function cliEnv(env: Record<string, string> = {}): Record<string, string> {
  const base: Record<string, string> = {}
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith('REALTIME_') && value !== undefined) base[name] = value
  }
  return { ...base, ...env }
}

export interface CliResult {
  code: number
  out: string
  err: string
}

/** Runs `bun src/cli/index.ts …args` to completion (bounded: a hung command fails the test). */
export async function runCli(args: string[], env: Record<string, string> = {}, timeoutMs = 8000): Promise<CliResult> {
  const proc = Bun.spawn(['bun', ENTRY, ...args], { cwd: ROOT, env: cliEnv(env), stdin: 'ignore', stdout: 'pipe', stderr: 'pipe' })
  const timer = setTimeout(() => proc.kill(9), timeoutMs)
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited])
  clearTimeout(timer)
  if (proc.signalCode === 'SIGKILL') throw new Error(`switchboard ${args.join(' ')} did not finish within ${timeoutMs} ms: ${out} ${err}`)
  return { code, out, err }
}

/** A long-running command (tail, serve) whose output lines are collected as they come. */
export class CliProcess {
  readonly proc: Subprocess<'ignore', 'pipe', 'pipe'>
  readonly out: string[] = []
  readonly err: string[] = []
  readonly exited: Promise<number>

  constructor(args: string[], env: Record<string, string> = {}) {
    this.proc = Bun.spawn(['bun', ENTRY, ...args], { cwd: ROOT, env: cliEnv(env), stdin: 'ignore', stdout: 'pipe', stderr: 'pipe' })
    const outDone = collect(this.proc.stdout, this.out)
    const errDone = collect(this.proc.stderr, this.err)
    // Every line is read before the exit code is reported.
    this.exited = Promise.all([outDone, errDone]).then(() => this.proc.exited)
  }

  /** Resolves with the first line of `stream` matching `pattern`; fails if the process exits first or after `timeoutMs`. */
  async line(stream: 'out' | 'err', pattern: RegExp | string, timeoutMs = 5000): Promise<string> {
    const lines = this[stream]
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const found = lines.find((line) => (typeof pattern === 'string' ? line.includes(pattern) : pattern.test(line)))
      if (found !== undefined) return found
      if (this.proc.exitCode !== null) throw new Error(`exited ${this.proc.exitCode} before printing ${pattern}: ${this.describe()}`)
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${pattern}: ${this.describe()}`)
      await Bun.sleep(10)
    }
  }

  /** Sends `signal`; resolves with the exit code (bounded). */
  async stop(signal: NodeJS.Signals = 'SIGINT', timeoutMs = 5000): Promise<number> {
    this.proc.kill(signal)
    const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), timeoutMs).unref())
    const code = await Promise.race([this.exited, timeout])
    if (code === 'timeout') throw new Error(`did not exit within ${timeoutMs} ms of ${signal}: ${this.describe()}`)
    return code
  }

  /** Kills it if still running (afterEach). */
  async kill(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(9)
    await this.proc.exited
  }

  describe(): string {
    return JSON.stringify({ out: this.out, err: this.err })
  }
}

async function collect(stream: ReadableStream<Uint8Array>, into: string[]): Promise<void> {
  const decoder = new TextDecoder()
  let buffered = ''
  for await (const chunk of stream) {
    buffered += decoder.decode(chunk, { stream: true })
    let newline = buffered.indexOf('\n')
    while (newline >= 0) {
      into.push(buffered.slice(0, newline))
      buffered = buffered.slice(newline + 1)
      newline = buffered.indexOf('\n')
    }
  }
  if (buffered) into.push(buffered)
}
