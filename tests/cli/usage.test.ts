import { describe, expect, test } from 'bun:test'
import { runCli } from './helpers'

/** `--help` everywhere, usage errors (exit 2) and an unreachable service (exit 1), in plain words. */

const SUBCOMMANDS = ['serve', 'tail', 'publish', 'history', 'stats', 'prune', 'keys']

describe('help', () => {
  test('switchboard --help / -h / help: every command and the exit codes, exit 0 on stdout', async () => {
    const results = await Promise.all([runCli(['--help']), runCli(['-h']), runCli(['help'])])
    for (const { code, out, err } of results) {
      expect(code).toBe(0)
      expect(err).toBe('')
      expect(out).toStartWith('usage: switchboard [command]')
      for (const command of SUBCOMMANDS) expect(out).toContain(`  ${command}`)
      expect(out).toContain('exit codes: 0 ok, 1 failed')
    }
  })

  test('every subcommand has --help and -h (exit 0), and `help <command>` shows it', async () => {
    const runs = SUBCOMMANDS.flatMap((command) => [[command, '--help'], [command, '-h']]).concat([['help', 'publish']])
    const results = await Promise.all(runs.map((args) => runCli(args)))
    results.forEach(({ code, out, err }, i) => {
      const command = runs[i]![0] === 'help' ? runs[i]![1]! : runs[i]![0]!
      expect({ args: runs[i], code, err }).toEqual({ args: runs[i], code: 0, err: '' })
      expect(out).toContain(command === 'serve' ? 'usage: switchboard [serve]' : `usage: switchboard ${command}`)
    })
    const [serve] = results
    // The serve help lists the settings flags, derived from the settings themselves.
    expect(serve!.out).toContain('--retention-hours <value>')
    expect(serve!.out).toContain('REALTIME_RETENTION_HOURS')
  })

  test('--version', async () => {
    const { code, out } = await runCli(['--version'])
    expect(code).toBe(0)
    expect(out).toMatch(/^switchboard \d+\.\d+\.\d+\n$/)
  })
})

describe('usage errors: exit 2, a plain message and the usage line on stderr', () => {
  const cases: Array<[string[], string]> = [
    [['frobnicate'], 'switchboard: unknown command "frobnicate"'],
    [['history', 'agent:a', '--bogus'], 'switchboard history: unknown option --bogus'],
    [['tail', 'agent:a', '--frobnicate=1'], 'switchboard tail: unknown option --frobnicate'],
    [['stats', '--nope'], 'switchboard stats: unknown option --nope'],
    [['prune', '--nope'], 'switchboard prune: unknown option --nope'],
    [['publish', 'x.y', '--nope'], 'switchboard publish: unknown option --nope'],
    [['tail'], 'switchboard tail: missing the channel id'],
    [['tail', 'not-a-channel'], '"not-a-channel" is not a channel id'],
    [['history'], 'switchboard history: missing the channel id'],
    [['history', 'agent:a', '--since=-1'], '--since must be a whole number ≥ 0, not "-1"'],
    [['history', 'agent:a', '--limit', 'many'], '--limit must be a whole number ≥ 1, not "many"'],
    [['history', 'agent:a', '--since'], 'option --since needs a value'],
    [['history', 'agent:a', '--json=yes'], 'option --json takes no value'],
    [['publish'], 'switchboard publish: missing the event type'],
    [['publish', 'x.y', '--payload', '{"a":'], '--payload is not valid JSON'],
    [['publish', 'x.y', '--payload', '[1,2]'], '--payload must be a JSON object'],
    [['publish', 'x.y', '--timestamp', 'yesterday'], '--timestamp must be Unix milliseconds or an ISO date'],
    [['publish', 'x.y', '--url', 'ftp://example.com'], '--url must be an http:// or https:// address'],
    [['stats', 'extra'], 'unexpected argument "extra"'],
    [['prune', '--retention-hours', 'abc'], 'REALTIME_RETENTION_HOURS="abc" is invalid: must be a number'],
    [['keys'], 'usage: switchboard keys <command>'],
    [['keys', 'rotate'], 'unknown command "rotate"'],
  ]
  test.each(cases)('%j', async (args, message) => {
    const { code, out, err } = await runCli(args)
    expect({ code, out }).toEqual({ code: 2, out: '' })
    expect(err).toContain(message)
    if (args[0] !== 'keys') expect(err).toContain('--help')
  })

  test('serve with a bad setting: the service\'s own invalid_config line and exit 2', async () => {
    const { code, out } = await runCli(['serve', '--port', 'abc'])
    expect(code).toBe(2)
    const line = JSON.parse(out.trim())
    expect(line).toMatchObject({ level: 'error', event: 'invalid_config' })
    expect(line.message).toContain('REALTIME_PORT')
    // Flags alone mean serve too.
    const bare = await runCli(['--port', 'abc'])
    expect(bare.code).toBe(2)
    expect(JSON.parse(bare.out.trim()).event).toBe('invalid_config')
  })
})

describe('an unreachable service: exit 1 and a clear message', () => {
  // Port 9 on loopback (discard): nothing listens there on a test machine.
  const url = 'http://127.0.0.1:9'
  const commands = [
    ['publish', 'test.happened', '--payload', '{}'],
    ['history', 'agent:a'],
    ['stats'],
    ['tail', 'agent:a'],
  ]
  test.each(commands)('%s', async (...args) => {
    const { code, out, err } = await runCli([...args, '--url', url])
    expect(code).toBe(1)
    expect(out).toBe('')
    expect(err).toContain(`switchboard ${args[0]}: cannot reach Switchboard at ${url}: connection refused`)
  })

  test('the default URL comes from REALTIME_PORT', async () => {
    const { code, err } = await runCli(['history', 'agent:a'], { REALTIME_PORT: '9' })
    expect(code).toBe(1)
    expect(err).toContain('cannot reach Switchboard at http://127.0.0.1:9')
  })
})
