import { expect, test } from 'bun:test'
import { readEventStream, type StreamEvent } from '../../src/client/event-stream'

function streamOf(chunks: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder()
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk))
      controller.close()
    },
  })
}

async function read(chunks: string[]): Promise<StreamEvent[]> {
  const events: StreamEvent[] = []
  await readEventStream(streamOf(chunks), (event) => events.push(event))
  return events
}

test('named events with ids, comments, retry and multi-line data', async () => {
  expect(
    await read(['retry: 2000\n\n: keep-alive\n\nid: 7\nevent: agent.spawned\ndata: {"seq":7}\n\n', 'data: a\ndata: b\n\n']),
  ).toEqual([{ event: 'agent.spawned', data: '{"seq":7}', id: '7' }, { event: 'message', data: 'a\nb' }])
})

test('events split anywhere across chunks, and CRLF or CR line ends', async () => {
  const text = 'id: 1\r\nevent: x.y\r\ndata: {"a":1}\r\n\r\nid: 2\revent: x.z\rdata:{"b":2}\r\r'
  const chunks = text.split('')
  expect(await read(chunks)).toEqual([
    { event: 'x.y', data: '{"a":1}', id: '1' },
    { event: 'x.z', data: '{"b":2}', id: '2' },
  ])
})

test('an event without data is not dispatched; an unfinished last event is dropped', async () => {
  expect(await read(['id: 5\n\nevent: x.y\ndata: 1\n\nevent: x.y\ndata: 2'])).toEqual([{ event: 'x.y', data: '1' }])
})
