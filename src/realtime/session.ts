import type { z } from 'zod'
import { AuthError, type Authenticator, type Principal } from '../auth'
import type { Config } from '../config'
import { ApiError, CloseCode, describeIssue, WsErrorCode } from '../errors'
import type { Logger } from '../log'
import type { Metrics } from '../metrics'
import { MAX_JSON_DEPTH, nestsDeeperThan } from '../json'
import {
  CLIENT_MESSAGE_TYPES,
  type ClientMessage,
  clientMessage,
  historyRequest,
  type ServerMessage,
  type callMessage,
  type helloMessage,
  type subscribeMessage,
} from '../model/protocol'
import type { EventService, Replay } from '../modules/events/service'
import { FixedWindow } from '../rate-limit'
import type { EventStore, StoredEvent } from '../store/event-store'
import { eventFrame } from './frames'
import type { Hub, Socket } from './hub'
import type { Presence } from './presence'
import type { Caller, Endpoint, RpcRouter } from './rpc'

/** Events per replay page; between pages the session yields, and waits for the socket to drain. */
export const REPLAY_PAGE = 500
/** A snapshot is sent in parts of at most this many entities or (about) bytes. */
const SNAPSHOT_PART_ENTITIES = 1000
const SNAPSHOT_PART_BYTES = 512 * 1024
/** Bytes queued on a socket past which a replay waits for Bun's drain callback. */
const REPLAY_HIGH_WATER = 1 << 20

type SubscribeMessage = z.infer<typeof subscribeMessage>

export interface SessionDeps {
  hub: Hub
  presence: Presence
  rpc: RpcRouter
  store: EventStore
  events: EventService
  auth: Authenticator
  config: Pick<Config, 'rateLimit' | 'authTimeoutMs' | 'sessionPolicy' | 'maxConnections' | 'maxConnectionsPerUser' | 'maxSubscriptions'>
  log: Logger
  metrics?: Metrics
  stats: () => Record<string, unknown>
}

/**
 * One WebSocket connection's protocol state: authentication, subscriptions, replays, rate limit.
 * Every timer and subscription it creates is released in `closed()`.
 */
export class Session {
  private principal: Principal | null = null
  /** channel → generation of its latest subscribe; a replay stops when its generation is stale. */
  private readonly subscriptions = new Map<string, number>()
  private generation = 0
  private authTimer: ReturnType<typeof setTimeout> | undefined
  private readonly rateWindow: FixedWindow | null
  /** Replays waiting for the socket to drain (allocated when one waits: most sockets never do). */
  private drainWaiters: Array<() => void> | undefined
  private isClosed = false
  private clientId: string | undefined
  /**
   * This connection in the RPC router, one object for its whole life: the caller of every call it
   * makes (so all are released when it goes) and, once it said `hello`, a target. Made when needed.
   */
  private self: (Endpoint & Caller & { kind?: string; methods: Set<string> }) | undefined
  private announced = false
  /**
   * Messages are handled one after another, each after the previous one's authentication has
   * settled, so `auth` followed at once by `subscribe` works. Replays run beside the inbox.
   */
  private inbox: Promise<void> = Promise.resolve()

  constructor(
    private readonly socket: Socket,
    private readonly deps: SessionDeps,
  ) {
    this.rateWindow = deps.config.rateLimit ? new FixedWindow(deps.config.rateLimit) : null
  }

  /**
   * Called once the socket is open. `queryToken` is `?token=` from the upgrade; `clientId` (`?clientId=`)
   * names the client in presence.
   */
  opened(queryToken: string | undefined, clientId: string | undefined): void {
    this.clientId = clientId && clientId.length <= 128 ? clientId : undefined
    this.deps.hub.add(this.socket)
    if (this.deps.hub.connections > this.deps.config.maxConnections) {
      this.deps.log.warn('connection_limit', { connections: this.deps.hub.connections })
      this.closeWith(CloseCode.TooManyConnections, 'connection limit reached', 'too_many_connections')
      return
    }
    if (!this.deps.auth.required) {
      this.inbox = this.deps.auth.authenticate(undefined).then((principal) => this.signedIn(principal))
    } else if (queryToken !== undefined) {
      this.inbox = this.authenticate(queryToken)
    } else {
      this.authTimer = setTimeout(() => {
        this.deps.log.info('auth_timeout')
        this.closeWith(CloseCode.AuthTimeout, 'no auth message in time', 'auth_timeout')
      }, this.deps.config.authTimeoutMs)
    }
  }

  received(raw: unknown): void {
    if (this.isClosed) return
    this.deps.metrics?.inbound.inc()
    if (!this.withinRateLimit()) {
      this.deps.log.warn('rate_limit_hit', { userId: this.principal?.userId })
      this.closeWith(CloseCode.RateLimited, 'rate limit exceeded', 'rate_limited')
      return
    }
    this.inbox = this.inbox.then(() => this.handle(raw)).catch((error) => this.failed(error))
  }

  private async handle(raw: unknown): Promise<void> {
    if (this.isClosed) return
    const message = this.parse(raw)
    if (!message) return
    if (!this.principal && message.type !== 'auth' && message.type !== 'ping') {
      this.error(WsErrorCode.NotAuthenticated, 'authenticate first: {"type":"auth","token":"…"}')
      return
    }
    switch (message.type) {
      case 'auth':
        return this.authenticate(message.token)
      case 'ping':
        return this.send({ type: 'pong' })
      case 'subscribe':
        // Not awaited: a long replay must not hold up pings and requests behind it.
        this.subscribe(message).catch((error) => this.failed(error))
        return
      case 'unsubscribe':
        return this.unsubscribe(message.channelId)
      case 'request':
        return this.request(message.id, message.action, message.payload ?? {})
      case 'hello':
        return this.hello(message)
      case 'call':
        return this.call(message)
      case 'result':
        if (!this.announced || !this.deps.rpc.result(this.rpcSelf(), message.id, message)) {
          this.error(WsErrorCode.UnknownCall, `no call ${JSON.stringify(message.id)} is waiting for this connection's result (answered already, timed out, or never made)`)
        }
        return
    }
  }

  /** Bun's drain callback: the socket's send buffer has room again. */
  drained(): void {
    const waiters = this.drainWaiters ?? []
    this.drainWaiters = undefined
    for (const wake of waiters) wake()
  }

  private signedIn(principal: Principal): void {
    if (this.isClosed) return
    this.principal = principal
    const { hub, config, log, presence } = this.deps
    const others = hub.signIn(this.socket, principal.orgId, principal.userId)
    if (config.sessionPolicy === 'single') {
      for (const other of others) other.close(CloseCode.SessionReplaced, 'a newer session of this user started')
      this.deps.metrics?.closes.inc({ reason: 'session_replaced' }, others.length)
    } else if (others.length >= config.maxConnectionsPerUser) {
      log.warn('connection_limit_per_user', { userId: principal.userId, connections: others.length })
      this.closeWith(CloseCode.TooManyConnections, 'connection limit for this user reached', 'too_many_connections')
      return
    }
    if (this.clientId) presence.socketOpened(principal, this.clientId)
  }

  private failed(error: unknown): void {
    if (this.isClosed) return // the database may already be closed on shutdown
    this.deps.log.error('session_error', { error: String(error) })
    this.error(WsErrorCode.Internal, 'internal error')
  }

  closed(): void {
    this.isClosed = true
    clearTimeout(this.authTimer)
    this.subscriptions.clear()
    this.drained()
    this.deps.hub.remove(this.socket)
    if (this.principal && this.clientId) this.deps.presence.socketClosed(this.principal, this.clientId)
    if (this.self) {
      if (this.principal && this.announced) this.deps.rpc.withdraw(this.principal, this.self)
      this.deps.rpc.callerGone(this.self)
    }
  }

  private async authenticate(token: string): Promise<void> {
    try {
      const principal = await this.deps.auth.authenticate(token)
      if (this.isClosed) return
      if (this.principal && (this.principal.orgId !== principal.orgId || this.principal.userId !== principal.userId)) {
        this.error(WsErrorCode.Forbidden, 'this connection is already authenticated as another principal')
        return
      }
      clearTimeout(this.authTimer)
      if (!this.principal) this.signedIn(principal)
      this.send({ type: 'authenticated', userId: principal.userId, orgId: principal.orgId })
    } catch (error) {
      const reason = error instanceof AuthError ? error.message : 'authentication failed'
      this.deps.log.info('auth_failed', { reason })
      this.closeWith(CloseCode.Unauthorized, reason, 'unauthorized')
    }
  }

  /**
   * Subscribes: live only; or first a replay of what came after `since`; or first the channel's
   * state (`snapshot`). A replay reads pages until one comes back short; that last read and the
   * topic subscription happen in one synchronous step, and events are committed and published in
   * one synchronous step too, so every event is either in a page or delivered live: no gap, no
   * duplicate. A snapshot is read in one step at a seq S and followed by the same replay from S.
   */
  private async subscribe(message: SubscribeMessage): Promise<void> {
    const { channelId, since, epoch, snapshot } = message
    const principal = this.principal!
    try {
      this.deps.events.authorizeChannel(principal, channelId, 'channelId')
    } catch (error) {
      this.error(WsErrorCode.Forbidden, (error as Error).message, { channelId })
      return
    }
    if (!this.subscriptions.has(channelId) && this.subscriptions.size >= this.deps.config.maxSubscriptions) {
      this.error(WsErrorCode.TooManySubscriptions, `at most ${this.deps.config.maxSubscriptions} channels per connection`, { channelId })
      return
    }
    const generation = ++this.generation
    this.subscriptions.set(channelId, generation)
    const { hub, store } = this.deps
    const { orgId } = principal
    hub.unsubscribe(this.socket, orgId, channelId)
    const subscribed = { type: 'subscribed' as const, channelId, epoch: store.epoch }

    if (since === undefined && !snapshot) {
      // Subscribing and reading lastSeq in one step: every later event of the channel arrives live,
      // so `lastSeq` is an exact cursor to resume from.
      hub.subscribe(this.socket, orgId, channelId)
      this.send({ ...subscribed, lastSeq: store.lastSeq() })
      return
    }
    const replay = since === undefined ? undefined : this.deps.events.replayFrom(orgId, channelId, since, epoch)
    if (replay && (!snapshot || this.replayIsSmaller(orgId, channelId, replay))) {
      const mode = snapshot ? { mode: 'replay' as const } : {}
      this.send({ ...subscribed, ...mode, since: replay.from, ...(replay.truncated ? { truncated: true } : {}) })
      return this.replay(channelId, replay.from, generation)
    }
    const state = store.snapshot(orgId, channelId)
    this.send({ ...subscribed, mode: 'snapshot' })
    if (await this.sendSnapshot(channelId, state, generation)) await this.replay(channelId, state.seq, generation)
  }

  /** With since and snapshot: replay when the log holds everything after since and that is less to send. */
  private replayIsSmaller(orgId: string, channelId: string, replay: Replay): boolean {
    if (replay.truncated) return false
    const entities = this.deps.store.entityCounts(orgId, [channelId])[channelId] ?? 0
    return this.deps.store.countAfter(orgId, channelId, replay.from, entities + 1) <= entities
  }

  /** Sends a state in parts; false when the subscription was replaced or closed meanwhile. */
  private async sendSnapshot(channelId: string, state: { seq: number; entities: StoredEvent[] }, generation: number): Promise<boolean> {
    const head = `{"type":"snapshot","channelId":${JSON.stringify(channelId)},"seq":${state.seq},"entities":[`
    let index = 0
    do {
      if (this.subscriptions.get(channelId) !== generation) return false
      const frames: string[] = []
      let bytes = 0
      while (index < state.entities.length && frames.length < SNAPSHOT_PART_ENTITIES && bytes < SNAPSHOT_PART_BYTES) {
        const frame = eventFrame(state.entities[index++]!, channelId)
        frames.push(frame)
        bytes += frame.length
      }
      const done = index >= state.entities.length
      this.socket.send(`${head}${frames.join(',')}],"done":${done}}`)
      if (!done) await this.roomToSend()
    } while (index < state.entities.length)
    return true
  }

  /** Sends the channel's events after `after` page by page, then subscribes (see subscribe). */
  private async replay(channelId: string, after: number, generation: number): Promise<void> {
    const { hub, store } = this.deps
    const { orgId } = this.principal!
    for (;;) {
      if (this.subscriptions.get(channelId) !== generation) return // unsubscribed, resubscribed or closed
      const page = store.readChannel(orgId, channelId, after, REPLAY_PAGE)
      for (const event of page) this.socket.send(eventFrame(event, channelId))
      after = page.at(-1)?.seq ?? after
      if (page.length < REPLAY_PAGE) {
        hub.subscribe(this.socket, orgId, channelId)
        // Everything up to lastSeq is delivered: a cursor there is exact, even if the channel's
        // newest events were pruned (else the next resume would report them lost again).
        this.send({ type: 'caught_up', channelId, lastSeq: store.lastSeq() })
        return
      }
      await this.roomToSend()
    }
  }

  /** Announces (or re-announces) this connection for calls; pending calls to it stay valid. */
  private hello(message: z.infer<typeof helloMessage>): void {
    const principal = this.principal!
    const { presence, rpc } = this.deps
    if (this.clientId !== message.clientId) {
      if (this.clientId) presence.socketClosed(principal, this.clientId)
      presence.socketOpened(principal, message.clientId)
      this.clientId = message.clientId
    }
    const self = this.rpcSelf()
    // A new clientId: leave the router under the old one first (calls waiting on it fail at once).
    if (this.announced && self.clientId !== message.clientId) rpc.withdraw(principal, self)
    self.clientId = message.clientId
    self.kind = message.kind
    self.methods = new Set(message.methods)
    rpc.announce(principal, self)
    this.announced = true
    presence.describe(principal, message.clientId, message.kind, message.methods)
    this.send({ type: 'welcome', clientId: message.clientId, ...(message.kind ? { kind: message.kind } : {}), methods: message.methods })
  }

  private call(message: z.infer<typeof callMessage>): void {
    const { id, target, method, payload, timeoutMs } = message
    this.deps.rpc.call(this.principal!, this.rpcSelf(), { target, method, payload, timeoutMs }, (result) =>
      this.send({ type: 'result', id, ...result }),
    )
  }

  private rpcSelf(): NonNullable<Session['self']> {
    this.self ??= {
      clientId: '',
      methods: new Set(),
      deliver: (call) => this.send({ type: 'call', id: call.callId, method: call.method, payload: call.payload ?? null, from: call.from }),
    }
    return this.self
  }

  private unsubscribe(channelId: string): void {
    this.subscriptions.delete(channelId)
    this.deps.hub.unsubscribe(this.socket, this.principal!.orgId, channelId)
    this.send({ type: 'unsubscribed', channelId })
  }

  private request(requestId: string, action: string, payload: Record<string, unknown>): void {
    const principal = this.principal!
    try {
      switch (action) {
        case 'history': {
          const query = historyRequest.safeParse(payload)
          if (!query.success) throw new ApiError(400, 'invalid_payload', describeIssue(query.error.issues[0]!, 'payload'))
          const { channelId, since, limit } = query.data
          const page = this.deps.events.history(principal, { channel: channelId, since, limit })
          return this.send({ type: 'response', requestId, success: true, data: page })
        }
        case 'stats':
          return this.send({
            type: 'response',
            requestId,
            success: true,
            data: {
              ...this.deps.stats(),
              subscriptions: [...this.subscriptions.keys()],
              entities: this.deps.store.entityCounts(principal.orgId, [...this.subscriptions.keys()]),
            },
          })
        default:
          throw new ApiError(400, 'unknown_action', `unknown action ${JSON.stringify(action)} (known: history, stats)`)
      }
    } catch (error) {
      const message = error instanceof ApiError ? error.message : 'internal error'
      if (!(error instanceof ApiError)) this.deps.log.error('request_failed', { action, error: String(error) })
      this.send({ type: 'response', requestId, success: false, error: message })
    }
  }

  /** Yields to the event loop between replay pages, and waits while the socket is backed up. */
  private roomToSend(): Promise<void> {
    if (this.socket.getBufferedAmount() < REPLAY_HIGH_WATER) return new Promise((resolve) => setImmediate(resolve))
    return new Promise((resolve) => (this.drainWaiters ??= []).push(resolve))
  }

  private withinRateLimit(): boolean {
    return !this.rateWindow || this.rateWindow.hit(Date.now()) === 0
  }

  /** Validates one inbound frame (text or bytes, as Bun delivers it); answers bad input with an error frame. */
  private parse(frame: unknown): ClientMessage | undefined {
    if (typeof frame !== 'string') {
      this.error(WsErrorCode.InvalidMessage, 'binary frames are not supported: send JSON text')
      return undefined
    }
    let raw: unknown
    try {
      raw = JSON.parse(frame)
    } catch {
      this.error(WsErrorCode.InvalidJson, 'message is not valid JSON')
      return undefined
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      this.error(WsErrorCode.InvalidMessage, 'a message must be a JSON object')
      return undefined
    }
    if (nestsDeeperThan(raw)) {
      this.error(WsErrorCode.InvalidMessage, `message nests deeper than ${MAX_JSON_DEPTH} levels`)
      return undefined
    }
    const type = (raw as { type?: unknown }).type
    if (typeof type !== 'string' || !(CLIENT_MESSAGE_TYPES as string[]).includes(type)) {
      // Never echo what was sent at length: a string is cut short, anything else named by its kind.
      const shown = typeof type === 'string' ? JSON.stringify(type.slice(0, 64)) : type === undefined ? 'missing' : `of kind ${Array.isArray(type) ? 'array' : typeof type}`
      this.error(WsErrorCode.UnknownType, `unknown message type ${shown} (known: ${CLIENT_MESSAGE_TYPES.join(', ')})`)
      return undefined
    }
    const parsed = clientMessage.safeParse(raw)
    if (parsed.success) return parsed.data
    const issue = parsed.error.issues[0]!
    const requestId = (raw as { id?: unknown }).id
    const extra = type === 'request' && typeof requestId === 'string' ? { requestId } : {}
    const badChannel = issue.path[0] === 'channelId' && typeof (raw as { channelId?: unknown }).channelId === 'string'
    this.error(badChannel ? WsErrorCode.InvalidChannel : WsErrorCode.InvalidMessage, describeIssue(issue), extra)
    return undefined
  }

  private error(code: string, message: string, extra: { channelId?: string; requestId?: string } = {}): void {
    this.deps.metrics?.rejected.inc({ reason: code })
    this.send({ type: 'error', code, message, ...extra })
  }

  private closeWith(code: number, reason: string, metric: string): void {
    this.deps.metrics?.closes.inc({ reason: metric })
    this.socket.close(code, reason)
  }

  private send(message: ServerMessage): void {
    if (!this.isClosed) this.socket.send(JSON.stringify(message))
  }
}
