import { afterEach, describe, expect, expectTypeOf, test } from 'bun:test'
import { z } from 'zod'
import {
  type Clock,
  type ConnectionStatus,
  createRealtimeClient,
  type HealthBody,
  type HistoryPage,
  type IngestResult,
  type KnownFrame,
  type OtherFrame,
  type PresenceEntry,
  type RealtimeClient,
} from '../../src/client'
import { startServer, type TestServer, waitFor } from '../helpers/server'

/**
 * Handler and API types. The expectTypeOf checks are checked by `bunx tsc --noEmit` (at run time
 * they do nothing); the functions holding them are never called. The last tests run the same
 * shapes against the real server, so the types describe what really arrives.
 */

const deployTypes = {
  'deploy.finished': z.object({ version: z.string(), ok: z.boolean() }),
}

function catalogueHandlers(client: RealtimeClient) {
  client.subscribe('agent:my-coder-agent', (event) => {
    expectTypeOf(event).toEqualTypeOf<KnownFrame>()
    expectTypeOf(event.seq).toEqualTypeOf<number>()
    expectTypeOf(event.channelId).toEqualTypeOf<string>()
    // Before narrowing, duration is only known to some types (payloads are loose objects): unknown.
    expectTypeOf(event.payload.duration).toEqualTypeOf<unknown>()
    // @ts-expect-error a type outside the catalogue never reaches this handler (it goes to onOther)
    if (event.type === 'test.happened') return

    if (event.type === 'agent.completed') {
      // No cast: the discriminated union narrows the payload.
      expectTypeOf(event.payload.duration).toEqualTypeOf<number>()
      expectTypeOf(event.payload.agentName).toEqualTypeOf<string>()
      expectTypeOf(event.payload.result).toEqualTypeOf<unknown>()
      expectTypeOf(event.payload.timestamp).toEqualTypeOf<number | undefined>()
    }
    switch (event.type) {
      case 'chief.task.progress':
        expectTypeOf(event.payload.progress).toEqualTypeOf<number>()
        expectTypeOf(event.payload.message).toEqualTypeOf<string>()
        break
      case 'task.status_changed':
        expectTypeOf(event.payload.newStatus).toEqualTypeOf<string>()
        break
      case 'tasks.purged':
        expectTypeOf(event.payload.taskIds).toEqualTypeOf<string[] | undefined>()
        break
      case 'chief.plan.created':
        expectTypeOf(event.payload.tasks).toEqualTypeOf<unknown[]>()
        break
      case 'session.started':
        expectTypeOf(event.payload.taskId).toEqualTypeOf<string | undefined>()
        break
    }
  })
  client.subscribe('agent:x', () => {}, {
    since: 41,
    epoch: 'e',
    onOther: (frame) => {
      expectTypeOf(frame).toEqualTypeOf<OtherFrame>()
      expectTypeOf(frame.type).toEqualTypeOf<string>()
      expectTypeOf(frame.payload).toEqualTypeOf<Record<string, unknown>>()
    },
  })
  expectTypeOf(client.subscribe('agent:x', () => {})).toEqualTypeOf<() => void>()
}

function customTypes() {
  const client = createRealtimeClient({ url: 'http://127.0.0.1:1', types: deployTypes })
  client.subscribe('project:web', (event) => {
    if (event.type === 'deploy.finished') {
      expectTypeOf(event.payload).toEqualTypeOf<{ version: string; ok: boolean }>()
    }
    if (event.type === 'agent.completed') expectTypeOf(event.payload.duration).toEqualTypeOf<number>()
  })
}

async function apiTypes(client: RealtimeClient) {
  expectTypeOf(client.ingest).returns.resolves.toEqualTypeOf<IngestResult>()
  expectTypeOf(client.history).returns.resolves.toEqualTypeOf<HistoryPage>()
  expectTypeOf(client.health).returns.resolves.toEqualTypeOf<HealthBody>()
  expectTypeOf(client.presence).returns.resolves.toEqualTypeOf<{ clients: PresenceEntry[] }>()
  expectTypeOf(await client.request('stats')).toEqualTypeOf<unknown>()
  expectTypeOf(await client.request<{ status: 'ok' }>('stats')).toEqualTypeOf<{ status: 'ok' }>()
  expectTypeOf(client.request).parameter(2).toEqualTypeOf<{ timeoutMs?: number } | undefined>()
  expectTypeOf(client.history).parameter(1).toEqualTypeOf<{ since?: number; limit?: number } | undefined>()

  const base = { id: crypto.randomUUID(), orgId: 'local', userId: 'local', timestamp: 0 }
  await client.ingest({ ...base, type: 'agent.spawned', payload: { agentId: 'a', agentName: 'b', taskId: 'c' } })
  await client.ingest({ events: [{ ...base, type: 'x.y', payload: {} }] })
  // @ts-expect-error an event needs an id, a type, orgId, userId, timestamp and payload
  await client.ingest({ type: 'x.y', payload: {} })
  // @ts-expect-error a payload is an object
  await client.ingest({ ...base, type: 'x.y', payload: 'text' })

  expectTypeOf(client.state.status).toEqualTypeOf<ConnectionStatus>()
  expectTypeOf<ConnectionStatus>().toEqualTypeOf<'connecting' | 'open' | 'reconnecting' | 'offline' | 'closed'>()
  expectTypeOf(client.state.transport).toEqualTypeOf<'websocket' | 'sse' | 'polling' | null>()
  expectTypeOf(client.state.reconnects).toEqualTypeOf<number>()
  expectTypeOf(client.state.lastError).toEqualTypeOf<string | null>()
  expectTypeOf(client.cursor('agent:x')).toEqualTypeOf<number | undefined>()
}

function options() {
  expectTypeOf<Clock>().toEqualTypeOf<{
    now(): number
    setTimeout(fn: () => void, ms: number): unknown
    clearTimeout(handle: unknown): void
    random(): number
  }>()
  createRealtimeClient({
    url: 'http://127.0.0.1:1',
    reconnect: { baseMs: 20, maxMs: 200, jitterMs: 10 },
    ping: { intervalMs: 50, timeoutMs: 100 },
    polling: { afterMs: 100, minMs: 50, maxMs: 200 },
    heartbeat: false,
    token: async () => 'token',
  })
  // @ts-expect-error the URL is required
  createRealtimeClient({ reconnect: false })
  // @ts-expect-error reconnect options are numbers
  createRealtimeClient({ url: 'http://127.0.0.1:1', reconnect: { baseMs: '1s' } })
}

test('the type checks above are compiled, not run', () => {
  for (const fn of [catalogueHandlers, customTypes, apiTypes, options]) expectTypeOf(fn).toBeFunction()
})

describe('the same shapes at run time', () => {
  let server: TestServer | undefined
  const clients: RealtimeClient<any>[] = []
  afterEach(async () => {
    for (const client of clients.splice(0)) client.close()
    await server?.close()
    server = undefined
  })

  test('catalogue and declared types reach the handler typed; other types reach onOther', async () => {
    server = await startServer()
    const client = createRealtimeClient({ url: server.url, types: deployTypes, heartbeat: false, polling: false })
    clients.push(client)
    const durations: number[] = []
    const deploys: Array<{ version: string; ok: boolean }> = []
    const others: string[] = []
    client.subscribe(
      'project:web',
      (event) => {
        if (event.type === 'agent.completed') durations.push(event.payload.duration)
        if (event.type === 'deploy.finished') deploys.push(event.payload)
      },
      { onOther: (frame) => others.push(frame.type) },
    )
    await waitFor(() => client.state.status === 'open', 3000, 'open')
    const base = { orgId: 'local', userId: 'local', timestamp: Date.now(), channels: ['project:web'] }
    const result = await client.ingest({
      events: [
        { ...base, id: crypto.randomUUID(), type: 'agent.completed', payload: { agentId: 'a', agentName: 'n', taskId: 't', result: null, duration: 1200 } },
        { ...base, id: crypto.randomUUID(), type: 'deploy.finished', payload: { version: '1.2.3', ok: true } },
        { ...base, id: crypto.randomUUID(), type: 'test.happened', payload: { n: 1 } },
      ],
    })
    expectTypeOf(result).toEqualTypeOf<IngestResult>()
    expect(result).toEqual({ stored: 3, duplicates: 0 })
    await waitFor(() => others.length === 1, 3000, 'all three events')
    expect(durations).toEqual([1200])
    expect(typeof durations[0]).toBe('number')
    expect(deploys).toEqual([{ version: '1.2.3', ok: true }])
    expect(others).toEqual(['test.happened'])
    const page = await client.history('project:web', { since: 0, limit: 2 })
    expect(page).toMatchObject({ hasMore: true, nextSeq: 2, lastSeq: 3, epoch: client.state.epoch! })
    expect((await client.health()).status).toBe('ok')
  })

  test('HTTP errors reject with the server code and status', async () => {
    server = await startServer()
    const client = createRealtimeClient({ url: server.url, heartbeat: false, polling: false, reconnect: false })
    clients.push(client)
    const error = await client
      .ingest({ id: crypto.randomUUID(), type: 'agent.completed', orgId: 'local', userId: 'local', timestamp: 0, payload: { duration: 'slow' } })
      .catch((e) => e)
    expect(error).toMatchObject({ status: 400, code: 'invalid_body' })
    expect(String(error.message)).toContain('payload')
    await expect(client.history('not a channel')).rejects.toMatchObject({ status: 400 })
  })
})
