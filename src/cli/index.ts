#!/usr/bin/env bun
/**
 * `switchboard`: the command-line entry (package.json `bin`). It only dispatches; each command
 * lives in its own file and is loaded on demand, so `--help` and the client commands never load
 * the server.
 */
import { consoleIo, type Env, EXIT, type Io } from './common'
import pkg from '../../package.json' with { type: 'json' }

export const USAGE = `usage: switchboard [command] [options]

commands:
  serve                       run the service (the default: \`switchboard --port 4000\` serves too)
  tail <channel>              follow a channel live, one line per event  [--since N] [--json]
  publish <type>              publish one event  --payload '{…}' [--org --user --channel --key --id --timestamp]
  history <channel>           print a channel's stored events  [--since N] [--limit N] [--json]
  stats                       the service's health figures and stats  [--json]
  prune                       run retention on the database file now  [--db] [--retention-hours]
  keys <create|list|revoke>   manage API keys in the database file

Client commands (tail, publish, history, stats) talk to a running service: --url (default
http://127.0.0.1:$REALTIME_PORT, else port 3693) and --token (default $REALTIME_TOKEN) for
REALTIME_AUTH=jwt. serve, prune and keys use the settings (environment variables, or flags).

  switchboard <command> --help   options of a command
  -h, --help                     this text
  -v, --version                  the version

exit codes: 0 ok, 1 failed (server error, unreachable, refused), 2 usage error`

const COMMANDS = ['serve', 'tail', 'publish', 'history', 'stats', 'prune', 'keys'] as const

/** Runs one command line; resolves with the exit code. */
export async function main(argv: string[], env: Env, io: Io = consoleIo): Promise<number> {
  const [first, ...rest] = argv
  if (first === '-h' || first === '--help' || first === 'help') {
    if (first === 'help' && rest[0]) return main([rest[0], '--help'], env, io)
    io.out(USAGE)
    return EXIT.ok
  }
  if (first === '-v' || first === '--version') {
    io.out(`switchboard ${pkg.version}`)
    return EXIT.ok
  }
  // No command, or settings flags only: serve is the default.
  if (first === undefined || first.startsWith('-')) return (await import('./serve')).runServe(argv, env, io)
  switch (first as (typeof COMMANDS)[number]) {
    case 'serve':
      return (await import('./serve')).runServe(rest, env, io)
    case 'tail':
      return (await import('./tail')).runTail(rest, env, io)
    case 'publish':
      return (await import('./publish')).runPublish(rest, env, io)
    case 'history':
      return (await import('./history')).runHistory(rest, env, io)
    case 'stats':
      return (await import('./stats')).runStats(rest, env, io)
    case 'prune':
      return (await import('./prune')).runPrune(rest, env, io)
    case 'keys':
      return (await import('./keys')).runKeys(rest, env, io, Date.now, 'switchboard keys')
    default:
      io.err(`switchboard: unknown command ${JSON.stringify(first)} (commands: ${COMMANDS.join(', ')})`)
      io.err('usage: switchboard [command] [options]  (--help for details)')
      return EXIT.usage
  }
}

if (import.meta.main) {
  process.exit(await main(process.argv.slice(2), process.env))
}
