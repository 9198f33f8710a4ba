import { afterEach, beforeEach, expect, test } from 'bun:test'
import { ingest, makeEvent, startServer, type TestServer } from '../helpers/server'
import { TestSocket } from '../helpers/ws'

let t: TestServer
beforeEach(async () => {
  t = await startServer()
})
afterEach(() => t.close())

test('a subscriber receives an ingested event as a flat frame on its channel', async () => {
  const socket = await TestSocket.open(t.wsUrl)
  const subscribed = await socket.request({ type: 'subscribe', channelId: 'agent:my-coder-agent' }, 'subscribed')
  expect(subscribed).toEqual({ type: 'subscribed', channelId: 'agent:my-coder-agent', epoch: expect.any(String), lastSeq: 0 })
  const event = makeEvent({ type: 'agent.spawned', payload: { agentId: 'a1', agentName: 'my-coder-agent', taskId: 't9' } })
  expect((await ingest(t.url, event)).body).toEqual({ stored: 1, duplicates: 0 })
  const [frame] = await socket.events('agent:my-coder-agent', 1)
  expect(frame).toEqual({ ...event, seq: 1, channelId: 'agent:my-coder-agent' })
  socket.close()
})
