import type { CatalogueType } from './events'

/**
 * Channel state: which entity an event describes, so the latest event per entity can be kept
 * beyond retention (Kafka's compaction, Centrifugo's cache recovery). Imports nothing: the client
 * applies live events to its store with the same rules the server uses to keep the state.
 *
 * A key is `<kind>:<id>`, so entities of different kinds sharing a channel never collide.
 */
const ENTITY: Record<CatalogueType, readonly [kind: string, field: string]> = {
  'agent.spawned': ['agent', 'agentId'],
  'agent.completed': ['agent', 'agentId'],
  'agent.failed': ['agent', 'agentId'],
  'agent.status': ['agent', 'agentId'],
  'task.created': ['task', 'taskId'],
  'task.status_changed': ['task', 'taskId'],
  'task.updated': ['task', 'taskId'],
  'task.deleted': ['task', 'taskId'],
  'task.started': ['task', 'taskId'],
  'task.completed': ['task', 'taskId'],
  'tasks.purged': ['task', 'taskIds'],
  'chief.task.assigned': ['task', 'taskId'],
  'chief.task.progress': ['task', 'taskId'],
  'gate.passed': ['task', 'taskId'],
  'gate.failed': ['task', 'taskId'],
  'chief.plan.created': ['plan', 'planId'],
  'swarm.phase.started': ['swarm', 'swarmId'],
  'swarm.phase.completed': ['swarm', 'swarmId'],
  'chat.message': ['message', 'messageId'],
  'session.started': ['session', 'sessionId'],
  'session.ended': ['session', 'sessionId'],
  'event.logged': ['event', 'eventId'],
  'event.updated': ['event', 'eventId'],
  'bookmark.saved': ['bookmark', 'bookmarkId'],
  'bookmark.deleted': ['bookmark', 'bookmarkId'],
}

/** Types that delete their entity (a tombstone): it leaves the state at once. */
const DELETING = new Set<string>(['task.deleted', 'bookmark.deleted', 'tasks.purged'])

export const STATE_KEY_MAX_LENGTH = 256

/** Whether events of this type delete entities (whatever their payload or explicit key). */
export const isDeletingType = (type: string) => DELETING.has(type)

/**
 * What an event does to its channels' state:
 * - `set`: `key` now maps to this event;
 * - `delete`: these keys leave the state;
 * - `purge`: every key starting with `prefix` leaves the state (`tasks.purged` without `taskIds`);
 * - undefined: the event takes no part in state (a type outside the catalogue without an explicit key).
 */
export type StateChange =
  | { op: 'set'; key: string }
  | { op: 'delete'; keys: string[] }
  | { op: 'purge'; prefix: string }

/** The state change of an event; an explicit `key` (given at ingest) wins over the catalogue's. */
export function stateChangeOf(type: string, payload: Record<string, unknown>, explicitKey?: string | null): StateChange | undefined {
  if (explicitKey) return DELETING.has(type) ? { op: 'delete', keys: [explicitKey] } : { op: 'set', key: explicitKey }
  const entity = (ENTITY as Record<string, readonly [string, string]>)[type]
  if (!entity) return undefined
  const [kind, field] = entity
  const value = payload[field]
  if (type === 'tasks.purged') {
    return Array.isArray(value)
      ? { op: 'delete', keys: value.filter((id) => typeof id === 'string').map((id) => `${kind}:${id}`) }
      : { op: 'purge', prefix: `${kind}:` }
  }
  if (typeof value !== 'string' && typeof value !== 'number') return undefined
  const key = `${kind}:${value}`
  return DELETING.has(type) ? { op: 'delete', keys: [key] } : { op: 'set', key }
}
