/**
 * What every loader shares. A loader is a separate Bun process started by bench/run.ts with one
 * argument, its JSON config; it writes progress to stderr and its results as JSON lines on stdout
 * (the last one is `{"result": …}`). Every wait in a loader has a deadline.
 */
import { clock } from '../lib/stats'

export function config<T>(): T {
  const raw = process.argv[2]
  if (!raw) throw new Error('usage: bun bench/load/<loader>.ts <json config>')
  return JSON.parse(raw) as T
}

export function emit(line: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(line)}\n`)
}

export function progress(message: string): void {
  if (process.env.BENCH_VERBOSE) process.stderr.write(`${message}\n`)
}

/** Runs the loader's main; any failure is reported as `{"error"}` and exit code 1. */
export function main(run: () => Promise<void>): void {
  run()
    .then(() => process.exit(0))
    .catch((error) => {
      emit({ error: String((error as Error)?.stack ?? error) })
      process.exit(1)
    })
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `condition` every `pollMs` until it holds; throws after `timeoutMs`. */
export async function waitUntil(condition: () => boolean, timeoutMs: number, what: string, pollMs = 5): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(pollMs)
  }
}

/** Runs `task(i)` for i in [0, count) with at most `concurrency` running at once. */
export async function pool(count: number, concurrency: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0
  const worker = async () => {
    for (;;) {
      const i = next++
      if (i >= count) return
      await task(i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker))
}

/** The next line written to this process's stdin (bounded by `timeoutMs`; resolves null at EOF or timeout). */
export function stdinLines(): { next(timeoutMs: number): Promise<string | null> } {
  const queue: string[] = []
  const waiting: Array<(line: string | null) => void> = []
  let ended = false
  ;(async () => {
    const decoder = new TextDecoder()
    let buffered = ''
    for await (const chunk of Bun.stdin.stream()) {
      buffered += decoder.decode(chunk, { stream: true })
      let newline = buffered.indexOf('\n')
      while (newline >= 0) {
        const line = buffered.slice(0, newline)
        buffered = buffered.slice(newline + 1)
        newline = buffered.indexOf('\n')
        const waiter = waiting.shift()
        if (waiter) waiter(line)
        else queue.push(line)
      }
    }
    ended = true
    for (const waiter of waiting.splice(0)) waiter(null)
  })()
  return {
    next(timeoutMs) {
      if (queue.length > 0) return Promise.resolve(queue.shift()!)
      if (ended) return Promise.resolve(null)
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          waiting.splice(waiting.indexOf(done), 1)
          resolve(null)
        }, timeoutMs)
        const done = (line: string | null) => {
          clearTimeout(timer)
          resolve(line)
        }
        waiting.push(done)
      })
    },
  }
}

/** Send time carried in a payload: clock milliseconds with 3 decimals (exact in a double and in JSON). */
export const stamp = (at: number = clock()) => Math.round(at * 1000) / 1000

/**
 * One `bench.tick` event as JSON text, on exactly the given channel. `sentAt` is the payload's last
 * field, so it is the tail of every frame the servers send (see sentAtOf).
 */
export function tickEvent(id: string, channel: string, n: number, pad: string, sentAt: number): string {
  return `{"id":"${id}","type":"bench.tick","orgId":"local","userId":"bench","timestamp":${Math.floor(sentAt)},"channels":[${JSON.stringify(channel)}],"payload":{"n":${n},"pad":"${pad}","sentAt":${sentAt}}}`
}

/** POSTs a JSON body; returns the parsed answer, throwing on a non-2xx status. */
export async function postJson(url: string, body: string): Promise<any> {
  const response = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
  const text = await response.text()
  if (!response.ok) throw new Error(`POST ${url} → ${response.status} ${text.slice(0, 300)}`)
  return JSON.parse(text)
}

export function cpuMs(): number {
  const usage = process.cpuUsage()
  return (usage.user + usage.system) / 1000
}
