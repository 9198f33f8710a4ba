import type { Server } from 'bun'
import type { StoredEvent } from '../store/event-store'
import { eventFrame, topicOf } from './frames'

/** What the hub and sessions need of a connection; Bun's ServerWebSocket has it all. */
export interface Socket {
  send(data: string): number
  close(code?: number, reason?: string): void
  subscribe(topic: string): void
  unsubscribe(topic: string): void
  getBufferedAmount(): number
}

/**
 * The connections of this process, and the only code that touches Bun's pub/sub. It knows which
 * topics each socket holds, so counts stay true and every subscription goes with its socket.
 */
export class Hub {
  private server: Pick<Server<unknown>, 'publish'> | null = null
  private readonly topicsOf = new Map<Socket, Set<string>>()
  private readonly subscribers = new Map<string, number>()

  attach(server: Pick<Server<unknown>, 'publish'>): void {
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
    this.topicsOf.delete(socket)
  }

  subscribe(socket: Socket, orgId: string, channelId: string): void {
    const topics = this.topicsOf.get(socket)
    const topic = topicOf(orgId, channelId)
    if (!topics || topics.has(topic)) return
    topics.add(topic)
    this.subscribers.set(topic, (this.subscribers.get(topic) ?? 0) + 1)
    socket.subscribe(topic)
  }

  unsubscribe(socket: Socket, orgId: string, channelId: string): void {
    const topic = topicOf(orgId, channelId)
    if (!this.topicsOf.get(socket)?.delete(topic)) return
    this.release(topic)
    socket.unsubscribe(topic)
  }

  /**
   * Sends committed events to the live subscribers of each of their channels, in order. A frame is
   * built only for a topic somebody holds, once per (event, channel), whatever the subscriber count.
   */
  deliver(events: readonly StoredEvent[]): void {
    const server = this.server
    if (!server || this.subscribers.size === 0) return
    for (const event of events) {
      for (const channel of event.channels) {
        const topic = topicOf(event.orgId, channel)
        if (this.subscribers.has(topic)) server.publish(topic, eventFrame(event, channel))
      }
    }
  }

  closeAll(code: number, reason: string): void {
    for (const socket of [...this.topicsOf.keys()]) socket.close(code, reason)
  }

  get connections(): number {
    return this.topicsOf.size
  }

  /** Channels (organisation-scoped) with at least one live subscriber. */
  get channels(): number {
    return this.subscribers.size
  }

  private release(topic: string): void {
    const left = (this.subscribers.get(topic) ?? 1) - 1
    if (left > 0) this.subscribers.set(topic, left)
    else this.subscribers.delete(topic)
  }
}
