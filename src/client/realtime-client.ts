import { isCatalogueType } from '../model/events'
import { isChannelId } from '../model/channels'
import type { ChannelState, HistoryPage, IngestBody, IngestResult, HealthBody, PresenceEntry } from '../model/http'
import { type BackoffOptions, backoffDelay, DEFAULT_BACKOFF } from './backoff'
import { type Clock, systemClock } from './clock'
import { createHttp, type Http, unwrap } from './http'
import { type LiveChannel, LiveStore } from './live'
import { readEventStream, type StreamEvent } from './event-stream'
import type { CallOrigin, ConnectionInfo, ConnectionStatus, CustomTypes, KnownFrame, MethodMap, OtherFrame } from './types'
import type { z } from 'zod'

/** Close codes after which retrying cannot help: a refused token, or a session replaced elsewhere. */
const FATAL_CLOSE_CODES = new Set([4401, 4002])
/** The code this client closes a socket with when the server stops answering pings. */
export const PONG_TIMEOUT_CLOSE = 4000
/** Pages fetched per channel in one poll, so a long backlog cannot hold a poll forever. */
const MAX_POLL_PAGES = 20
/** Event streams that failed in a row before the client settles for polling. */
const MAX_SSE_FAILURES = 2
/** How much longer than the server's own call timeout the client waits before giving up. */
const CALL_GRACE_MS = 1000

/** A call to another client failed; `code` says how (see the README's RPC section). */
export class RpcCallError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

export interface RealtimeClientOptions<C extends CustomTypes = {}, M extends MethodMap = {}> {
  /** The server's HTTP base URL, e.g. `http://127.0.0.1:3693`. */
  url: string
  /** A token for `jwt` mode, or a function returning a fresh one at each (re)connect. */
  token?: string | (() => string | Promise<string>)
  /** Identifies this client in presence (heartbeats and its socket). Default: a random UUID. */
  clientId?: string
  /** A label for presence, e.g. `desktop` or `web`. */
  kind?: string
  /** Event types the application adds to the catalogue: their frames reach handlers typed. */
  types?: C
  /** Methods this client answers or calls (request and response schemas): types `handle` and `call`. */
  methods?: M
  /** Events of types neither in the catalogue nor in `types` (unless a subscription has its own). */
  onOther?: (frame: OtherFrame) => void
  /** Events on a channel were lost (pruned, or the server's database was replaced): refetch state. */
  onTruncated?: (channelId: string) => void
  /** Reconnect backoff (base 1 s, cap 30 s, ±1 s jitter), or `false` never to reconnect. */
  reconnect?: Partial<BackoffOptions> | false
  /**
   * Application ping every `intervalMs` (25 s); no pong in `timeoutMs` (10 s) → reconnect. A connection
   * whose handshake (and authentication) is not done within `timeoutMs` is given up the same way.
   */
  ping?: { intervalMs?: number; timeoutMs?: number } | false
  /** HTTP heartbeat every `intervalMs` (30 s): presence stays right even when the socket is down. */
  heartbeat?: { intervalMs?: number } | false
  /**
   * When no socket could be established for `afterMs` (10 s), fall back — to Server-Sent Events
   * first (unless `sse: false`), to polling `/api/events/since` if streams fail too: every `minMs`
   * (5 s), backing off to `maxMs` (30 s) while idle or failing — until the socket works again.
   */
  polling?: { afterMs?: number; minMs?: number; maxMs?: number } | false
  /** Try Server-Sent Events before polling (default true). */
  sse?: boolean
  /** Default timeout of `request` (10 s). */
  requestTimeoutMs?: number
  clock?: Clock
  fetch?: typeof fetch
}

export interface SubscribeOptions {
  /** Replay stored events after this seq before live ones (only when the channel is first subscribed). */
  since?: number
  /** The epoch `since` came from; a different one makes the server replay from the start. */
  epoch?: string
  /** Events of types neither in the catalogue nor declared, on this subscription. */
  onOther?: (frame: OtherFrame) => void
}

export interface RealtimeClient<C extends CustomTypes = {}, M extends MethodMap = {}> {
  /** Receives every event of `channelId` exactly once, in seq order, across reconnects. Returns the unsubscribe. */
  subscribe(channelId: string, handler: (event: KnownFrame<C>) => void, options?: SubscribeOptions): () => void
  ingest(events: IngestBody): Promise<IngestResult>
  history(channelId: string, options?: { since?: number; limit?: number }): Promise<HistoryPage>
  health(): Promise<HealthBody>
  /** GET /api/presence: the clients of the caller's organisation seen recently. */
  presence(): Promise<{ clients: PresenceEntry[] }>
  /** A request over the socket; rejects on timeout, on an error answer and on disconnect. */
  request<T = unknown>(action: string, payload?: Record<string, unknown>, options?: { timeoutMs?: number }): Promise<T>
  /** The connection state; the same object until something changes (fits useSyncExternalStore). */
  readonly state: ConnectionInfo
  /** Calls `listener` on every state change; returns the unsubscribe. */
  onState(listener: (state: ConnectionInfo) => void): () => void
  /** The last seq delivered on a channel (0 before any), or undefined when not subscribed. */
  cursor(channelId: string): number | undefined
  /**
   * The channel's state (the latest event of every entity), kept current from its event stream and
   * re-fetched when events were lost. `getSnapshot`/`subscribe` fit React's useSyncExternalStore.
   */
  live(channelId: string): LiveChannel<C>
  /** GET /api/channels/:channelId/state. */
  channelState(channelId: string): Promise<ChannelState>
  /**
   * Answers calls of `method` from the user's other clients (announced with `hello` on every
   * connect). The payload and the answer are checked against `methods`; a thrown error reaches the
   * caller as an error. Returns the removal.
   */
  handle<K extends keyof M & string>(
    method: K,
    fn: (payload: z.output<M[K]['request']>, from: CallOrigin) => z.input<M[K]['response']> | Promise<z.input<M[K]['response']>>,
  ): () => void
  /** Calls `method` on another client of the same user (`target`: its clientId, or a kind). */
  call<K extends keyof M & string>(
    target: string,
    method: K,
    payload: z.input<M[K]['request']>,
    options?: { timeoutMs?: number },
  ): Promise<z.output<M[K]['response']>>
  /** Closes for good: no reconnect, pending requests rejected, timers cleared. */
  close(): void
}

interface Handler {
  known: (event: never) => void
  other?: (frame: OtherFrame) => void
  /** Called when the channel's cursor first becomes known, and when events were lost (truncated). */
  resync?: () => void
}

interface Subscription {
  handlers: Set<Handler>
  /** The last seq delivered; null until known (a live-only subscription before `subscribed`). */
  lastSeq: number | null
  epoch?: string
}

interface Pending {
  resolve(value: unknown): void
  reject(error: Error): void
  timer: unknown
}

export function createRealtimeClient<C extends CustomTypes = {}, M extends MethodMap = {}>(
  options: RealtimeClientOptions<C, M>,
): RealtimeClient<C, M> {
  return new Client<C, M>(options)
}

class Client<C extends CustomTypes, M extends MethodMap> implements RealtimeClient<C, M> {
  private readonly clock: Clock
  private readonly http: Http
  private readonly clientId: string
  private readonly backoff: BackoffOptions | null
  private readonly subs = new Map<string, Subscription>()
  private readonly pending = new Map<string, Pending>()
  /** Calls to other clients waiting for their result (rejected on disconnect like requests). */
  private readonly calls = new Map<string, Pending & { method: string }>()
  private readonly handlers = new Map<string, (payload: unknown, from: CallOrigin) => unknown>()
  /** The Server-Sent Events fallback while it runs. */
  private sse: { abort: AbortController } | null = null
  private sseFailures = 0
  private readonly listeners = new Set<(state: ConnectionInfo) => void>()
  private socket: WebSocket | null = null
  /** The socket is open and authenticated: subscribe and request frames may be sent. */
  private ready = false
  private attempt = 0
  private everOpened = false
  private closedByUser = false
  private requestCounter = 0
  private snapshot: ConnectionInfo
  private timers = {
    reconnect: undefined as unknown,
    ping: undefined as unknown,
    pong: undefined as unknown,
    heartbeat: undefined as unknown,
    pollStart: undefined as unknown,
    handshake: undefined as unknown,
    poll: undefined as unknown,
    sseRetry: undefined as unknown,
  }
  private polling = false
  private pollInterval = 0

  constructor(private readonly options: RealtimeClientOptions<C, M>) {
    this.clock = options.clock ?? systemClock
    this.clientId = options.clientId ?? crypto.randomUUID()
    this.backoff = options.reconnect === false ? null : { ...DEFAULT_BACKOFF, ...options.reconnect }
    this.http = createHttp(options.url, () => this.token(), options.fetch)
    this.snapshot = {
      status: 'connecting',
      transport: null,
      reconnects: 0,
      lastError: null,
      epoch: null,
      subscriptions: [],
      pendingRequests: 0,
      heartbeat: { lastOkAt: null, lastError: null },
    }
    this.connect()
    if (options.heartbeat !== false) this.beat()
  }

  // ── public API ──────────────────────────────────────────────────────────

  subscribe(channelId: string, handler: (event: KnownFrame<C>) => void, options: SubscribeOptions = {}): () => void {
    if (!isChannelId(channelId)) throw new TypeError(`invalid channel id ${JSON.stringify(channelId)}`)
    if (this.closedByUser) throw new Error('the client is closed')
    return this.addHandler(channelId, { known: handler as (event: never) => void, other: options.onOther }, options)
  }

  live(channelId: string): LiveChannel<C> {
    if (!isChannelId(channelId)) throw new TypeError(`invalid channel id ${JSON.stringify(channelId)}`)
    if (this.closedByUser) throw new Error('the client is closed')
    let stop = () => {}
    const store = new LiveStore<C>(
      () => this.channelState(channelId),
      this.clock,
      () => stop(),
      (type) => this.isKnownType(type),
      this.backoff ?? undefined,
    )
    const take = (frame: OtherFrame) => store.event(frame)
    stop = this.addHandler(channelId, { known: take as (event: never) => void, other: take, resync: () => void store.resync() }, {})
    // Joining a channel whose stream already has a cursor: the state can be fetched now.
    if (this.subs.get(channelId)?.lastSeq != null) void store.resync()
    return store
  }

  async channelState(channelId: string): Promise<ChannelState> {
    return unwrap(await this.http.api.channels({ channelId }).state.get()) as ChannelState
  }

  private addHandler(channelId: string, entry: Handler, options: SubscribeOptions): () => void {
    let sub = this.subs.get(channelId)
    if (!sub) {
      sub = { handlers: new Set(), lastSeq: options.since ?? null, epoch: options.epoch }
      this.subs.set(channelId, sub)
      if (this.ready) this.sendSubscribe(channelId, sub)
      this.restartSse()
      this.emit({})
    }
    sub.handlers.add(entry)
    return () => {
      const current = this.subs.get(channelId)
      if (!current?.handlers.delete(entry) || current.handlers.size > 0) return
      this.subs.delete(channelId)
      if (this.ready) this.send({ type: 'unsubscribe', channelId })
      this.restartSse()
      this.emit({})
    }
  }

  handle<K extends keyof M & string>(
    method: K,
    fn: (payload: z.output<M[K]['request']>, from: CallOrigin) => z.input<M[K]['response']> | Promise<z.input<M[K]['response']>>,
  ): () => void {
    this.handlers.set(method, fn as (payload: unknown, from: CallOrigin) => unknown)
    this.sendHello()
    return () => {
      if (this.handlers.get(method) !== fn) return
      this.handlers.delete(method)
      this.sendHello()
    }
  }

  call<K extends keyof M & string>(
    target: string,
    method: K,
    payload: z.input<M[K]['request']>,
    options: { timeoutMs?: number } = {},
  ): Promise<z.output<M[K]['response']>> {
    if (!this.ready) return Promise.reject(new Error(`not connected: cannot call ${method}`))
    const schema = this.options.methods?.[method]
    let checked: unknown = payload
    if (schema) {
      const parsed = schema.request.safeParse(payload)
      if (!parsed.success) return Promise.reject(new TypeError(`${method} payload: ${parsed.error.issues[0]?.message}`))
      checked = parsed.data
    }
    const id = `k${++this.requestCounter}`
    const timeoutMs = options.timeoutMs ?? this.options.requestTimeoutMs ?? 10_000
    return new Promise((resolve, reject) => {
      // The server times the call out itself; this is the backstop for a server that went silent.
      const timer = this.clock.setTimeout(() => {
        this.calls.delete(id)
        this.emit({})
        reject(new RpcCallError('timeout', `call ${method} timed out after ${timeoutMs} ms`))
      }, timeoutMs + CALL_GRACE_MS)
      this.calls.set(id, { method, resolve, reject, timer })
      this.send({ type: 'call', id, target, method, payload: checked ?? null, timeoutMs })
      this.emit({})
    })
  }

  /** Announces this connection: its id, kind and the methods it answers. */
  private sendHello(): void {
    if (!this.ready) return
    this.send({ type: 'hello', clientId: this.clientId, ...(this.options.kind ? { kind: this.options.kind } : {}), methods: [...this.handlers.keys()] })
  }

  /** A call from another client: run the handler, check both ends against `methods`, answer. */
  private async answer(frame: Record<string, any>): Promise<void> {
    const reply = (result: Record<string, unknown>) => this.send({ type: 'result', id: frame.id, ...result })
    const handler = this.handlers.get(frame.method)
    if (!handler) return reply({ success: false, error: `method ${JSON.stringify(frame.method)} is not handled here` })
    const schema = this.options.methods?.[frame.method]
    try {
      const payload = schema ? schema.request.parse(frame.payload) : frame.payload
      const data = await handler(payload, frame.from ?? { userId: '' })
      reply({ success: true, data: schema ? schema.response.parse(data) : (data ?? null) })
    } catch (error) {
      reply({ success: false, error: error instanceof Error ? error.message : String(error) })
    }
  }

  private settleCall(frame: Record<string, any>): void {
    const call = this.calls.get(frame.id)
    if (!call) return
    this.calls.delete(frame.id)
    this.clock.clearTimeout(call.timer)
    this.emit({})
    if (!frame.success) return call.reject(new RpcCallError(frame.code ?? 'call_failed', frame.error ?? 'the call failed'))
    const schema = this.options.methods?.[call.method]
    const parsed = schema ? schema.response.safeParse(frame.data) : { success: true as const, data: frame.data }
    if (parsed.success) call.resolve(parsed.data)
    else call.reject(new RpcCallError('invalid_response', `${call.method} answered: ${parsed.error.issues[0]?.message}`))
  }

  async ingest(events: IngestBody): Promise<IngestResult> {
    return unwrap(await this.http.ingest.post(events as never)) as IngestResult
  }

  async history(channelId: string, options: { since?: number; limit?: number } = {}): Promise<HistoryPage> {
    const query = { channel: channelId, since: options.since ?? 0, limit: options.limit ?? 100 }
    return unwrap(await this.http.api.events.since.get({ query })) as HistoryPage
  }

  async health(): Promise<HealthBody> {
    return unwrap(await this.http.health.get()) as HealthBody
  }

  async presence(): Promise<{ clients: PresenceEntry[] }> {
    return unwrap(await this.http.api.presence.get()) as { clients: PresenceEntry[] }
  }

  request<T = unknown>(action: string, payload?: Record<string, unknown>, options: { timeoutMs?: number } = {}): Promise<T> {
    if (!this.ready) return Promise.reject(new Error(`not connected: cannot send request ${action}`))
    const id = `r${++this.requestCounter}`
    const timeoutMs = options.timeoutMs ?? this.options.requestTimeoutMs ?? 10_000
    return new Promise<T>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        this.pending.delete(id)
        this.emit({})
        reject(new Error(`request ${action} timed out after ${timeoutMs} ms`))
      }, timeoutMs)
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject, timer })
      this.send({ type: 'request', id, action, ...(payload ? { payload } : {}) })
      this.emit({})
    })
  }

  get state(): ConnectionInfo {
    return this.snapshot
  }

  /** An arrow property, so `useSyncExternalStore(client.onState, () => client.state)` works unbound. */
  onState = (listener: (state: ConnectionInfo) => void): (() => void) => {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }


  cursor(channelId: string): number | undefined {
    const sub = this.subs.get(channelId)
    return sub ? (sub.lastSeq ?? 0) : undefined
  }

  close(): void {
    if (this.closedByUser) return
    this.closedByUser = true
    for (const timer of Object.values(this.timers)) this.clock.clearTimeout(timer)
    this.polling = false
    this.stopSse()
    this.dropSocket(1000, 'client closed')
    this.rejectPending('client closed')
    this.emit({ status: 'closed', transport: null })
  }

  // ── the socket ──────────────────────────────────────────────────────────

  private connect(): void {
    if (this.closedByUser) return
    this.emit({ status: this.falling ? this.snapshot.status : this.everOpened || this.attempt > 0 ? 'reconnecting' : 'connecting' })
    let socket: WebSocket
    try {
      socket = this.http.ws.subscribe({ query: { clientId: this.clientId } }).ws
    } catch (error) {
      this.socketLost(1006, String(error))
      return
    }
    this.socket = socket
    socket.onopen = () => void this.opened(socket)
    socket.onmessage = (event) => this.frame(event.data)
    socket.onerror = () => {
      // Not for a socket given up on: its error would hide why (e.g. 'connect timeout').
      if (this.socket === socket) this.emit({ lastError: 'websocket error' })
    }
    socket.onclose = (event) => {
      if (this.socket === socket) this.socketLost(event.code, event.reason)
    }
    // An upgrade nobody answers (a proxy holding it, a frozen server) would otherwise leave the
    // client waiting forever, with neither a retry nor the polling fallback.
    const ping = this.options.ping
    this.timers.handshake = this.clock.setTimeout(() => {
      if (this.socket !== socket || this.ready) return
      this.dropSocket(PONG_TIMEOUT_CLOSE, 'connect timeout')
      this.socketLost(PONG_TIMEOUT_CLOSE, 'connect timeout')
    }, (ping && ping.timeoutMs) || 10_000)
  }

  private async opened(socket: WebSocket): Promise<void> {
    if (!this.options.token) return this.becameReady()
    try {
      socket.send(JSON.stringify({ type: 'auth', token: await this.token() }))
    } catch (error) {
      this.emit({ lastError: `could not get a token: ${String(error)}` })
      socket.close()
    }
  }

  private becameReady(): void {
    this.clock.clearTimeout(this.timers.handshake)
    this.ready = true
    this.everOpened = true
    this.attempt = 0
    this.stopPolling()
    this.stopSse()
    this.startPing()
    this.sendHello()
    for (const [channelId, sub] of this.subs) this.sendSubscribe(channelId, sub)
    this.emit({ status: 'open', transport: 'websocket', lastError: null })
  }

  private sendSubscribe(channelId: string, sub: Subscription): void {
    const epoch = sub.epoch ?? this.snapshot.epoch ?? undefined
    this.send({
      type: 'subscribe',
      channelId,
      ...(sub.lastSeq === null ? {} : { since: sub.lastSeq }),
      ...(epoch && sub.lastSeq !== null ? { epoch } : {}),
    })
  }

  private frame(data: unknown): void {
    let frame: Record<string, any>
    try {
      frame = JSON.parse(String(data))
    } catch {
      return
    }
    // Event types are dotted; control frames' types never are.
    if (typeof frame.seq === 'number' && typeof frame.type === 'string' && frame.type.includes('.')) {
      return this.deliver(frame as OtherFrame)
    }
    switch (frame.type) {
      case 'authenticated':
        return this.becameReady()
      case 'subscribed':
        return this.subscribed(frame)
      case 'caught_up': {
        const sub = this.subs.get(frame.channelId)
        if (sub && typeof frame.lastSeq === 'number' && (sub.lastSeq === null || frame.lastSeq > sub.lastSeq)) sub.lastSeq = frame.lastSeq
        return
      }
      case 'pong':
        this.clock.clearTimeout(this.timers.pong)
        this.timers.pong = undefined
        return
      case 'response':
        return this.settle(frame.requestId, frame.success, frame.success ? frame.data : frame.error)
      case 'call':
        return void this.answer(frame)
      case 'result':
        return this.settleCall(frame)
      case 'error':
        if (typeof frame.requestId === 'string') return this.settle(frame.requestId, false, frame.message)
        this.emit({ lastError: `${frame.code}: ${frame.message}` })
        return
    }
  }

  private subscribed(frame: Record<string, any>): void {
    const sub = this.subs.get(frame.channelId)
    if (!sub) return
    sub.epoch = frame.epoch
    // The server says where its replay starts (it restarts from 0 when our cursor is void there),
    // or, for a live-only subscription, the newest seq at the moment it subscribed.
    const hadCursor = sub.lastSeq !== null
    if (typeof frame.since === 'number') sub.lastSeq = frame.since
    else if (sub.lastSeq === null && typeof frame.lastSeq === 'number') sub.lastSeq = frame.lastSeq
    if (frame.epoch !== this.snapshot.epoch) this.emit({ epoch: frame.epoch })
    if (frame.truncated) this.options.onTruncated?.(frame.channelId)
    if (frame.truncated || (!hadCursor && sub.lastSeq !== null)) this.resync(sub)
  }

  /** In the catalogue, or declared by the application with `types`: handlers get it typed. */
  private isKnownType(type: string): boolean {
    return isCatalogueType(type) || (this.options.types !== undefined && Object.hasOwn(this.options.types, type))
  }

  /** Tells state-keeping handlers (live stores) to fetch the channel's state again. */
  private resync(sub: Subscription): void {
    for (const handler of [...sub.handlers]) handler.resync?.()
  }

  /** Hands an event to its channel's handlers once: a seq at or below the cursor was delivered already. */
  private deliver(frame: OtherFrame): void {
    const sub = this.subs.get(frame.channelId)
    if (!sub || (sub.lastSeq !== null && frame.seq <= sub.lastSeq)) return
    sub.lastSeq = frame.seq
    const known = this.isKnownType(frame.type)
    for (const handler of [...sub.handlers]) {
      try {
        if (known) handler.known(frame as never)
        else (handler.other ?? this.options.onOther)?.(frame)
      } catch (error) {
        // A failing handler must not stop delivery to the others; surface it as an uncaught error.
        queueMicrotask(() => {
          throw error
        })
      }
    }
  }

  private settle(requestId: string, success: boolean, value: unknown): void {
    const pending = this.pending.get(requestId)
    if (!pending) return
    this.pending.delete(requestId)
    this.clock.clearTimeout(pending.timer)
    if (success) pending.resolve(value)
    else pending.reject(new Error(String(value)))
    this.emit({})
  }

  private socketLost(code: number, reason: string): void {
    this.socket = null
    this.ready = false
    this.clock.clearTimeout(this.timers.handshake)
    this.clock.clearTimeout(this.timers.ping)
    this.clock.clearTimeout(this.timers.pong)
    this.timers.pong = undefined
    this.rejectPending(`connection lost (${code}${reason ? `: ${reason}` : ''})`)
    if (this.closedByUser) return
    const lastError = code === 1000 ? this.snapshot.lastError : `closed ${code}${reason ? `: ${reason}` : ''}`
    if (FATAL_CLOSE_CODES.has(code) || !this.backoff) {
      this.stopPolling()
      this.stopSse()
      this.emit({ status: 'offline', transport: null, lastError })
      return
    }
    const delay = backoffDelay(this.attempt++, this.backoff, () => this.clock.random())
    this.timers.reconnect = this.clock.setTimeout(() => this.connect(), delay)
    const pollingOn = this.options.polling !== false
    if (pollingOn && !this.falling && this.timers.pollStart === undefined) {
      this.timers.pollStart = this.clock.setTimeout(() => {
        this.timers.pollStart = undefined
        if (!this.ready && !this.closedByUser && !this.falling) this.startFallback()
      }, this.options.polling ? (this.options.polling.afterMs ?? 10_000) : 10_000)
    }
    this.emit({
      status: this.falling ? this.snapshot.status : 'reconnecting',
      transport: this.polling ? 'polling' : this.sse ? 'sse' : null,
      reconnects: this.snapshot.reconnects + 1,
      lastError,
    })
  }

  /** Forgets the current socket (its events are ignored from now on) and closes it. */
  private dropSocket(code: number, reason: string): void {
    const socket = this.socket
    this.socket = null
    this.ready = false
    if (socket && socket.readyState !== WebSocket.CLOSED) socket.close(code, reason)
  }

  private startPing(): void {
    const ping = this.options.ping
    if (ping === false) return
    const intervalMs = ping?.intervalMs ?? 25_000
    const timeoutMs = ping?.timeoutMs ?? 10_000
    const tick = () => {
      if (!this.ready) return
      this.send({ type: 'ping' })
      // Timed from the oldest unanswered ping: re-arming it at every ping would never let it fire
      // when pings come more often than the timeout.
      this.timers.pong ??= this.clock.setTimeout(() => {
        // The server stopped answering without closing: treat the socket as dead.
        this.dropSocket(PONG_TIMEOUT_CLOSE, 'pong timeout')
        this.socketLost(PONG_TIMEOUT_CLOSE, 'pong timeout')
      }, timeoutMs)
      this.timers.ping = this.clock.setTimeout(tick, intervalMs)
    }
    this.timers.ping = this.clock.setTimeout(tick, intervalMs)
  }

  private send(message: Record<string, unknown>): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message))
  }

  private rejectPending(reason: string): void {
    if (this.pending.size === 0 && this.calls.size === 0) return
    for (const pending of this.pending.values()) {
      this.clock.clearTimeout(pending.timer)
      pending.reject(new Error(reason))
    }
    for (const call of this.calls.values()) {
      this.clock.clearTimeout(call.timer)
      call.reject(new RpcCallError('disconnected', reason))
    }
    this.pending.clear()
    this.calls.clear()
    this.emit({})
  }

  // ── HTTP heartbeat and the polling fallback ─────────────────────────────

  private async beat(): Promise<void> {
    if (this.closedByUser) return
    const heartbeat = this.options.heartbeat
    try {
      unwrap(await this.http.api.heartbeat.post({ clientId: this.clientId, ...(this.options.kind ? { kind: this.options.kind } : {}) }))
      this.emit({ heartbeat: { lastOkAt: this.clock.now(), lastError: null } })
    } catch (error) {
      this.emit({ heartbeat: { ...this.snapshot.heartbeat, lastError: String((error as Error).message ?? error) } })
    }
    if (this.closedByUser) return
    this.timers.heartbeat = this.clock.setTimeout(() => void this.beat(), (heartbeat && heartbeat.intervalMs) || 30_000)
  }

  /** A fallback transport (Server-Sent Events or polling) runs while the socket cannot. */
  private get falling(): boolean {
    return this.polling || this.sse !== null
  }

  private startFallback(): void {
    if (this.options.sse !== false && this.sseFailures < MAX_SSE_FAILURES) this.startSse()
    else this.startPolling()
  }

  private startSse(): void {
    this.sse?.abort.abort()
    const abort = new AbortController()
    this.sse = { abort }
    void this.runSse(abort)
  }

  private stopSse(): void {
    this.clock.clearTimeout(this.timers.sseRetry)
    this.sse?.abort.abort()
    this.sse = null
  }

  /** The stream's channels changed: open it again with the new set, resuming from the cursors. */
  private restartSse(): void {
    if (!this.sse) return
    this.stopSse()
    this.startSse()
  }

  /**
   * One event stream for every subscribed channel, from the lowest cursor: the per-channel seq
   * guard drops what a channel already had, so nothing repeats and nothing is skipped.
   */
  private async runSse(abort: AbortController): Promise<void> {
    const { polling } = this.options
    const retryMs = (polling && polling.minMs) || 5000
    try {
      for (const [channelId, sub] of [...this.subs]) {
        if (sub.lastSeq !== null) continue
        // A live-only subscription starts at the newest event, as a socket subscription would.
        const page = await this.page(channelId, 0, 1)
        if (abort.signal.aborted) return
        if (this.subs.get(channelId) === sub && sub.lastSeq === null) {
          sub.lastSeq = page.lastSeq
          this.resync(sub)
        }
      }
      const channels = [...this.subs.keys()]
      if (channels.length === 0) {
        // Nothing to follow yet: a subscribe opens the stream.
        this.emit({ status: 'open', transport: 'sse' })
        return
      }
      const url = new URL('/api/events/stream', this.options.url)
      for (const channel of channels) url.searchParams.append('channel', channel)
      const since = Math.min(...channels.map((channel) => this.subs.get(channel)?.lastSeq ?? 0))
      url.searchParams.set('since', String(since))
      if (this.snapshot.epoch) url.searchParams.set('epoch', this.snapshot.epoch)
      const token = await this.token()
      const response = await (this.options.fetch ?? fetch)(url, {
        headers: { accept: 'text/event-stream', ...(token ? { authorization: `Bearer ${token}` } : {}) },
        signal: abort.signal,
      })
      if (!response.ok || !response.body) throw new Error(`the event stream answered ${response.status}`)
      this.sseFailures = 0
      this.emit({ status: 'open', transport: 'sse', lastError: null })
      await readEventStream(response.body, (event) => {
        if (this.sse?.abort === abort) this.streamEvent(event, since)
      })
      if (this.sse?.abort === abort) this.sseRetry(abort, 'the event stream ended', retryMs)
    } catch (error) {
      if (abort.signal.aborted || this.sse?.abort !== abort) return
      this.sseFailures++
      this.sseRetry(abort, `event stream failed: ${(error as Error).message}`, retryMs)
    }
  }

  /** Handles one event of a stream that asked for everything after `asked`. */
  private streamEvent(event: StreamEvent, asked: number): void {
    switch (event.event) {
      case 'ready': {
        const { epoch } = JSON.parse(event.data) as { epoch: string }
        if (epoch !== this.snapshot.epoch) this.emit({ epoch })
        return
      }
      case 'truncated': {
        const { since } = JSON.parse(event.data) as { since: number }
        for (const [channelId, sub] of this.subs) {
          // The server restarts below what we asked (another database, or a cursor beyond its
          // newest seq): our cursors mean nothing there, so take its replay from where it starts.
          if (since < asked) sub.lastSeq = since
          this.options.onTruncated?.(channelId)
          this.resync(sub)
        }
        return
      }
      default:
        if (event.event.includes('.')) this.deliver(JSON.parse(event.data) as OtherFrame)
    }
  }

  /** The stream ended or failed: open another (or poll, after repeated failures) unless the socket is back. */
  private sseRetry(abort: AbortController, reason: string, delayMs: number): void {
    if (this.sse?.abort !== abort) return
    this.sse = null
    this.emit({ status: 'reconnecting', transport: null, lastError: reason })
    this.timers.sseRetry = this.clock.setTimeout(() => {
      if (!this.ready && !this.closedByUser && !this.falling) this.startFallback()
    }, delayMs)
  }

  private startPolling(): void {
    this.polling = true
    this.pollInterval = (this.options.polling && this.options.polling.minMs) || 5000
    void this.poll()
  }

  private stopPolling(): void {
    this.polling = false
    this.clock.clearTimeout(this.timers.poll)
    this.clock.clearTimeout(this.timers.pollStart)
    this.timers.pollStart = undefined
  }

  private async poll(): Promise<void> {
    const minMs = (this.options.polling && this.options.polling.minMs) || 5000
    const maxMs = (this.options.polling && this.options.polling.maxMs) || 30_000
    let delivered = 0
    try {
      for (const [channelId, sub] of [...this.subs]) delivered += await this.pollChannel(channelId, sub)
      if (this.polling) this.emit({ status: 'open', transport: 'polling' })
    } catch (error) {
      // Not delivering any more: 'open' comes back with the next poll that succeeds.
      if (this.polling) this.emit({ status: 'reconnecting', lastError: `polling failed: ${(error as Error).message}` })
    }
    if (!this.polling) return
    this.pollInterval = delivered > 0 ? minMs : Math.min(this.pollInterval * 2, maxMs)
    this.timers.poll = this.clock.setTimeout(() => void this.poll(), this.pollInterval)
  }

  private async pollChannel(channelId: string, sub: Subscription): Promise<number> {
    if (sub.lastSeq === null) {
      // A live-only subscription: start from the newest event, as a socket subscription would.
      const page = await this.page(channelId, 0, 1)
      // The socket may have come back meanwhile: its subscribe set the cursor (or will).
      if (this.polling && this.subs.get(channelId) === sub && sub.lastSeq === null) {
        sub.lastSeq = page.lastSeq
        this.resync(sub)
      }
      return 0
    }
    let delivered = 0
    for (let pages = 0; pages < MAX_POLL_PAGES && this.polling && this.subs.get(channelId) === sub; pages++) {
      const page = await this.page(channelId, sub.lastSeq ?? 0, 1000, sub.epoch ?? this.snapshot.epoch ?? undefined)
      if (!this.polling || this.subs.get(channelId) !== sub) break
      if (page.truncated) {
        // The page starts from the oldest stored event: accept it whatever our cursor said.
        sub.lastSeq = Math.min(sub.lastSeq ?? 0, (page.events[0]?.seq ?? 1) - 1)
        this.options.onTruncated?.(channelId)
        this.resync(sub)
      }
      sub.epoch = page.epoch
      if (page.epoch !== this.snapshot.epoch) this.emit({ epoch: page.epoch })
      for (const { channels: _, ...event } of page.events) {
        this.deliver({ ...event, channelId } as OtherFrame)
        delivered++
      }
      if (!page.hasMore) {
        // Nothing of the channel is pending up to the newest seq: a cursor there is exact, and
        // keeps a channel whose newest events were pruned from looking truncated at every poll.
        if (this.subs.get(channelId) === sub && page.lastSeq > (sub.lastSeq ?? 0)) sub.lastSeq = page.lastSeq
        break
      }
    }
    return delivered
  }

  private async page(channelId: string, since: number, limit: number, epoch?: string): Promise<HistoryPage> {
    const query = { channel: channelId, since, limit, ...(epoch ? { epoch } : {}) }
    return unwrap(await this.http.api.events.since.get({ query })) as HistoryPage
  }

  // ── state ───────────────────────────────────────────────────────────────

  private async token(): Promise<string | undefined> {
    const token = this.options.token
    return typeof token === 'function' ? await token() : token
  }

  private emit(patch: Partial<ConnectionInfo>): void {
    this.snapshot = {
      ...this.snapshot,
      ...patch,
      subscriptions: [...this.subs].map(([channelId, sub]) => ({ channelId, lastSeq: sub.lastSeq ?? 0 })),
      pendingRequests: this.pending.size + this.calls.size,
    }
    for (const listener of [...this.listeners]) listener(this.snapshot)
  }
}

export type { ConnectionStatus }
