import type { Server } from 'bun'
import type { StoredEvent } from '../store/event-store'
import type { Metrics } from '../metrics'
import { eventFrame, topicOf } from './frames'

/** What the hub and sessions need of a connection; Bun's ServerWebSocket has it all. */
export interface Socket {
  send(data: string): number
  close(code?: number, reason?: string): void
  subscribe(topic: string): void
  unsubscribe(topic: string): void
  getBufferedAmount(): number
}

/** A subscriber that is not a WebSocket (a Server-Sent Events stream): called per (event, channel). */
export type StreamListener = (event: StoredEvent, channelId: string) => void

/**
 * The connections of this process, and the only code that touches Bun's pub/sub. It knows which
 * topics each socket holds, so counts stay true and every subscription goes with its socket.
 * Streams (SSE) listen to the same organisation-scoped topics through `listen`.
 */
export class Hub {
  private server: Pick<Server<unknown>, 'publish' | 'subscriberCount'> | null = null
  private subscriptionCount = 0

  constructor(private readonly metrics?: Metrics) {}

  private readonly topicsOf = new Map<Socket, Set<string>>()
  private readonly subscribers = new Map<string, number>()
  /** Authenticated sockets per user (`orgId|userId`), for per-user limits and the session policy. */
  private readonly socketsOf = new Map<string, Set<Socket>>()
  private readonly userOf = new Map<Socket, string>()
  private readonly listeners = new Map<string, Set<StreamListener>>()

  attach(server: Pick<Server<unknown>, 'publish' | 'subscriberCount'>): void {
    this.server = server
  }

  add(socket: Socket): void {
    this.topicsOf.set(socket, new Set())
  }

  /** Forgets a socket and every topic it held (Bun unsubscribes a closed socket by itself). */
  remove(socket: Socket): void {
    const topics = this.topicsOf.get(socket)
    if (!topics) return
    for (const topic of topics) this.release(topic)
    this.subscriptionCount -= topics.size
    this.topicsOf.delete(socket)
    const user = this.userOf.get(socket)
    if (user === undefined) return
    this.userOf.delete(socket)
    const sockets = this.socketsOf.get(user)
    sockets?.delete(socket)
    if (sockets?.size === 0) this.socketsOf.delete(user)
  }

  /** Records whose socket this is; returns the user's other open sockets. */
  signIn(socket: Socket, orgId: string, userId: string): Socket[] {
    const user = `${orgId}|${userId}`
    let sockets = this.socketsOf.get(user)
    if (!sockets) {
      sockets = new Set()
      this.socketsOf.set(user, sockets)
    }
    const others = [...sockets]
    sockets.add(socket)
    this.userOf.set(socket, user)
    return others
  }

  /**
   * Closes sockets with more than `limitBytes` queued: they stopped reading. Run on an interval, so
   * the cost is one cheap call per socket, never per event. Bun's own hard limit (a multiple of this)
   * stays as the backstop for a burst between two sweeps.
   */
  closeSlowConsumers(limitBytes: number, code: number, reason: string): number {
    let closed = 0
    for (const socket of this.topicsOf.keys()) {
      if (socket.getBufferedAmount() > limitBytes) {
        socket.close(code, reason)
        closed++
      }
    }
    return closed
  }

  subscribe(socket: Socket, orgId: string, channelId: string): void {
    const topics = this.topicsOf.get(socket)
    const topic = topicOf(orgId, channelId)
    if (!topics || topics.has(topic)) return
    topics.add(topic)
    this.subscriptionCount++
    this.subscribers.set(topic, (this.subscribers.get(topic) ?? 0) + 1)
    socket.subscribe(topic)
  }

  unsubscribe(socket: Socket, orgId: string, channelId: string): void {
    const topic = topicOf(orgId, channelId)
    if (!this.topicsOf.get(socket)?.delete(topic)) return
    this.subscriptionCount--
    this.release(topic)
    socket.unsubscribe(topic)
  }

  /**
   * Sends committed events to the live subscribers of each of their channels, in order. A frame is
   * built only for a topic somebody holds, once per (event, channel), whatever the subscriber count.
   */
  deliver(events: readonly StoredEvent[]): void {
    const server = this.server
    if (!server || (this.subscribers.size === 0 && this.listeners.size === 0)) return
    const started = performance.now()
    let delivered = 0
    for (const event of events) {
      for (const channel of event.channels) {
        const topic = topicOf(event.orgId, channel)
        if (this.subscribers.has(topic)) {
          server.publish(topic, eventFrame(event, channel))
          delivered += server.subscriberCount(topic)
        }
        const listeners = this.listeners.get(topic)
        if (listeners) {
          for (const listener of listeners) listener(event, channel)
          delivered += listeners.size
        }
      }
    }
    this.metrics?.delivered.inc(delivered)
    this.metrics?.fanoutSeconds.observe((performance.now() - started) / 1000)
  }

  /** Adds a stream's listener to a channel; returns its removal. */
  listen(orgId: string, channelId: string, listener: StreamListener): () => void {
    const topic = topicOf(orgId, channelId)
    let set = this.listeners.get(topic)
    if (!set) {
      set = new Set()
      this.listeners.set(topic, set)
    }
    set.add(listener)
    return () => {
      const current = this.listeners.get(topic)
      if (!current?.delete(listener) || current.size > 0) return
      this.listeners.delete(topic)
    }
  }

  closeAll(code: number, reason: string): void {
    for (const socket of [...this.topicsOf.keys()]) socket.close(code, reason)
  }

  /** Channel subscriptions held by open sockets. */
  get subscriptions(): number {
    return this.subscriptionCount
  }

  get connections(): number {
    return this.topicsOf.size
  }

  /** Channels (organisation-scoped) with at least one live subscriber, socket or stream. */
  get channels(): number {
    let count = this.subscribers.size
    for (const topic of this.listeners.keys()) if (!this.subscribers.has(topic)) count++
    return count
  }

  private release(topic: string): void {
    const left = (this.subscribers.get(topic) ?? 1) - 1
    if (left > 0) this.subscribers.set(topic, left)
    else this.subscribers.delete(topic)
  }
}
