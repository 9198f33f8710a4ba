import type { Principal } from '../auth'
import type { Logger } from '../log'
import type { Metrics } from '../metrics'
import type { EventService } from '../modules/events/service'
import type { EventStore, StoredEvent } from '../store/event-store'
import { eventFrame } from './frames'
import type { Hub } from './hub'
import { REPLAY_PAGE } from './session'

/** Queued bytes past which a replay waits for the reader (Bun pulls as the socket drains). */
const HIGH_WATER = 1 << 20
/** How often streams are checked for readers that stopped reading (as the socket sweep). */
const SLOW_READER_SWEEP_MS = 250
/** Sent first: how long a browser's EventSource waits before it reconnects. */
const RETRY_MS = 2000
/** A snapshot is sent in parts of at most this many entities (the socket protocol's rule). */
const SNAPSHOT_PART_ENTITIES = 1000

const encoder = new TextEncoder()
const BLOCK_END = encoder.encode('\n')
/**
 * `event:` and `data:` lines of an event on a channel, encoded once for every stream that gets it
 * (kept with the event object, so they go when it does): encoding per stream was the largest
 * part of SSE fan-out (BENCHMARKS.md).
 */
const encodedFrames = new WeakMap<StoredEvent, Map<string, Uint8Array>>()
/** The `id: <seq>` line that opens the event's last block, likewise shared. */
const encodedIds = new WeakMap<StoredEvent, Uint8Array>()

function frameBytes(event: StoredEvent, channel: string): Uint8Array {
  let byChannel = encodedFrames.get(event)
  if (!byChannel) {
    byChannel = new Map()
    encodedFrames.set(event, byChannel)
  }
  let bytes = byChannel.get(channel)
  if (!bytes) {
    bytes = encoder.encode(`event: ${event.type}\ndata: ${eventFrame(event, channel)}\n`)
    byChannel.set(channel, bytes)
  }
  return bytes
}

function idBytes(event: StoredEvent): Uint8Array {
  let bytes = encodedIds.get(event)
  if (!bytes) {
    bytes = encoder.encode(`id: ${event.seq}\n`)
    encodedIds.set(event, bytes)
  }
  return bytes
}

export interface StreamRequest {
  /** The channels to follow, in the caller's order (at least one). */
  channels: string[]
  /** Resume after this seq: Last-Event-ID, else `?since=`. */
  since?: number
  /** The database epoch `since` came from. */
  epoch?: string
  /** Start from the channels' state (`snapshot` events) instead of, or when smaller than, a replay. */
  snapshot: boolean
}

export interface StreamDeps {
  hub: Hub
  store: EventStore
  events: EventService
  log: Logger
  metrics?: Metrics
  /** Queued bytes past which a reader that stopped reading is cut off (as for sockets). */
  slowConsumerBytes: number
  /** A comment line this often keeps proxies from closing an idle stream. */
  keepAliveMs: number
}

/**
 * Server-Sent Events streams: the transport for clients behind proxies that refuse WebSocket
 * upgrades. Each event is `event: <type>`, `data: <the frame a socket gets>`, in seq order across
 * all the stream's channels; an event on several of them comes once per channel, as on a socket,
 * and only its last frame carries `id: <seq>`. So the one Last-Event-ID a browser sends back on
 * reconnect resumes every channel with no gap and no duplicate.
 */
export class Streams {
  private readonly open = new Set<() => void>()
  private readonly perCredential = new Map<string, number>()
  /** Each open stream's check for a reader that stopped reading. */
  private readonly checks = new Set<() => void>()
  private sweep: ReturnType<typeof setInterval> | undefined

  constructor(private readonly deps: StreamDeps) {}

  /** Open streams of a credential (for the per-credential limit). */
  countOf(credential: string): number {
    return this.perCredential.get(credential) ?? 0
  }

  get size(): number {
    return this.open.size
  }

  /** Ends every stream (shutdown); browsers reconnect on their own, resuming from their last id. */
  closeAll(): void {
    for (const end of [...this.open]) end()
  }

  /**
   * A stream is cut off only when its queue stays over the limit from one sweep to the next: a
   * reader that keeps reading drains a large replay page or commit in between.
   */
  private watch(check: () => void): () => void {
    this.checks.add(check)
    this.sweep ??= setInterval(() => {
      for (const each of [...this.checks]) each()
    }, SLOW_READER_SWEEP_MS)
    return () => {
      this.checks.delete(check)
      if (this.checks.size > 0) return
      clearInterval(this.sweep)
      this.sweep = undefined
    }
  }

  /** Opens a stream; `closed` aborts when the client goes away. */
  start(principal: Principal, request: StreamRequest, closed?: AbortSignal): Response {
    const { hub, store, events, log, slowConsumerBytes, keepAliveMs } = this.deps
    const credential = principal.credential ?? `${principal.orgId}|${principal.userId}`
    const following = new Set(request.channels)
    const removals: Array<() => void> = []
    // Replays pause well below the cut-off, so a reader that keeps up is never near it.
    const highWater = Math.min(HIGH_WATER, Math.floor(slowConsumerBytes / 2))
    // Bun's direct stream: chunks go straight to the socket, with no queue of their own. Until Bun
    // asks for the body (pull), what is written waits in `pending`.
    let controller: ReadableStreamDirectController | undefined
    let finish: (() => void) | undefined
    let overLimit = false
    /** Bytes handed to the socket that it has not taken yet (its writes returned promises). */
    let outstanding = 0
    let taken: Promise<unknown> = Promise.resolve()
    let keepAlive: ReturnType<typeof setInterval> | undefined
    let lastSeq = 0
    let ended = false
    // What is written in one turn of the event loop (a commit's events, a replay page) goes to
    // the stream as one chunk.
    let pending: Uint8Array[] = []
    let pendingBytes = 0
    const flush = () => {
      if (ended || !controller || pending.length === 0) return
      const parts = pending
      pending = []
      let chunk = parts[0]!
      if (parts.length > 1) {
        chunk = new Uint8Array(pendingBytes)
        let at = 0
        for (const part of parts) {
          chunk.set(part, at)
          at += part.length
        }
      }
      pendingBytes = 0
      try {
        const written = controller.write(chunk)
        const flushed = controller.flush()
        const wait = typeof flushed === 'number' ? (typeof written === 'number' ? undefined : written) : flushed
        if (wait) {
          outstanding += chunk.length
          taken = wait.then(
            () => {
              outstanding -= chunk.length
            },
            () => end(),
          )
        }
      } catch {
        end() // the reader went away
      }
    }
    const push = (bytes: Uint8Array) => {
      if (ended) return
      if (pending.length === 0) queueMicrotask(flush)
      pending.push(bytes)
      pendingBytes += bytes.length
    }

    const end = () => {
      if (ended) return
      flush()
      ended = true
      for (const remove of removals) remove()
      clearInterval(keepAlive)
      this.open.delete(end)
      const left = this.countOf(credential) - 1
      if (left > 0) this.perCredential.set(credential, left)
      else this.perCredential.delete(credential)
      try {
        controller?.close()
      } catch {
        // already closed by the reader going away
      }
      finish?.()
    }
    closed?.addEventListener('abort', end, { once: true })
    const write = (text: string) => push(encoder.encode(text))
    removals.push(
      this.watch(() => {
        const over = outstanding + pendingBytes > slowConsumerBytes
        if (over && overLimit) {
          log.warn('slow_consumers_closed', { closed: 1, transport: 'sse', limitBytes: slowConsumerBytes })
          this.deps.metrics?.closes.inc({ reason: 'slow_consumer' })
          write('event: slow_consumer\ndata: {"reason":"resume from your last event id"}\n\n')
          end()
        }
        overLimit = over
      }),
    )
    const send = (event: StoredEvent) => {
      // One frame per followed channel, as a socket gets; the id goes on the last, so a stream
      // cut between them resumes before the event rather than after half of it.
      const channels = event.channels.filter((candidate) => following.has(candidate))
      lastSeq = event.seq
      channels.forEach((channel, index) => {
        if (index === channels.length - 1) push(idBytes(event))
        push(frameBytes(event, channel))
        push(BLOCK_END)
      })
    }
    // Between replay pages: yield, and wait for the socket while it holds more than highWater.
    const room = async () => {
      await new Promise((resolve) => setImmediate(resolve))
      while (!ended && outstanding > highWater) await taken
    }

    const run = async () => {
      const { orgId } = principal
      const named = (event: string, data: unknown) => write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`)
      write(`retry: ${RETRY_MS}\n\n`)
      named('ready', { epoch: store.epoch, channels: request.channels })
      let after: number | undefined
      if (request.since !== undefined) {
        const epochChanged = request.epoch !== undefined && request.epoch !== store.epoch
        const replay = request.channels.reduce(
          (merged, channel) => {
            const one = events.replayFrom(orgId, channel, request.since!, request.epoch)
            return { from: Math.min(merged.from, one.from), truncated: merged.truncated || one.truncated }
          },
          { from: request.since, truncated: false },
        )
        if (epochChanged) named('epoch', { epoch: store.epoch, previous: request.epoch })
        if (replay.truncated) named('truncated', { since: replay.from, epoch: store.epoch })
        if (!request.snapshot || (!replay.truncated && this.replayIsSmaller(orgId, request.channels, replay.from))) after = replay.from
      }
      if (after === undefined && request.snapshot) {
        // Every channel's state read in one synchronous step: all complete up to the same seq.
        const states = request.channels.map((channel) => ({ channel, ...store.snapshot(orgId, channel) }))
        const seq = states[0]!.seq
        for (const { channel, entities } of states) {
          for (let index = 0; index === 0 || index < entities.length; index += SNAPSHOT_PART_ENTITIES) {
            const part = entities.slice(index, index + SNAPSHOT_PART_ENTITIES)
            const done = index + SNAPSHOT_PART_ENTITIES >= entities.length
            write(`event: snapshot\ndata: {"type":"snapshot","channelId":${JSON.stringify(channel)},"seq":${seq},"entities":[${part.map((event) => eventFrame(event, channel)).join(',')}],"done":${done}}\n\n`)
            if (ended) return
            await room()
          }
        }
        write(`id: ${seq}\n\n`)
        after = seq
      }
      after ??= store.lastSeq()
      // The replay ends with one synchronous read-then-listen, as for sockets (see Session.subscribe).
      for (;;) {
        if (ended) return
        const page = store.readChannels(orgId, request.channels, after, REPLAY_PAGE)
        for (const event of page) send(event)
        after = page.at(-1)?.seq ?? after
        if (page.length < REPLAY_PAGE) break
        await room()
      }
      if (ended) return
      lastSeq = Math.max(lastSeq, after)
      const live = (event: StoredEvent) => {
        if (event.seq > lastSeq) send(event)
      }
      for (const channel of request.channels) removals.push(hub.listen(orgId, channel, live))
      keepAlive = setInterval(() => write(': keep-alive\n\n'), keepAliveMs)
    }

    this.open.add(end)
    this.perCredential.set(credential, this.countOf(credential) + 1)
    run().catch((error) => {
      if (!ended) log.error('stream_failed', { error: String(error) })
      end()
    })
    const source: Bun.DirectUnderlyingSource<Uint8Array> = {
      type: 'direct',
      // Called once, when Bun starts sending the body; the stream lasts while the promise is pending.
      pull: (directController: ReadableStreamDirectController) => {
        controller = directController
        flush()
        return new Promise<void>((resolve) => {
          finish = resolve
          if (ended) resolve()
        })
      },
      cancel: end,
    }
    // bun-types declares the direct overload, but the DOM lib's ReadableStream shadows it.
    const DirectStream = ReadableStream as unknown as new (source: Bun.DirectUnderlyingSource<Uint8Array>) => ReadableStream<Uint8Array>
    return new Response(new DirectStream(source), {
      headers: {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        connection: 'keep-alive',
        // Tells nginx not to buffer the stream.
        'x-accel-buffering': 'no',
      },
    })
  }

  private replayIsSmaller(orgId: string, channels: string[], from: number): boolean {
    const entities = Object.values(this.deps.store.entityCounts(orgId, channels)).reduce((sum, n) => sum + n, 0)
    let pending = 0
    for (const channel of channels) {
      pending += this.deps.store.countAfter(orgId, channel, from, entities + 1)
      if (pending > entities) return false
    }
    return true
  }
}
