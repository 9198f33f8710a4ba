import type { Subprocess } from 'bun'
import { join } from 'node:path'

const ROOT = join(import.meta.dir, '..', '..')

export interface ServiceProcess {
  proc: Subprocess<'ignore', 'pipe', 'pipe'>
  port: number
  url: string
  /** Every JSON log line printed so far. */
  logs: any[]
  /** Resolves with the exit code. */
  exited: Promise<number>
}

/**
 * Runs `bun src/main.ts` (what `bun start` runs) as a separate process with the given settings,
 * and resolves once it prints its `listening` line.
 */
export async function spawnService(env: Record<string, string>, args: string[] = []): Promise<ServiceProcess> {
  const proc = Bun.spawn(['bun', join(ROOT, 'src/main.ts'), ...args], {
    cwd: ROOT,
    env: { ...process.env, REALTIME_HOST: '127.0.0.1', REALTIME_PORT: '0', REALTIME_RATE_LIMIT: 'off', ...env },
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
  })
  const logs: any[] = []
  let resolveListening: (line: any) => void = () => {}
  let rejectListening: (error: Error) => void = () => {}
  const listening = new Promise<any>((resolve, reject) => {
    resolveListening = resolve
    rejectListening = reject
  })
  ;(async () => {
    const decoder = new TextDecoder()
    let buffered = ''
    for await (const chunk of proc.stdout) {
      buffered += decoder.decode(chunk, { stream: true })
      let newline = buffered.indexOf('\n')
      while (newline >= 0) {
        const line = buffered.slice(0, newline)
        buffered = buffered.slice(newline + 1)
        newline = buffered.indexOf('\n')
        try {
          const parsed = JSON.parse(line)
          logs.push(parsed)
          if (parsed.event === 'listening') resolveListening(parsed)
        } catch {
          logs.push({ raw: line })
        }
      }
    }
  })()
  const exited = proc.exited
  exited.then(async (code) => rejectListening(new Error(`service exited with ${code} before listening: ${await new Response(proc.stderr).text()} ${JSON.stringify(logs)}`)))
  const line = await listening
  return { proc, port: line.port, url: line.url, logs, exited }
}
