import { afterAll, beforeAll, expect, test } from 'bun:test'
import { join } from 'node:path'
import type { BuildOutput } from 'bun'
import { ingest, makeEvent, startServer, tempDir, waitFor } from '../helpers/server'

/**
 * The client is for browsers too: `Bun.build` with target 'browser' must bundle it from
 * src/client/index.ts without any server code (bun:sqlite, Drizzle, jose, the Elysia runtime, or
 * the server's own modules); `type App` is erased. The bundle it produces must work.
 */

const ROOT = join(import.meta.dir, '..', '..')
let build: BuildOutput
let inputs: string[]

beforeAll(async () => {
  build = await Bun.build({ entrypoints: [join(ROOT, 'src/client/index.ts')], target: 'browser', format: 'esm', metafile: true })
  // Declared as the JSON string; Bun 1.4 hands the parsed object.
  const meta = build.metafile as unknown
  const parsed = (typeof meta === 'string' ? JSON.parse(meta) : meta) as { inputs: Record<string, unknown> }
  inputs = Object.keys(parsed.inputs)
})

test('builds for the browser', () => {
  expect(build.logs.filter((log) => log.level === 'error')).toEqual([])
  expect(build.success).toBe(true)
  expect(build.outputs).toHaveLength(1)
})

test('pulls in only the client, the shared model, Eden and zod', () => {
  expect(inputs).toContain('src/client/realtime-client.ts')
  const ours = inputs.filter((path) => !path.startsWith('node_modules/'))
  expect(ours.filter((path) => !path.startsWith('src/client/') && !path.startsWith('src/model/'))).toEqual([])
  const packages = new Set(inputs.filter((path) => path.startsWith('node_modules/')).map((path) => path.split('/').slice(1, path.startsWith('node_modules/@') ? 3 : 2).join('/')))
  expect([...packages].sort()).toEqual(['@elysiajs/eden', 'zod'])
})

test('the output names no server runtime', async () => {
  const text = await build.outputs[0]!.text()
  for (const forbidden of ['bun:sqlite', 'bun:', 'drizzle', 'jose', 'from "elysia"', "from 'elysia'", 'require("elysia")', 'sqlite', 'node:']) {
    expect(text.includes(forbidden) ? forbidden : null).toBeNull()
  }
  // Nothing left for a browser to resolve: the bundle has no imports of its own.
  expect(text).not.toMatch(/^\s*import\s/m)
})

let cleanup: (() => void) | undefined
afterAll(() => cleanup?.())

test('the bundle works: subscribe, ingest and receive through it', async () => {
  const tmp = tempDir()
  cleanup = tmp.cleanup
  const file = join(tmp.dir, 'client.browser.js')
  await Bun.write(file, build.outputs[0]!)
  const bundled = (await import(file)) as typeof import('../../src/client')
  const server = await startServer()
  const client = bundled.createRealtimeClient({ url: server.url, heartbeat: false, polling: false })
  try {
    const got: number[] = []
    client.subscribe('agent:bundled', (event) => {
      if (event.type === 'agent.spawned') got.push(event.seq)
    })
    await waitFor(() => client.state.status === 'open', 3000, 'open')
    const event = makeEvent({ type: 'agent.spawned', payload: { agentId: 'a', agentName: 'bundled', taskId: 't' } })
    expect((await ingest(server.url, event)).status).toBe(200)
    await waitFor(() => got.length === 1, 3000, 'the event')
    expect(await client.health()).toMatchObject({ status: 'ok', eventsStored: 1 })
    expect(bundled.isChannelId('agent:bundled')).toBe(true)
  } finally {
    client.close()
    await server.close()
  }
})
