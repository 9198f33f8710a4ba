/** One Server-Sent Event: its `event` name ('message' when unnamed), `data`, and `id` if it had one. */
export interface StreamEvent {
  event: string
  data: string
  id?: string
}

/**
 * Reads a `text/event-stream` body (the WHATWG rules: `field: value` lines, a blank line ends an
 * event, `:` lines are comments) and calls `onEvent` per event until the body ends. A fetch-based
 * reader rather than EventSource: it can send an Authorization header, and Bun has it too.
 */
export async function readEventStream(body: ReadableStream<Uint8Array>, onEvent: (event: StreamEvent) => void): Promise<void> {
  const decoder = new TextDecoder()
  let buffer = ''
  let event = ''
  let data: string[] = []
  let id: string | undefined
  const line = (text: string) => {
    if (text === '') {
      if (data.length > 0) onEvent({ event: event || 'message', data: data.join('\n'), ...(id === undefined ? {} : { id }) })
      event = ''
      data = []
      id = undefined
      return
    }
    if (text.startsWith(':')) return
    const colon = text.indexOf(':')
    const field = colon < 0 ? text : text.slice(0, colon)
    const value = colon < 0 ? '' : text.slice(colon + (text[colon + 1] === ' ' ? 2 : 1))
    if (field === 'event') event = value
    else if (field === 'data') data.push(value)
    else if (field === 'id') id = value
  }
  const reader = body.getReader()
  // A CR may be the first half of a CRLF split across chunks: its LF must not end another line.
  let afterCR = false
  try {
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      buffer += decoder.decode(value, { stream: true })
      if (afterCR && buffer.startsWith('\n')) buffer = buffer.slice(1)
      afterCR = false
      let end = buffer.search(/[\r\n]/)
      while (end >= 0) {
        line(buffer.slice(0, end))
        if (buffer[end] === '\r' && end + 1 === buffer.length) afterCR = true
        buffer = buffer.slice(end + (buffer.startsWith('\r\n', end) ? 2 : 1))
        end = buffer.search(/[\r\n]/)
      }
    }
  } finally {
    reader.releaseLock()
  }
}
