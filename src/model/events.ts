import { z } from 'zod'
import { channelId, principalId } from './channels'

/**
 * The event catalogue: every event type with a typed payload, from seed 001 (the cloud API) and
 * seed 002 (the monitor's task/session/event/bookmark messages). Imports only zod, so the server
 * validates and the client infers handler types from the same values.
 *
 * Payloads are loose objects: the listed fields are checked, extra fields pass through untouched,
 * so producers can add data without a server upgrade. `timestamp` inside a payload is optional
 * (the envelope always has one).
 */
const id = z.string().min(1)
const ts = { timestamp: z.number().int().nonnegative().optional() }

export const catalogue = {
  // Agent events (seed 001)
  'agent.spawned': z.looseObject({ agentId: id, agentName: id, taskId: id, ...ts }),
  'agent.completed': z.looseObject({
    agentId: id,
    agentName: id,
    taskId: id,
    result: z.unknown(),
    duration: z.number().nonnegative(),
    ...ts,
  }),
  'agent.failed': z.looseObject({ agentId: id, agentName: id, taskId: id, error: z.string(), ...ts }),
  'agent.status': z.looseObject({ agentId: id, agentName: id, status: z.string(), message: z.string(), ...ts }),
  // Task events (seed 001, and seed 002's task lifecycle)
  'task.created': z.looseObject({ taskId: id, title: z.string(), projectId: id, ...ts }),
  'task.status_changed': z.looseObject({ taskId: id, oldStatus: z.string(), newStatus: z.string(), ...ts }),
  'task.updated': z.looseObject({ taskId: id, changes: z.record(z.string(), z.unknown()).optional(), ...ts }),
  'task.deleted': z.looseObject({ taskId: id, ...ts }),
  'task.started': z.looseObject({ taskId: id, ...ts }),
  'task.completed': z.looseObject({ taskId: id, ...ts }),
  'tasks.purged': z.looseObject({ taskIds: z.array(id).optional(), ...ts }),
  // Swarm / chief events (seed 001)
  'chief.plan.created': z.looseObject({ planId: id, tasks: z.array(z.unknown()), ...ts }),
  'chief.task.assigned': z.looseObject({ taskId: id, agentName: id, ...ts }),
  'chief.task.progress': z.looseObject({ taskId: id, progress: z.number().min(0), message: z.string(), ...ts }),
  'swarm.phase.started': z.looseObject({ swarmId: id, phase: z.string(), ...ts }),
  'swarm.phase.completed': z.looseObject({ swarmId: id, phase: z.string(), results: z.unknown(), ...ts }),
  // Quality gates (seed 001)
  'gate.passed': z.looseObject({ taskId: id, gate: z.string(), ...ts }),
  'gate.failed': z.looseObject({ taskId: id, gate: z.string(), reason: z.string(), ...ts }),
  // Chat (seed 001)
  'chat.message': z.looseObject({ messageId: id, agentId: id, content: z.string(), ...ts }),
  // Monitor sessions, logged events and bookmarks (seed 002)
  'session.started': z.looseObject({ sessionId: id, taskId: id.optional(), ...ts }),
  'session.ended': z.looseObject({ sessionId: id, taskId: id.optional(), ...ts }),
  'event.logged': z.looseObject({ eventId: id, taskId: id.optional(), ...ts }),
  'event.updated': z.looseObject({ eventId: id, taskId: id.optional(), ...ts }),
  'bookmark.saved': z.looseObject({ bookmarkId: id, taskId: id.optional(), ...ts }),
  'bookmark.deleted': z.looseObject({ bookmarkId: id, ...ts }),
} as const

export type CatalogueType = keyof typeof catalogue
export const catalogueTypes = Object.keys(catalogue) as CatalogueType[]
export type PayloadOf<T extends CatalogueType> = z.infer<(typeof catalogue)[T]>

export function isCatalogueType(type: string): type is CatalogueType {
  return Object.hasOwn(catalogue, type)
}

/** Dotted lowercase: two or more segments of `a–z 0–9 _`, each starting with a letter; ≤ 128. */
export const EVENT_TYPE_PATTERN = /^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$/
export const eventType = z
  .string()
  .max(128, 'type is longer than 128 characters')
  .regex(EVENT_TYPE_PATTERN, 'type must be dotted lowercase, e.g. "agent.completed"')

/** UUIDs are accepted in any case and stored in canonical lowercase, so dedup ignores case. */
export const eventId = z
  .string()
  .regex(/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/, 'id must be a UUID')
  .transform((value) => value.toLowerCase())

export const MAX_CHANNELS_PER_EVENT = 32

/**
 * An event as producers send it. `channels`, when given, replaces the derived channels.
 * A catalogue type's payload is checked against its schema; any other dotted type takes any object.
 */
export const eventInput = z
  .object({
    id: eventId,
    type: eventType,
    orgId: principalId('orgId'),
    userId: principalId('userId'),
    timestamp: z.number().int().nonnegative(),
    payload: z.record(z.string(), z.unknown()),
    /** The entity this event describes, overriding the catalogue's (see model/state.ts). */
    key: z.string().min(1).max(256).optional(),
    channels: z
      .array(channelId)
      .min(1)
      .max(MAX_CHANNELS_PER_EVENT)
      .refine((list) => new Set(list).size === list.length, 'channels must not repeat')
      .optional(),
  })
  .superRefine((event, ctx) => {
    if (!isCatalogueType(event.type)) return
    const result = catalogue[event.type].safeParse(event.payload)
    if (result.success) return
    for (const issue of result.error.issues) {
      ctx.addIssue({ ...issue, path: ['payload', ...issue.path] } as never)
    }
  })

export type EventInput = z.infer<typeof eventInput>

/** What subscribers and readers get: the stored event, with its replay cursor `seq`. */
interface StoredFields {
  id: string
  seq: number
  /** Present when the event was ingested with an explicit entity key. */
  key?: string
  orgId: string
  userId: string
  timestamp: number
}

/** A stored event of a catalogue type, its payload typed; `type` discriminates. */
export type CatalogueEvent = {
  [T in CatalogueType]: StoredFields & { type: T; payload: PayloadOf<T> }
}[CatalogueType]

/** A stored event of a type outside the catalogue. */
export type OtherEvent = StoredFields & { type: string; payload: Record<string, unknown> }

export type RealtimeEvent = CatalogueEvent | OtherEvent

/** What a subscriber receives: the event, flat, with the channel it came through. */
export type EventFrame = RealtimeEvent & { channelId: string }
