#!/usr/bin/env bun
/** `bun start`: run Switchboard from environment variables and flags until SIGINT/SIGTERM. */
import { ConfigError, loadConfig } from './config'
import { createLogger } from './log'
import { createRealtimeServer } from './server'

const bootLog = createLogger('info')
let config
try {
  config = loadConfig(process.env, process.argv.slice(2))
} catch (error) {
  if (!(error instanceof ConfigError)) throw error
  bootLog.error('invalid_config', { message: error.message })
  process.exit(2)
}

const server = createRealtimeServer(config)
// Handlers go in before `start` prints `listening`: a supervisor may signal the moment it sees it.
let starting: Promise<unknown> = Promise.resolve()
let stopping = false
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, async () => {
    if (stopping) return
    stopping = true
    bootLog.info('shutdown', { signal })
    await starting.catch(() => {})
    await server.stop()
    process.exit(0)
  })
}

starting = server.start()
try {
  await starting
} catch (error) {
  bootLog.error('start_failed', { message: (error as Error).message })
  process.exit(1)
}
