import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { nestsDeeperThan } from '../../src/json'
import fc from 'fast-check'
import { WsErrorCode } from '../../src/errors'
import { CLIENT_MESSAGE_TYPES, clientMessage, historyRequest } from '../../src/model'
import { startServer, type TestServer } from '../helpers/server'
import { TestSocket } from '../helpers/ws'

/**
 * Property-based fuzzing of the WebSocket frame parser, over real sockets (rate limit off).
 *
 * Each run sends a batch of frames (random text, random JSON, random bytes as binary frames, valid
 * client messages with one field mutated), then a ping. Then:
 * - exactly one answer arrives per frame, in order, then the pong, then nothing else;
 * - each answer is an `error` frame `{type:'error',code,message}` (plus channelId / requestId where
 *   they apply) or, when the frame happened to be a valid message, its protocol answer (pong,
 *   authenticated, subscribed, unsubscribed, response);
 * - the answer is the one the README prescribes for that frame, computed from the shared zod model
 *   (tracking the channels the socket holds, for `too_many_subscriptions`);
 * - the socket stays open, and nothing is ever stored.
 * Frames stay under the default 65536-byte frame limit, except in the property about oversize frames
 * (which must close the socket with 1009).
 *
 * Seeds are fixed (override with FUZZ_SEED); fast-check prints the seed, path and shrunk
 * counterexample of a failure.
 */

const SEED = Number(process.env.FUZZ_SEED ?? 0x5b0a_2d)
/** FUZZ_SCALE multiplies every run count, for a longer search outside CI. */
const SCALE = Number(process.env.FUZZ_SCALE ?? 1)
const runs = (numRuns: number) => ({ seed: SEED, numRuns: Math.max(1, Math.round(numRuns * SCALE)) })

const ORG = 'local'
const FRAME_LIMIT = 65_536
/** Lower than the default (1000) so the limit's answer is exercised too. */
const MAX_SUBSCRIPTIONS = 200
const ERROR_CODES = Object.values(WsErrorCode) as string[]

let t: TestServer
let shared: TestSocket | undefined
/** The channels `shared` holds, as the model sees them. */
let held = new Set<string>()
const extra: TestSocket[] = []

beforeAll(async () => {
  t = await startServer({ maxSubscriptions: MAX_SUBSCRIPTIONS })
})
afterAll(async () => {
  shared?.close()
  for (const socket of extra) socket.close()
  await t?.close()
})

/** The socket the batches go through; a new one if a previous run got it closed. */
async function socket(): Promise<TestSocket> {
  if (!shared || shared.closed) {
    shared?.close()
    shared = await TestSocket.open(t.wsUrl)
    held = new Set()
  }
  return shared
}

type Frame = { text: string } | { bytes: Uint8Array<ArrayBuffer> }

const encoder = new TextEncoder()
const byteLength = (frame: Frame) => ('text' in frame ? encoder.encode(frame.text).length : frame.bytes.length)
const show = (frame: Frame) => ('text' in frame ? JSON.stringify(frame.text).slice(0, 300) : `bytes(${frame.bytes.length})`)

function expectErrorFrame(answer: any, codes: string[] = ERROR_CODES): void {
  expect(answer.type).toBe('error')
  expect(codes).toContain(answer.code)
  expect(typeof answer.message).toBe('string')
  expect(answer.message.length).toBeGreaterThan(0)
  for (const key of Object.keys(answer)) expect(['type', 'code', 'message', 'channelId', 'requestId']).toContain(key)
}

/**
 * Checks `answer` against what the README prescribes for `frame`, on a socket holding the channels
 * `held` (updated). Returns the channel whose replay or snapshot follows (its parts, then one
 * `caught_up`), if any.
 */
function expectAnswer(frame: Frame, answer: any, held: Set<string>): string | void {
  if (!answer || typeof answer !== 'object') throw new Error(`answer is not an object: ${JSON.stringify(answer)}`)
  if ('bytes' in frame) return expectErrorFrame(answer, ['invalid_message'])
  // The client sends text as UTF-8: lone surrogates arrive as U+FFFD.
  const text = frame.text.toWellFormed()
  let raw: any
  try {
    raw = JSON.parse(text)
  } catch {
    return expectErrorFrame(answer, ['invalid_json'])
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return expectErrorFrame(answer, ['invalid_message'])
  // Deeper than MAX_JSON_DEPTH is refused before anything else is looked at.
  if (nestsDeeperThan(raw)) return expectErrorFrame(answer, ['invalid_message'])
  if (typeof raw.type !== 'string' || !(CLIENT_MESSAGE_TYPES as string[]).includes(raw.type)) return expectErrorFrame(answer, ['unknown_type'])
  const parsed = clientMessage.safeParse(raw)
  if (!parsed.success) {
    expectErrorFrame(answer, ['invalid_message', 'invalid_channel'])
    if (raw.type === 'request' && typeof raw.id === 'string') expect(answer.requestId).toBe(raw.id)
    return
  }
  const message = parsed.data
  switch (message.type) {
    case 'ping':
      return expect(answer).toEqual({ type: 'pong' })
    case 'auth':
      return expect(answer).toEqual({ type: 'authenticated', userId: 'local', orgId: ORG })
    case 'unsubscribe':
      held.delete(message.channelId)
      return expect(answer).toEqual({ type: 'unsubscribed', channelId: message.channelId })
    case 'subscribe': {
      if (message.channelId.startsWith('org:') && message.channelId !== `org:${ORG}`) {
        expectErrorFrame(answer, ['forbidden'])
        return expect(answer.channelId).toBe(message.channelId)
      }
      if (!held.has(message.channelId) && held.size >= MAX_SUBSCRIPTIONS) {
        expectErrorFrame(answer, ['too_many_subscriptions'])
        return expect(answer.channelId).toBe(message.channelId)
      }
      held.add(message.channelId)
      expect([answer.type, answer.channelId, typeof answer.epoch]).toEqual(['subscribed', message.channelId, 'string'])
      if (message.snapshot) {
        expect(['snapshot', 'replay']).toContain(answer.mode)
        return message.channelId
      }
      // Nothing is stored: a live subscribe starts at lastSeq 0, a replay at 0 (truncated when the cursor is void here).
      if (message.since === undefined) return expect(answer.lastSeq).toBe(0)
      expect(answer.since).toBe(0)
      return message.channelId
    }
    case 'hello':
      return expect(answer).toEqual({ type: 'welcome', clientId: message.clientId, ...(message.kind ? { kind: message.kind } : {}), methods: message.methods })
    case 'call':
      // Alone on its user's connections: no target to reach (a connection never calls itself).
      expect([answer.type, answer.id, answer.success, answer.code]).toEqual(['result', message.id, false, 'target_not_connected'])
      return
    case 'result':
      return expectErrorFrame(answer, ['unknown_call'])
    case 'request': {
      expect([answer.type, answer.requestId, typeof answer.success]).toEqual(['response', message.id, 'boolean'])
      const history = message.action === 'history' ? historyRequest.safeParse(message.payload ?? {}) : undefined
      const succeeds =
        message.action === 'stats' ||
        (history?.success === true && !(history.data.channelId.startsWith('org:') && history.data.channelId !== `org:${ORG}`))
      expect(answer.success).toBe(succeeds)
      if (succeeds) expect(answer.data).toBeDefined()
      else expect(typeof answer.error).toBe('string')
      if (message.action === 'history' && succeeds) expect(answer.data.events).toEqual([])
      return
    }
  }
}

/**
 * Sends the frames, then a ping; expects one answer per frame (in order), then the pong, then
 * nothing more; the socket open; nothing stored.
 */
async function exchange(frames: Frame[]): Promise<void> {
  for (const frame of frames) expect(byteLength(frame)).toBeLessThanOrEqual(FRAME_LIMIT)
  const ws = await socket()
  let clean = false
  try {
    for (const frame of frames) ws.ws.send('text' in frame ? frame.text : frame.bytes)
    ws.send({ type: 'ping' })
    for (const [index, frame] of frames.entries()) {
      const answer = await ws.next(() => true, 5000).catch((error: Error) => {
        throw new Error(`no answer to frame ${index} ${show(frame)}: ${error.message}`)
      })
      let replayed: string | void
      try {
        replayed = expectAnswer(frame, answer, held)
      } catch (error) {
        throw new Error(`frame ${index} ${show(frame)} got ${JSON.stringify(answer).slice(0, 300)}: ${(error as Error).message}`)
      }
      // A replay or snapshot of an empty log: its (empty) parts, then caught_up at seq 0.
      while (replayed) {
        const next = await ws.next(() => true, 5000)
        if (next.type === 'snapshot') {
          expect([next.channelId, next.entities]).toEqual([replayed, []])
          continue
        }
        expect(next).toEqual({ type: 'caught_up', channelId: replayed, lastSeq: 0 })
        replayed = undefined
      }
    }
    expect(await ws.next(() => true, 5000)).toEqual({ type: 'pong' })
    expect(ws.frames).toEqual([])
    expect(ws.closed).toBeNull()
    expect(t.server.health().eventsStored).toBe(0)
    clean = true
  } finally {
    // After a failure the socket may hold unread answers: the next run (or shrink step) gets a new one.
    if (!clean) {
      ws.close()
      shared = undefined
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Generators

const text = (arb: fc.Arbitrary<string>): fc.Arbitrary<Frame> => arb.map((value) => ({ text: value }))
const MESSAGE_TYPES = ['auth', 'subscribe', 'unsubscribe', 'ping', 'request']

const channel = fc.oneof(
  fc.constantFrom('agent:my-coder-agent', 'task:t9', 'org:local', 'org:other', 'agent:My Agent/ü:1', 'k_-9:x', `agent:${'x'.repeat(250)}`, `${'k'.repeat(32)}:x`),
  fc.tuple(fc.stringMatching(/^[a-z][a-z0-9_-]{0,8}$/), fc.stringMatching(/^[A-Za-z0-9._/-]{1,16}$/)).map(([kind, name]) => `${kind}:${name}`),
)
const badChannel = fc.oneof(
  fc.constantFrom('', 'agent:', 'agent', ':name', 'Agent:x', '1agent:x', 'ag ent:x', 'agent:a\u0001b', 'agent:a\nb', 'agent:a\u007fb', 'agent: x', 'agent:x ', `agent:${'x'.repeat(251)}`, `${'k'.repeat(33)}:x`),
  fc.string({ maxLength: 20 }),
)
const longString = fc.constantFrom(65, 129, 257, 8193, 20_000).chain((n) => fc.constantFrom('x'.repeat(n), 'é'.repeat(n)))
const unicodeString = fc.oneof(fc.string({ unit: 'grapheme', maxLength: 16 }), fc.string({ unit: 'binary', maxLength: 16 }), fc.constantFrom('\u0000', '\ud800', '\udc00x', '\u202e', '\ufeff', 'İ', 'ｐｉｎｇ'))
const weirdNumber = fc.oneof(fc.constantFrom(-1, 1.5, 0, 2 ** 53, 2 ** 53 - 1, 1e308, -0.5, Number.MIN_VALUE, 1000, 1001), fc.double(), fc.integer())
/** Numbers JSON.stringify cannot write, spliced into the text as they are. */
class Raw {
  constructor(readonly text: string) {}
}
const rawNumber = fc.constantFrom('-0', 'NaN', 'Infinity', '-Infinity', '1e999', '0x10', '01', '1.0', '1E3', '.5', '+1', '9007199254740993').map((raw) => new Raw(raw))
const weirdValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom(null, true, false, '', ' ', [], {}, [null], '__proto__'),
  longString,
  unicodeString,
  weirdNumber,
  rawNumber,
  badChannel,
)

function serialise(value: unknown): string {
  const raws: string[] = []
  const out = JSON.stringify(value, (_key, v) => {
    if (v instanceof Raw) {
      raws.push(v.text)
      return `\u0000raw${raws.length - 1}\u0000`
    }
    return v
  })
  return out.replace(/"\\u0000raw(\d+)\\u0000"/g, (_, i) => raws[Number(i)]!)
}

type Message = Record<string, unknown>
const validMessage: fc.Arbitrary<Message> = fc.oneof(
  fc.constant({ type: 'ping' }),
  fc.string({ minLength: 1, maxLength: 40 }).map((token) => ({ type: 'auth', token })),
  fc.record(
    { type: fc.constant('subscribe'), channelId: channel, since: fc.nat(), epoch: fc.string({ minLength: 1, maxLength: 64 }) },
    { requiredKeys: ['type', 'channelId'] },
  ),
  fc.record({ type: fc.constant('unsubscribe'), channelId: channel }),
  fc.record(
    {
      type: fc.constant('request'),
      id: fc.string({ minLength: 1, maxLength: 40 }),
      action: fc.constantFrom('stats', 'history', 'history', 'publish', 'Stats'),
      payload: fc.record({ channelId: channel, since: fc.nat(), limit: fc.integer({ min: 1, max: 1000 }) }, { requiredKeys: ['channelId'] }),
    },
    { requiredKeys: ['type', 'id', 'action'] },
  ),
)

type Mutation = { label: string; apply(message: Message): void }
const FIELDS = ['type', 'token', 'channelId', 'since', 'epoch', 'id', 'action', 'payload']
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.constantFrom(...FIELDS).map((field): Mutation => ({ label: `delete ${field}`, apply: (m) => void delete m[field] })),
  fc.tuple(fc.constantFrom(...FIELDS), weirdValue).map(([field, value]): Mutation => ({ label: `${field}=…`, apply: (m) => void (m[field] = value) })),
  fc.tuple(fc.constantFrom('channelId'), badChannel).map(([field, value]): Mutation => ({ label: `${field}=bad`, apply: (m) => void (m[field] = value) })),
  fc.constantFrom('PING', 'Ping', 'ping ', 'subscribed', 'unsubscribed', 'response', 'error', 'pong', 'publish', 'agent.spawned', 'authenticate').map(
    (type): Mutation => ({ label: `type=${type}`, apply: (m) => void (m.type = type) }),
  ),
  fc.tuple(fc.constantFrom('channelId', 'since', 'limit', 'x'), weirdValue).map(
    ([field, value]): Mutation => ({
      label: `payload.${field}=…`,
      apply: (m) => void (m.payload = { ...(typeof m.payload === 'object' && m.payload ? m.payload : {}), [field]: value }),
    }),
  ),
  fc.tuple(fc.string({ maxLength: 10 }), weirdValue).map(
    ([key, value]): Mutation => ({
      label: `extra ${JSON.stringify(key)}`,
      apply: (m) => void Object.defineProperty(m, key, { value, enumerable: true, writable: true, configurable: true }),
    }),
  ),
)
const nearValid: fc.Arbitrary<Frame> = fc.tuple(validMessage, mutation).map(([message, m]) => {
  const copy = structuredClone(message)
  m.apply(copy)
  return { text: serialise(copy) }
})

/** Character-level damage to a valid message: mostly invalid JSON, sometimes still valid. */
const damaged: fc.Arbitrary<Frame> = fc
  .tuple(validMessage.map((m) => JSON.stringify(m)), fc.array(fc.tuple(fc.nat(), fc.nat({ max: 3 }), fc.string({ unit: 'binary', maxLength: 3 })), { minLength: 1, maxLength: 3 }))
  .map(([value, edits]) => {
    for (const [at, remove, insert] of edits) {
      const i = at % (value.length + 1)
      value = value.slice(0, i) + insert + value.slice(i + remove)
    }
    return { text: value }
  })

const messageShaped = fc.record(
  {
    type: fc.oneof(fc.constantFrom(...MESSAGE_TYPES), weirdValue),
    token: weirdValue,
    channelId: fc.oneof(channel, weirdValue),
    since: fc.oneof(fc.nat(), weirdValue),
    epoch: weirdValue,
    id: weirdValue,
    action: fc.oneof(fc.constantFrom('stats', 'history'), weirdValue),
    payload: fc.oneof(fc.dictionary(fc.constantFrom('channelId', 'since', 'limit'), weirdValue, { maxKeys: 3 }), weirdValue),
  },
  { requiredKeys: [] },
)

const underLimit = (frame: Frame) => byteLength(frame) <= FRAME_LIMIT
const batch = (frame: fc.Arbitrary<Frame>) => fc.array(frame.filter(underLimit), { minLength: 1, maxLength: 8 })

// ---------------------------------------------------------------------------------------------

describe('WebSocket frame fuzz: one answer per frame, socket open, nothing stored', () => {
  test('sanity: valid messages get their protocol answers', async () => {
    await fc.assert(
      fc.asyncProperty(batch(validMessage.map((m) => ({ text: JSON.stringify(m) }))), exchange),
      runs(60),
    )
  })

  test('arbitrary strings', async () => {
    await fc.assert(
      fc.asyncProperty(
        batch(
          fc.oneof(
            text(fc.string({ unit: 'binary', maxLength: 300 })),
            text(fc.string({ unit: 'grapheme', maxLength: 100 })),
            text(fc.string({ unit: 'grapheme-ascii', maxLength: 300 })),
            text(fc.json({ maxDepth: 3 })),
            damaged,
          ),
        ),
        exchange,
      ),
      runs(300),
    )
  })

  test('arbitrary JSON values', async () => {
    await fc.assert(
      fc.asyncProperty(
        batch(
          fc.oneof(
            fc.jsonValue({ maxDepth: 4 }).map((value) => ({ text: JSON.stringify(value) })),
            fc.anything({ maxDepth: 3 }).map((value) => ({ text: JSON.stringify(value) ?? 'undefined' })),
            messageShaped.map((value) => ({ text: serialise(value) })),
          ),
        ),
        exchange,
      ),
      runs(300),
    )
  })

  test('arbitrary bytes as binary frames', async () => {
    await fc.assert(
      fc.asyncProperty(
        batch(
          fc.oneof(
            { arbitrary: fc.uint8Array({ maxLength: 1024 }), weight: 4 },
            // A valid message's bytes, sent binary: still refused.
            { arbitrary: validMessage.map((m) => encoder.encode(JSON.stringify(m))), weight: 2 },
            { arbitrary: fc.integer({ min: 1024, max: FRAME_LIMIT }).map((n) => new Uint8Array(n).fill(0x7b)), weight: 1 },
          ).map((bytes) => ({ bytes: new Uint8Array(bytes) })),
        ),
        exchange,
      ),
      runs(150),
    )
  })

  test('near-valid client messages (one field mutated)', async () => {
    await fc.assert(fc.asyncProperty(batch(fc.oneof(nearValid, validMessage.map((m) => ({ text: serialise(m) })))), exchange), runs(500))
  })

  test('a mix of everything on one connection', async () => {
    const any = fc.oneof(nearValid, damaged, text(fc.string({ unit: 'binary', maxLength: 100 })), fc.uint8Array({ maxLength: 64 }).map((bytes) => ({ bytes: new Uint8Array(bytes) })))
    await fc.assert(fc.asyncProperty(fc.array(any.filter(underLimit), { minLength: 1, maxLength: 30 }), exchange), runs(100))
  })
})

describe('WebSocket frame fuzz: deeply nested JSON', () => {
  const nest = (depth: number, objects: boolean) => (objects ? `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}` : `${'['.repeat(depth)}${']'.repeat(depth)}`)
  const SHAPES: Record<string, (deep: string) => string> = {
    body: (deep) => deep,
    type: (deep) => `{"type":${deep}}`,
    channelId: (deep) => `{"type":"subscribe","channelId":${deep}}`,
    since: (deep) => `{"type":"subscribe","channelId":"agent:a","since":${deep}}`,
    requestId: (deep) => `{"type":"request","id":${deep},"action":"stats"}`,
    payload: (deep) => `{"type":"request","id":"r","action":"stats","payload":{"a":${deep}}}`,
    historyPayload: (deep) => `{"type":"request","id":"r","action":"history","payload":{"channelId":${deep}}}`,
    token: (deep) => `{"type":"auth","token":${deep}}`,
  }
  test('up to the frame limit, any depth anywhere is answered and the socket stays open', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...Object.keys(SHAPES)), fc.integer({ min: 1, max: 32_000 }), fc.boolean(), async (shape, depth, objects) => {
        const frame = { text: SHAPES[shape]!(nest(depth, objects)) }
        fc.pre(byteLength(frame) <= FRAME_LIMIT)
        await exchange([frame])
      }),
      runs(16),
    )
  })
})

describe('WebSocket frame limit', () => {
  test('frames over 65536 bytes close the connection with 1009 and get no answer; frames up to it are answered', async () => {
    // A ping padded to exactly `size` bytes (the padding mixes 2-byte characters: the limit is in bytes).
    const paddedPing = (size: number, wide: number) => {
      const room = size - JSON.stringify({ type: 'ping', pad: '' }).length
      const twoByte = Math.min(wide, Math.floor(room / 2))
      const value = JSON.stringify({ type: 'ping', pad: 'é'.repeat(twoByte) + 'x'.repeat(room - 2 * twoByte) })
      expect(encoder.encode(value).length).toBe(size)
      return value
    }
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.integer({ min: -16, max: 16 }), fc.integer({ min: 17, max: 8192 })), fc.boolean(), fc.nat({ max: 40_000 }), async (delta, binary, wide) => {
        const size = FRAME_LIMIT + delta
        const socket = await TestSocket.open(t.wsUrl)
        extra.push(socket)
        socket.ws.send(binary ? new Uint8Array(size).fill(0x20) : paddedPing(size, wide))
        if (size > FRAME_LIMIT) {
          expect((await socket.waitClosed()).code).toBe(1009)
          expect(socket.frames).toEqual([])
        } else {
          const answer = await socket.next()
          if (binary) expectErrorFrame(answer, ['invalid_message'])
          else expect(answer).toEqual({ type: 'pong' })
          socket.send({ type: 'ping' })
          expect(await socket.next()).toEqual({ type: 'pong' })
          expect(socket.closed).toBeNull()
          socket.close()
        }
      }),
      runs(24),
    )
    // The other connection was not affected, and nothing was stored.
    await exchange([{ text: '{"type":"ping"}' }])
  })
})
