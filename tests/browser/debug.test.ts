import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { mkdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { SignJWT } from 'jose'
import type { Page } from 'playwright-core'
import { getJson, ingest, makeEvent, startServer, type TestServer, waitFor } from '../helpers/server'
import { launchBrowser, skipBrowser } from './chromium'

/**
 * The debug console in a real browser (Debian's chromium through playwright-core): the page served
 * at /debug, built on the typed client, against a real server. Every step waits for what the page
 * shows; none sleeps.
 */

const ROOT = join(import.meta.dir, '..', '..')
// Written to a temp file, so running the tests leaves the tree clean; refresh the README's picture
// with SWITCHBOARD_SCREENSHOT=docs/debug-console.png bun test tests/browser.
const SCREENSHOT = process.env.SWITCHBOARD_SCREENSHOT ? join(ROOT, process.env.SWITCHBOARD_SCREENSHOT) : join(tmpdir(), 'switchboard-debug-console.png')
const suite = skipBrowser ? describe.skip : describe

type Browser = Awaited<ReturnType<typeof launchBrowser>>

/** A page that records its uncaught errors and console errors (a CSP violation is one). */
async function openPage(browser: Browser) {
  const page = browser.context.pages()[0] ?? (await browser.context.newPage())
  page.setDefaultTimeout(5000)
  const problems: string[] = []
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`))
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().includes('favicon')) problems.push(`console: ${message.text()}`)
  })
  return { page, problems }
}

const row = (page: Page, type: string) => page.locator(`#log-body tr.entry.event[data-type="${type}"]`)
const pill = (page: Page, text: string) => page.locator('#status-pill').filter({ hasText: new RegExp(`^${text}$`) })

suite('debug console, none mode', () => {
  let server: TestServer
  let browser: Browser
  let page: Page
  let problems: string[]

  beforeAll(async () => {
    server = await startServer()
    browser = await launchBrowser()
    ;({ page, problems } = await openPage(browser))
  })
  afterAll(async () => {
    await browser?.close()
    await server?.close()
  })

  /** The server counts channels with a subscriber: a live subscription is in place once it does. */
  const subscribedChannels = (n: number) =>
    waitFor(async () => (await getJson(`${server.url}/health`)).body.channels === n, 3000, `${n} subscribed channel(s)`)

  test('opens, connects over WebSocket and shows the server figures', async () => {
    await page.goto(`${server.url}/debug`)
    await pill(page, 'open').waitFor()
    await page.locator('#c-transport', { hasText: 'websocket' }).waitFor()
    await page.locator('#c-url', { hasText: `${server.wsUrl}` }).waitFor()
    // /health, refreshed every 2 s, and the stats request (which counts this page's socket).
    await page.locator('#s-connections', { hasText: '1' }).waitFor()
    await page.locator('#s-lastseq', { hasText: '0' }).waitFor()
    expect(await page.locator('#s-principal').textContent()).toBe('local / local')
    expect(await page.locator('#signin').isHidden()).toBe(true)
  })

  test('a channel subscribed in the page shows an event ingested over HTTP', async () => {
    await page.fill('#sub-channel', 'agent:ui-agent')
    await page.click('#subscribe-form button[type=submit]')
    await page.locator('#sub-list li[data-channel="agent:ui-agent"]').waitFor()
    await subscribedChannels(1)

    const event = makeEvent({ type: 'agent.spawned', payload: { agentId: 'a1', agentName: 'ui-agent', taskId: 't1' } })
    expect((await ingest(server.url, event)).status).toBe(200)
    const spawned = row(page, 'agent.spawned')
    await spawned.waitFor()
    expect(await spawned.locator('td.channel').textContent()).toBe('agent:ui-agent')
    expect(await spawned.locator('td.seq').textContent()).toBe('1')
    expect(await spawned.locator('td.payload').textContent()).toContain('"agentName":"ui-agent"')
    await page.locator('#sub-list li[data-channel="agent:ui-agent"] .cursor', { hasText: 'cursor 1' }).waitFor()

    // A click shows the whole frame; a second one hides it.
    await spawned.click()
    const detail = page.locator('#log-body tr.detail')
    await detail.waitFor()
    expect(JSON.parse((await detail.textContent())!)).toMatchObject({ id: event.id, seq: 1, channelId: 'agent:ui-agent' })
    await spawned.click()
    await detail.waitFor({ state: 'detached' })
  })

  test('a replay from a seq, and filters by channel and type', async () => {
    // Two task events stored before anyone listens; the replay from seq 0 brings both, the one
    // from their first seq only the second.
    const created = makeEvent({ type: 'task.created', payload: { taskId: 'ui-task', title: 'Try the console', projectId: 'p1' } })
    const started = makeEvent({ type: 'task.started', payload: { taskId: 'ui-task' } })
    await ingest(server.url, { events: [created, started] })
    await page.fill('#sub-channel', 'task:ui-task')
    await page.fill('#sub-since', '2')
    await page.click('#subscribe-form button[type=submit]')
    await row(page, 'task.started').waitFor()
    expect(await row(page, 'task.started').locator('td.seq').textContent()).toBe('3')
    expect(await row(page, 'task.created').count()).toBe(0)

    await page.selectOption('#filter-channel', 'agent:ui-agent')
    await row(page, 'task.started').waitFor({ state: 'hidden' })
    expect(await row(page, 'agent.spawned').isVisible()).toBe(true)
    await page.selectOption('#filter-channel', '')
    await row(page, 'task.started').waitFor()

    await page.fill('#filter-type', 'task.')
    await row(page, 'agent.spawned').waitFor({ state: 'hidden' })
    expect(await row(page, 'task.started').isVisible()).toBe(true)
    await page.fill('#filter-type', '')
    await row(page, 'agent.spawned').waitFor()
  })

  test('pause keeps and counts events; resume shows them', async () => {
    await page.click('#pause')
    await page.locator('#pause', { hasText: 'Resume' }).waitFor()
    const status = makeEvent({ type: 'agent.status', payload: { agentId: 'a1', agentName: 'ui-agent', status: 'busy', message: 'thinking' } })
    await ingest(server.url, status)
    await page.locator('#pause', { hasText: /Resume \(\d+ new\)/ }).waitFor()
    await page.locator('#log-count', { hasText: 'held while paused' }).waitFor()
    expect(await row(page, 'agent.status').count()).toBe(0)

    await page.click('#pause')
    await row(page, 'agent.status').waitFor()
    expect(await page.locator('#pause').textContent()).toBe('Pause')
  })

  test('copy diagnostics shows (and copies) the connection, stats and log as JSON', async () => {
    await browser.context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url })
    await page.click('#copy-diagnostics')
    await page.locator('#diagnostics[open]').waitFor()
    const text = (await page.locator('#diagnostics-json').textContent())!
    const diagnostics = JSON.parse(text)
    expect(diagnostics).toMatchObject({
      authMode: 'none',
      principal: { orgId: 'local', userId: 'local' },
      client: { status: 'open', transport: 'websocket', lastError: null },
      cursors: { 'agent:ui-agent': 4, 'task:ui-task': 3 },
      health: { status: 'ok', connections: 1, channels: 2 },
    })
    expect(diagnostics.userAgent).toContain('Chrome')
    expect(diagnostics.client.subscriptions.map((s: { channelId: string }) => s.channelId).sort()).toEqual(['agent:ui-agent', 'task:ui-task'])
    expect(diagnostics.log.last.filter((e: { kind: string }) => e.kind === 'event').map((e: { type: string }) => e.type)).toEqual([
      'agent.spawned',
      'task.started',
      'agent.status',
    ])
    expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(text)
    await page.click('#diagnostics-close')
    await page.locator('#diagnostics').waitFor({ state: 'hidden' })
  })

  test('publishes a test event from the page and sees it arrive', async () => {
    // Bad input is reported in the page, not sent.
    await page.fill('#pub-payload', '[1, 2]')
    await page.click('#publish-form button[type=submit]')
    await page.locator('#pub-result', { hasText: 'payload must be a JSON object' }).waitFor()

    await page.fill('#pub-type', 'debug.test')
    await page.fill('#pub-channel', 'agent:ui-agent')
    await page.fill('#pub-payload', '{ "message": "hello from the browser test" }')
    await page.click('#publish-form button[type=submit]')
    await page.locator('#pub-result', { hasText: 'stored 1, duplicates 0' }).waitFor()
    const published = row(page, 'debug.test')
    await published.waitFor()
    expect(await published.locator('td.channel').textContent()).toBe('agent:ui-agent')
    const stored = await getJson(`${server.url}/api/events/since?channel=agent:ui-agent&since=4`)
    expect(stored.body.events).toMatchObject([{ type: 'debug.test', orgId: 'local', payload: { message: 'hello from the browser test' } }])
    expect(stored.body.events[0].channels.sort()).toEqual(['agent:ui-agent', 'org:local'])

  })

  test('no errors on the page; a screenshot for the README', async () => {
    await page.locator('#s-lastseq', { hasText: '5' }).waitFor()
    // One frame opened, as a reader of the README would see it.
    await row(page, 'agent.spawned').click()
    await page.locator('#log-body tr.detail').waitFor()
    mkdirSync(dirname(SCREENSHOT), { recursive: true })
    await page.screenshot({ path: SCREENSHOT })
    expect(problems).toEqual([])
  })

  test('reconnect opens a new connection that resumes every channel from its cursor', async () => {
    await page.click('#reconnect')
    await page.locator('#c-reconnects', { hasText: '(+1 manual)' }).waitFor()
    await pill(page, 'open').waitFor()
    await subscribedChannels(2)
    const status = makeEvent({ type: 'agent.status', payload: { agentId: 'a1', agentName: 'ui-agent', status: 'idle', message: 'done' } })
    await ingest(server.url, status)
    await page.locator(`#log-body tr.entry.event td.id[title="${status.id}"]`).waitFor()
    // Nothing delivered before the reconnect came again.
    expect(await row(page, 'agent.spawned').count()).toBe(1)
    expect(await row(page, 'debug.test').count()).toBe(1)
    expect(await row(page, 'agent.status').count()).toBe(2)
    expect(problems).toEqual([])
  })

  test('refused under a host name that is not loopback (DNS rebinding)', async () => {
    for (const path of ['/debug', '/debug/app.js']) {
      const response = await fetch(`${server.url}${path}`, { headers: { host: 'rebound.example:80' } })
      expect(response.status).toBe(403)
      expect(await response.text()).toContain('loopback')
    }
    const ok = await fetch(`${server.url}/debug`, { headers: { host: `localhost:${server.server.port}` } })
    expect(ok.status).toBe(200)
    expect(ok.headers.get('content-security-policy')).toContain("script-src 'self'")
  })
})

const SECRET = 'switchboard-browser-test-secret-0123456789'

suite('debug console, jwt mode', () => {
  let server: TestServer
  let browser: Browser

  beforeAll(async () => {
    server = await startServer({ auth: { mode: 'jwt', secret: SECRET } })
    browser = await launchBrowser()
  })
  afterAll(async () => {
    await browser?.close()
    await server?.close()
  })

  test('the page loads for anyone but shows nothing until a token is given', async () => {
    const { page, problems } = await openPage(browser)
    const requested: string[] = []
    page.on('request', (request) => requested.push(new URL(request.url()).pathname))

    const response = await fetch(`${server.url}/debug`, { headers: { host: 'realtime.example.com' } })
    expect(response.status).toBe(200)

    await page.goto(`${server.url}/debug`)
    await page.locator('#signin-form', { hasText: 'Sign in' }).waitFor()
    await pill(page, 'signed out').waitFor()
    expect(await page.locator('#app').isHidden()).toBe(true)
    // Nothing but the page and its script is fetched before a token is given.
    expect(requested.filter((path) => !path.startsWith('/debug') && path !== '/favicon.ico')).toEqual([])

    // A bad token: the server closes the socket with 4401 and the client stops retrying.
    await page.fill('#token', 'not-a-token')
    await page.click('#signin-form button[type=submit]')
    await pill(page, 'offline').waitFor()
    await page.locator('#c-error', { hasText: '4401' }).waitFor()
    await page.click('#sign-out')
    await page.locator('#signin-form').waitFor()

    const token = await new SignJWT({ org: 'acme' })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject('alice')
      .setExpirationTime(Math.floor(Date.now() / 1000) + 3600)
      .sign(new TextEncoder().encode(SECRET))
    await page.fill('#token', token)
    await page.click('#signin-form button[type=submit]')
    await pill(page, 'open').waitFor()
    expect(await page.inputValue('#pub-org')).toBe('acme')
    expect(await page.inputValue('#pub-user')).toBe('alice')

    // The token is kept for this tab: a reload signs in again without asking.
    await page.reload()
    await pill(page, 'open').waitFor()
    expect(await page.locator('#signin').isHidden()).toBe(true)
    // The bad token's refused heartbeat is the only error the browser reports.
    expect(problems.filter((problem) => !problem.includes('401'))).toEqual([])
  })
})
