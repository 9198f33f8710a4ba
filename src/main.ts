#!/usr/bin/env bun
/**
 * `bun start`: run Switchboard from environment variables and flags until SIGINT/SIGTERM.
 * The same code as `switchboard serve` (src/cli/serve.ts).
 */
import { runServe } from './cli/serve'

process.exit(await runServe(process.argv.slice(2), process.env))
