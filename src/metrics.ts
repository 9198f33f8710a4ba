import { Counter, Gauge, Histogram, Registry } from 'prom-client'

/** What the gauges read at scrape time. */
export interface MetricsSources {
  connections(): number
  subscriptions(): number
  channels(): number
  streams(): number
  eventsStored(): number
  databaseBytes(): number
}

/**
 * Prometheus metrics (prom-client), exposed at GET /metrics. Counters are bumped once per batch
 * or per message, never per delivered frame: the fan-out path stays as fast as without them.
 */
export class Metrics {
  readonly registry = new Registry()
  readonly ingested = this.counter('switchboard_events_ingested_total', 'Events stored (from HTTP, in-process publish and upstream sync).')
  readonly deduplicated = this.counter('switchboard_events_deduplicated_total', 'Events not stored again because their id was already stored.')
  readonly delivered = this.counter('switchboard_events_delivered_total', 'Event frames sent live to subscribers (sockets and streams), one per subscriber.')
  readonly pruned = this.counter('switchboard_events_pruned_total', 'Events removed by retention.')
  readonly inbound = this.counter('switchboard_inbound_messages_total', 'WebSocket messages received.')
  readonly rejected = new Counter({
    name: 'switchboard_rejected_inputs_total',
    help: 'Inputs refused, by reason (the error code answered: invalid_body, invalid_json, unknown_type, forbidden, …).',
    labelNames: ['reason'],
    registers: [this.registry],
  })
  readonly closes = new Counter({
    name: 'switchboard_connection_closes_total',
    help: 'Connections closed by the server, by reason (rate_limited, slow_consumer, auth_timeout, unauthorized, too_many_connections, session_replaced).',
    labelNames: ['reason'],
    registers: [this.registry],
  })
  readonly ingestSeconds = new Histogram({
    name: 'switchboard_ingest_duration_seconds',
    help: 'From an ingest call to its events being committed (includes waiting for the group commit).',
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [this.registry],
  })
  readonly fanoutSeconds = new Histogram({
    name: 'switchboard_fanout_duration_seconds',
    help: 'Handing one committed batch to every live subscriber.',
    buckets: [0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25],
    registers: [this.registry],
  })

  /** Reads the gauges from `sources` at every scrape. */
  observe(sources: MetricsSources): void {
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.set(read())
        },
      })
    gauge('switchboard_connections', 'Open WebSocket connections.', sources.connections)
    gauge('switchboard_subscriptions', 'Channel subscriptions held by open sockets.', sources.subscriptions)
    gauge('switchboard_channels', 'Organisation-scoped channels with at least one live subscriber.', sources.channels)
    gauge('switchboard_streams', 'Open Server-Sent Events streams.', sources.streams)
    gauge('switchboard_events_stored', 'Events in the log.', sources.eventsStored)
    gauge('switchboard_database_bytes', 'Size of the SQLite database and its write-ahead log.', sources.databaseBytes)
  }

  private counter(name: string, help: string): Counter {
    return new Counter({ name, help, registers: [this.registry] })
  }
}
