import type { StoredEvent } from '../store/event-store'

/**
 * Cross-process fan-out (Centrifuge's broker role, without history: that is the EventStore's).
 * Committed events go to `publish`; every node's hub receives them, in seq order.
 * In one process the broker hands them straight to the local hub. A Redis or Postgres broker would
 * publish to the other nodes too and feed the events it receives from them to the same `deliver`.
 */
export interface Broker {
  publish(events: readonly StoredEvent[]): void
  close(): void
}

export class LocalBroker implements Broker {
  constructor(private readonly deliver: (events: readonly StoredEvent[]) => void) {}

  publish(events: readonly StoredEvent[]): void {
    this.deliver(events)
  }

  close(): void {}
}
