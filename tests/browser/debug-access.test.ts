import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import { debugAccess, isLoopbackAddress, isLoopbackHost } from '../../src/modules/debug/access'
import { startServer, type TestServer } from '../helpers/server'

/**
 * Who gets the debug console, without a browser: the access rule (a peer off this machine cannot be
 * simulated on 127.0.0.1, so the rule is tested as a function), what the routes answer, and the
 * page script's promise never to put data into the DOM as markup.
 */

describe('access rule', () => {
  test('none mode: loopback peers under loopback host names only', () => {
    for (const peer of ['127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1', null, undefined]) {
      expect(debugAccess('none', peer, '127.0.0.1:3693')).toEqual({ allowed: true })
    }
    for (const peer of ['10.0.0.5', '192.168.1.20', '::ffff:10.0.0.5', 'fe80::1', '0.0.0.0', '128.0.0.1']) {
      const access = debugAccess('none', peer, '127.0.0.1:3693')
      expect(access.allowed).toBe(false)
      expect(access.allowed ? '' : access.reason).toContain(peer)
    }
    for (const host of ['localhost:3693', 'LOCALHOST', 'app.localhost:80', '127.0.0.1', '[::1]:3693', 'localhost.']) {
      expect(debugAccess('none', '127.0.0.1', host).allowed).toBe(true)
    }
    // A rebinding attack reaches loopback under its own name; so does a proxy on this machine.
    for (const host of ['evil.example:3693', 'localhost.evil.example', '127.0.0.1.nip.io', '[::2]:80', '', null, undefined]) {
      expect(debugAccess('none', '127.0.0.1', host).allowed).toBe(false)
    }
  })

  test('jwt mode: the page is public (its data needs a token)', () => {
    expect(debugAccess('jwt', '203.0.113.9', 'realtime.example.com')).toEqual({ allowed: true })
  })

  test('address and host parsing', () => {
    expect(isLoopbackAddress('[::1]')).toBe(true)
    expect(isLoopbackAddress('0:0:0:0:0:0:0:1')).toBe(true)
    expect(isLoopbackAddress('127.0.0.1.5')).toBe(false)
    expect(isLoopbackHost('[::1]')).toBe(true)
    expect(isLoopbackHost('[::ffff:127.0.0.1]:3693')).toBe(true)
  })
})

describe('routes', () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer()
  })
  afterAll(() => server?.close())

  test('GET /debug is the page, told the local principal, with a strict content policy', async () => {
    const response = await fetch(`${server.url}/debug`)
    expect(response.status).toBe(200)
    expect(response.headers.get('content-type')).toBe('text/html; charset=utf-8')
    const policy = response.headers.get('content-security-policy')!
    expect(policy).toContain("default-src 'none'")
    expect(policy).toContain("script-src 'self'")
    expect(policy).toMatch(/style-src 'sha256-[A-Za-z0-9+/=]+'/)
    const html = await response.text()
    expect(html).toContain('data-auth-mode="none" data-org-id="local" data-user-id="local"')
    expect(html).toContain('<script type="module" src="/debug/app.js"></script>')
  })

  test('GET /debug/app.js is the page script with the client, bundled for browsers', async () => {
    const response = await fetch(`${server.url}/debug/app.js`)
    expect(response.status).toBe(200)
    expect(response.headers.get('content-type')).toBe('text/javascript; charset=utf-8')
    const script = await response.text()
    // Checked as booleans: a failure should not print 150 KB of minified code.
    expect(script.includes('switchboard.debug.token')).toBe(true)
    expect(/^\s*import\s/m.test(script)).toBe(false)
    expect(script.includes('bun:sqlite')).toBe(false)
  })

  test('through app.handle (no socket), the Host decides', async () => {
    expect((await server.server.app.handle(new Request('http://localhost/debug'))).status).toBe(200)
    expect((await server.server.app.handle(new Request('http://example.com/debug'))).status).toBe(403)
  })
})

test('the page script never writes markup (every value goes in as text)', async () => {
  const source = await Bun.file(join(import.meta.dir, '..', '..', 'src', 'debug', 'page.ts')).text()
  expect(source).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function/)
})
