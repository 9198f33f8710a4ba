import { describe, expect, test } from 'bun:test'
import { catalogue, catalogueTypes, deriveChannels, eventInput, isChannelId } from '../../src/model'

const base = { id: '6F1C0000-0000-4000-8000-000000000001', orgId: 'acme', userId: 'u1', timestamp: 1_763_800_000_000 }

describe('channel ids', () => {
  test.each(['agent:my-coder-agent', 'org:acme', 'task:t9', 'swarm:s 1', 'x:é', `a:${'n'.repeat(254)}`])('valid: %s', (id) => {
    expect(isChannelId(id)).toBe(true)
  })
  test.each(['', 'agent', 'agent:', ':name', 'Agent:x', '9a:x', 'a: x', 'a:x ', 'a:x\ny', 'a:\u0000', `a:${'n'.repeat(255)}`])(
    'invalid: %j',
    (id) => {
      expect(isChannelId(id)).toBe(false)
    },
  )
})

describe('deriveChannels', () => {
  test('org always, then agent, task, swarm, project from the payload', () => {
    expect(deriveChannels('acme', { agentName: 'coder', taskId: 't9', swarmId: 's1', projectId: 42, other: 'x' })).toEqual([
      'org:acme',
      'agent:coder',
      'task:t9',
      'swarm:s1',
      'project:42',
    ])
    expect(deriveChannels('acme', {})).toEqual(['org:acme'])
  })
  test('non-string values are not channels; an unusable string is an error naming the field', () => {
    expect(deriveChannels('acme', { agentName: { nested: true }, taskId: null })).toEqual(['org:acme'])
    expect(() => deriveChannels('acme', { agentName: 'a\nb' })).toThrow('payload.agentName')
  })
})

describe('event catalogue', () => {
  test('holds every type of seed 001 and the task/session/event/bookmark types of seed 002', () => {
    const expected = [
      'agent.spawned', 'agent.completed', 'agent.failed', 'agent.status',
      'task.created', 'task.status_changed', 'task.updated', 'task.deleted',
      'chief.plan.created', 'chief.task.assigned', 'chief.task.progress', 'swarm.phase.started', 'swarm.phase.completed',
      'gate.passed', 'gate.failed', 'chat.message',
      'task.started', 'task.completed', 'tasks.purged', 'session.started', 'session.ended',
      'event.logged', 'event.updated', 'bookmark.saved', 'bookmark.deleted',
    ]
    expect([...catalogueTypes].sort() as string[]).toEqual([...expected].sort())
  })

  test('a catalogue payload is checked, extra fields pass through', () => {
    const ok = eventInput.parse({
      ...base,
      type: 'agent.completed',
      payload: { agentId: 'a1', agentName: 'c', taskId: 't', result: 'ok', duration: 1200, extra: [1] },
    })
    expect(ok.payload.extra).toEqual([1])
    expect(ok.id).toBe('6f1c0000-0000-4000-8000-000000000001')
    const bad = eventInput.safeParse({ ...base, type: 'agent.completed', payload: { agentId: 'a1' } })
    expect(bad.success).toBe(false)
    expect(bad.error!.issues.map((issue) => issue.path.join('.'))).toContain('payload.duration')
  })

  test('other dotted types take any object payload; undotted or uppercase types are refused', () => {
    expect(eventInput.safeParse({ ...base, type: 'deploy.finished', payload: { anything: true } }).success).toBe(true)
    for (const type of ['deploy', 'Deploy.finished', 'deploy.', '.x', 'a..b']) {
      expect(eventInput.safeParse({ ...base, type, payload: {} }).success).toBe(false)
    }
    expect(eventInput.safeParse({ ...base, type: 'deploy.finished', payload: [] }).success).toBe(false)
  })

  test('every catalogue schema accepts a payload built from its own required fields', () => {
    for (const type of catalogueTypes) {
      const shape = catalogue[type].shape as Record<string, { safeParse(v: unknown): { success: boolean } }>
      const payload: Record<string, unknown> = {}
      for (const [field, schema] of Object.entries(shape)) {
        for (const candidate of ['x', 1, [], {}]) {
          if (schema.safeParse(candidate).success) {
            payload[field] = candidate
            break
          }
        }
      }
      expect({ type, ok: eventInput.safeParse({ ...base, type, payload }).success }).toEqual({ type, ok: true })
    }
  })
})
