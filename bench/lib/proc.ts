/**
 * Child processes of a benchmark run: the servers and the loaders. Every child is registered so the
 * run can stop them all at the end, on failure and on SIGINT/SIGTERM; every wait has a deadline.
 */
import type { Subprocess } from 'bun'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

export const ROOT = join(import.meta.dir, '..', '..')

type Child = Subprocess<'pipe' | 'ignore', 'pipe', 'pipe'>

export interface JsonProcess {
  name: string
  proc: Child
  pid: number
  /** Every JSON line printed on stdout so far (other lines are kept as `{ raw }`). */
  lines: any[]
  /** Resolves with the first line (already printed or still to come) that satisfies `match`. */
  waitFor(match: (line: any) => boolean, timeoutMs: number, what?: string): Promise<any>
  /** Writes one line to the child's stdin (only when spawned with stdin: 'pipe'). */
  send(line: string): void
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code. */
  stop(graceMs?: number): Promise<number | null>
  exited: Promise<number>
  stderr(): string
}

const live = new Set<JsonProcess>()

/**
 * Spawns a command whose stdout is JSON lines. With `raiseFdLimit`, the command runs through
 * `sh -c 'ulimit -n <hard>; exec …'` so its soft descriptor limit is raised to the hard one
 * (`exec` keeps the pid, so /proc/<pid> is the command's own).
 */
export function spawnJson(
  name: string,
  cmd: string[],
  options: { env?: Record<string, string>; stdin?: 'pipe' | 'ignore'; raiseFdLimit?: boolean; onLine?: (line: any) => void } = {},
): JsonProcess {
  const argv = options.raiseFdLimit ? ['sh', '-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"', 'sh', ...cmd] : cmd
  const proc = Bun.spawn(argv, {
    cwd: ROOT,
    env: { ...process.env, ...options.env },
    stdin: options.stdin ?? 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
  }) as Child
  const lines: any[] = []
  const waiters: Array<{ match: (line: any) => boolean; resolve: (line: any) => void }> = []
  let stderrText = ''
  let exitCode: number | null = null

  const readLines = async () => {
    const decoder = new TextDecoder()
    let buffered = ''
    for await (const chunk of proc.stdout) {
      buffered += decoder.decode(chunk, { stream: true })
      let newline = buffered.indexOf('\n')
      while (newline >= 0) {
        const text = buffered.slice(0, newline)
        buffered = buffered.slice(newline + 1)
        newline = buffered.indexOf('\n')
        let line: any
        try {
          line = JSON.parse(text)
        } catch {
          line = { raw: text }
        }
        lines.push(line)
        options.onLine?.(line)
        for (const waiter of [...waiters]) {
          if (waiter.match(line)) {
            waiters.splice(waiters.indexOf(waiter), 1)
            waiter.resolve(line)
          }
        }
      }
    }
  }
  const readErr = async () => {
    const decoder = new TextDecoder()
    for await (const chunk of proc.stderr) {
      const text = decoder.decode(chunk, { stream: true })
      stderrText = (stderrText + text).slice(-20_000)
      if (process.env.BENCH_VERBOSE) process.stderr.write(`[${name}] ${text}`)
    }
  }
  const stdoutDone = readLines()
  void readErr()
  const exited = proc.exited.then(async (code) => {
    await stdoutDone.catch(() => {})
    exitCode = code
    live.delete(child)
    return code
  })

  const child: JsonProcess = {
    name,
    proc,
    pid: proc.pid,
    lines,
    exited,
    stderr: () => stderrText,
    waitFor(match, timeoutMs, what = 'line') {
      const seen = lines.find(match)
      if (seen) return Promise.resolve(seen)
      return new Promise((resolve, reject) => {
        const waiter = {
          match,
          resolve: (line: any) => {
            clearTimeout(timer)
            resolve(line)
          },
        }
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(waiter), 1)
          reject(new Error(`${name}: no ${what} within ${timeoutMs} ms${describe()}`))
        }, timeoutMs)
        waiters.push(waiter)
        exited.then(() => {
          const late = lines.find(match)
          if (late) return waiter.resolve(late)
          clearTimeout(timer)
          const at = waiters.indexOf(waiter)
          if (at >= 0) waiters.splice(at, 1)
          reject(new Error(`${name} exited (${exitCode}) before printing its ${what}${describe()}`))
        })
      })
    },
    send(line) {
      const stdin = proc.stdin as unknown as { write(s: string): void; flush(): void } | undefined
      if (!stdin || exitCode !== null) return
      try {
        stdin.write(`${line}\n`)
        stdin.flush()
      } catch {
        // the child is gone; its exit is reported elsewhere
      }
    },
    async stop(graceMs = 10_000) {
      if (exitCode !== null) return exitCode
      proc.kill('SIGTERM')
      const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs)
      const code = await exited
      clearTimeout(timer)
      return code
    },
  }
  const describe = () => {
    const err = stderrText.trim().split('\n').slice(-15).join('\n')
    const out = lines.slice(-5).map((l) => JSON.stringify(l)).join('\n')
    return `${err ? `\n--- stderr ---\n${err}` : ''}${out ? `\n--- stdout ---\n${out}` : ''}`
  }
  live.add(child)
  return child
}

/** Stops every child still running (used at the end and on failure). */
export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((child) => child.stop(5_000).catch(() => null)))
}

/** Kills every child at once, synchronously (for process exit handlers). */
export function killAllNow(): void {
  for (const child of live) {
    try {
      child.proc.kill('SIGKILL')
    } catch {}
  }
}

/** Memory figures of a process from /proc/<pid>/status, in KiB. */
export function memoryOf(pid: number): { rssKiB: number; rssAnonKiB: number; hwmKiB: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN)
  return { rssKiB: field('VmRSS'), rssAnonKiB: field('RssAnon'), hwmKiB: field('VmHWM') }
}

/** CPU time (user + system) a process has used so far, in milliseconds, from /proc/<pid>/stat. */
export function cpuMsOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // fields[0] is state (field 3); utime is field 14, stime field 15.
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS
  } catch {
    return Number.NaN
  }
}

const CLOCK_TICKS = (() => {
  try {
    const out = Bun.spawnSync(['getconf', 'CLK_TCK']).stdout.toString().trim()
    return Number(out) || 100
  } catch {
    return 100
  }
})()

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
