import { expect } from 'bun:test'
import { stateChangeOf } from '../../src/model/state'
import { getJson, ingest, type TestServer } from '../helpers/server'
import { TestSocket } from '../helpers/ws'

/**
 * Shared by the channel-state tests: sockets that log every frame, snapshot subscribes collected
 * part by part, a client-side fold of events into a state (the same rules as the server's), and
 * HTTP reads of the state and of a channel's whole log.
 */

/** A socket whose every frame is also logged in arrival order (TestSocket.next consumes frames). */
export type LoggedSocket = TestSocket & { log: any[] }

export async function openLogged(wsUrl: string, sockets: TestSocket[]): Promise<LoggedSocket> {
  const socket = (await TestSocket.open(wsUrl)) as LoggedSocket
  socket.log = []
  socket.ws.addEventListener('message', (message) => socket.log.push(JSON.parse(String(message.data))))
  sockets.push(socket)
  return socket
}

export interface SnapshotResult {
  subscribed: any
  parts: any[]
  /** Every entity of every part, in order. */
  entities: any[]
  seq: number
}

/** Subscribes with `snapshot: true` and collects every snapshot part up to the one with `done`. */
export async function snapshotOf(socket: TestSocket, channelId: string, extra: Record<string, unknown> = {}, timeoutMs = 5000): Promise<SnapshotResult> {
  socket.send({ type: 'subscribe', channelId, snapshot: true, ...extra })
  const subscribed = await socket.next((f) => f.type === 'subscribed' && f.channelId === channelId, timeoutMs)
  expect(subscribed.mode).toBe('snapshot')
  return collectSnapshot(socket, channelId, subscribed, timeoutMs)
}

export async function collectSnapshot(socket: TestSocket, channelId: string, subscribed: any, timeoutMs = 5000): Promise<SnapshotResult> {
  const parts: any[] = []
  for (let i = 0; i < 10_000; i++) {
    const part = await socket.next((f) => f.type === 'snapshot' && f.channelId === channelId, timeoutMs)
    parts.push(part)
    if (part.done) break
  }
  expect(parts.at(-1)!.done).toBe(true)
  return { subscribed, parts, entities: parts.flatMap((p) => p.entities), seq: parts[0].seq }
}

/** The entity key an event sets (undefined when it sets none), by the server's own rules. */
export function setKeyOf(event: { type: string; payload: Record<string, unknown>; key?: string }): string | undefined {
  const change = stateChangeOf(event.type, event.payload, event.key)
  return change?.op === 'set' ? change.key : undefined
}

/** A state: entity key → the latest event (a frame or wire event) of that entity. */
export type State = Map<string, any>

/** Applies one event to a state, as a client following a channel would. */
export function applyEvent(state: State, event: { type: string; payload: Record<string, unknown>; key?: string }): void {
  const change = stateChangeOf(event.type, event.payload, event.key)
  if (!change) return
  switch (change.op) {
    case 'set':
      state.set(change.key, event)
      return
    case 'delete':
      for (const key of change.keys) state.delete(key)
      return
    case 'purge':
      for (const key of [...state.keys()]) if (key.startsWith(change.prefix)) state.delete(key)
      return
  }
}

/** A state from snapshot entities (each must set a key, and no key twice). */
export function stateFromEntities(entities: any[]): State {
  const state: State = new Map()
  for (const entity of entities) {
    const key = setKeyOf(entity)
    expect(key).toBeString()
    expect(state.has(key!)).toBe(false)
    state.set(key!, entity)
  }
  return state
}

/** key → seq, sorted by key, for exact comparisons. */
export function seqsByKey(state: State): Record<string, number> {
  return Object.fromEntries([...state.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([key, event]) => [key, event.seq]))
}

export async function httpState(server: Pick<TestServer, 'url'>, channelId: string, headers: Record<string, string> = {}) {
  return getJson(`${server.url}/api/channels/${encodeURIComponent(channelId)}/state`, headers)
}

/** Every stored event of a channel, via GET /api/events/since (paged). */
export async function channelLog(server: Pick<TestServer, 'url'>, channel: string, headers: Record<string, string> = {}): Promise<any[]> {
  const out: any[] = []
  let since = 0
  for (let page = 0; page < 200; page++) {
    const { status, body } = await getJson(`${server.url}/api/events/since?channel=${encodeURIComponent(channel)}&since=${since}&limit=1000`, headers)
    expect(status).toBe(200)
    out.push(...body.events)
    since = body.nextSeq
    if (!body.hasMore) return out
  }
  throw new Error('too many pages')
}

/** POST /ingest in batches of `batchSize`, each expected to store everything. */
export async function ingestAll(server: Pick<TestServer, 'url'>, events: unknown[], headers: Record<string, string> = {}, batchSize = 1000): Promise<void> {
  for (let i = 0; i < events.length; i += batchSize) {
    const batch = events.slice(i, i + batchSize)
    const { status, body } = await ingest(server.url, { events: batch }, headers)
    expect(status).toBe(200)
    expect(body).toEqual({ stored: batch.length, duplicates: 0 })
  }
}

export async function roundTrip(socket: TestSocket): Promise<void> {
  expect(await socket.request({ type: 'ping' }, 'pong')).toEqual({ type: 'pong' })
}

export const seqsOf = (frames: any[]) => frames.map((f) => f.seq)
export const idsOf = (frames: any[]) => frames.map((f) => f.id)
/** Event frames still queued (not consumed by `next`). */
export const eventFrames = (socket: TestSocket) => socket.frames.filter((f) => typeof f.seq === 'number')
/** A wire event (HTTP) as the socket frame of the same event on a channel: no `channels`. */
export function asFrame(wire: any): any {
  const { channels: _channels, ...frame } = wire
  return frame
}

/** A catalogue or custom event in org `local` (or `orgId`), with a fresh id. */
export function ev(type: string, payload: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  return { id: crypto.randomUUID(), type, orgId: 'local', userId: 'local', timestamp: Date.now(), payload, ...extra }
}

/** The frames after a snapshot: exactly one caught_up, every event before it at or below its lastSeq, every one after above it. */
export function splitCaughtUp(frames: any[]): { events: any[]; lastSeq: number } {
  const at = frames.findIndex((f) => f.type === 'caught_up')
  if (at < 0 || frames.filter((f) => f.type === 'caught_up').length !== 1) throw new Error('expected exactly one caught_up frame')
  const { lastSeq } = frames[at]
  if (!frames.slice(0, at).every((f) => f.seq <= lastSeq) || !frames.slice(at + 1).every((f) => f.seq > lastSeq)) {
    throw new Error(`events on the wrong side of caught_up (lastSeq ${lastSeq})`)
  }
  return { events: frames.filter((f) => f.type !== 'caught_up'), lastSeq }
}
