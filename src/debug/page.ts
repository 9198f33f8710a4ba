/**
 * The debug console (seed 003, "Part 7: Debugging Tools"), in the browser: what the typed client
 * knows about its connection, the server's figures, and a live log of the events it receives.
 * Served by src/modules/debug; no framework. Every value reaches the DOM as text (textContent), never
 * as markup.
 */
import { createRealtimeClient, type ConnectionInfo, type HealthBody, isChannelId, type OtherFrame, type RealtimeClient } from '../client'

/** Rows kept in the log; the oldest go first. */
const MAX_ENTRIES = 1000
/** Log entries put into the diagnostics JSON. */
const DIAGNOSTIC_ENTRIES = 50
const STATS_EVERY_MS = 2000
const TOKEN_KEY = 'switchboard.debug.token'

interface Stats {
  lastSeq?: number
  epoch?: string
  subscriptions?: string[]
  entities?: Record<string, number>
}

interface Entry {
  at: number
  /** `event`: a frame from a subscription; `note`: something the console itself did or saw. */
  kind: 'event' | 'note'
  seq: number | null
  channel: string
  type: string
  id: string
  data: unknown
  row?: HTMLTableRowElement
  detail?: HTMLTableRowElement
}

// ── the page's elements ───────────────────────────────────────────────────

const $ = <T extends HTMLElement = HTMLElement>(id: string) => {
  const found = document.getElementById(id)
  if (!found) throw new Error(`#${id} is missing from page.html`)
  return found as T
}
const setText = (id: string, value: unknown) => {
  $(id).textContent = value === null || value === undefined || value === '' ? '—' : String(value)
}
function el<K extends keyof HTMLElementTagNameMap>(tag: K, className?: string, text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag)
  if (className) node.className = className
  if (text !== undefined) node.textContent = text
  return node
}

const config = document.body.dataset
const authMode = config.authMode === 'jwt' ? 'jwt' : 'none'
const url = location.origin

// ── state ─────────────────────────────────────────────────────────────────

let client: RealtimeClient | null = null
let stopStateListener = () => {}
/** Page-level restarts (the Reconnect button): each makes a new client. */
let restarts = 0
const channels = new Map<string, { unsubscribe: () => void; item: HTMLLIElement }>()
const entries: Entry[] = []
let paused = false
let health: HealthBody | null = null
let stats: Stats | null = null
let statsRtt: number | null = null
let statsError: string | null = null
let statsUpdatedAt: number | null = null
let lastStatus: string | null = null
let lastError: string | null = null
/** Who test events are published as: the local principal (none mode) or the token's claims (jwt). */
let principal = { orgId: config.orgId ?? '', userId: config.userId ?? '' }

// ── the client ────────────────────────────────────────────────────────────

/** A UUID also outside secure contexts (a jwt-mode server reached over plain http), where crypto.randomUUID is missing. */
function uuid(): string {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID()
  const b = crypto.getRandomValues(new Uint8Array(16))
  b[6] = (b[6]! & 0x0f) | 0x40
  b[8] = (b[8]! & 0x3f) | 0x80
  const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

const clientId = `debug-${uuid()}`

function startClient(token: string | undefined): void {
  client = createRealtimeClient({
    url,
    clientId,
    kind: 'debug',
    ...(token ? { token } : {}),
    onTruncated: (channelId) => note('truncated', `events after the cursor were pruned; replay starts at the oldest stored event`, channelId),
  })
  stopStateListener = client.onState(renderConnection)
  renderConnection(client.state)
}

/** Closes the client and opens a new one, resuming every channel from the last seq it delivered. */
function restart(): void {
  if (!client) return
  const cursors = [...channels.keys()].map((channelId) => [channelId, client!.cursor(channelId) ?? 0] as const)
  const epoch = client.state.epoch ?? undefined
  stopStateListener()
  client.close()
  restarts++
  note('status', `reconnect requested: new connection, resuming ${cursors.length} channel(s)`)
  startClient(storedToken())
  for (const [channelId, since] of cursors) subscribe(channelId, since, false, epoch)
}

function subscribe(channelId: string, since: number | undefined, announce = true, epoch?: string): void {
  if (!client) return
  // Subscribing again restarts the channel (with the new `since`), as the protocol does.
  channels.get(channelId)?.unsubscribe()
  channels.get(channelId)?.item.remove()
  const onEvent = (frame: OtherFrame) => {
    add({ at: Date.now(), kind: 'event', seq: frame.seq, channel: frame.channelId, type: frame.type, id: frame.id, data: frame })
    const cursor = channels.get(frame.channelId)?.item.querySelector('.cursor')
    if (cursor) cursor.textContent = `cursor ${frame.seq}`
  }
  const replay = since === undefined ? {} : { since, ...(epoch ? { epoch } : {}) }
  const unsubscribe = client.subscribe(channelId, onEvent as never, { ...replay, onOther: onEvent })
  const item = el('li')
  item.dataset.channel = channelId
  const name = el('span', 'channel', channelId)
  name.title = channelId
  const remove = el('button', 'small', 'Unsubscribe')
  remove.type = 'button'
  remove.addEventListener('click', () => unsubscribeChannel(channelId))
  item.append(name, el('span', 'cursor', since === undefined ? 'live' : `since ${since}`), remove)
  $('sub-list').append(item)
  channels.set(channelId, { unsubscribe, item })
  if (announce) note('subscribe', since === undefined ? 'live events from now on' : `replay after seq ${since}, then live`, channelId)
  renderChannelLists()
}

function unsubscribeChannel(channelId: string): void {
  const entry = channels.get(channelId)
  if (!entry) return
  entry.unsubscribe()
  entry.item.remove()
  channels.delete(channelId)
  note('unsubscribe', '', channelId)
  renderChannelLists()
}

// ── the event log ─────────────────────────────────────────────────────────

function note(type: string, message: string, channel = ''): void {
  add({ at: Date.now(), kind: 'note', seq: null, channel, type, id: '', data: { message } })
}

function add(entry: Entry): void {
  entries.push(entry)
  while (entries.length > MAX_ENTRIES) {
    const old = entries.shift()!
    old.row?.remove()
    old.detail?.remove()
  }
  if (entry.kind === 'event') learnType(entry.type)
  if (!paused) render(entry)
  renderCount()
}

const compact = (value: unknown) => {
  const json = JSON.stringify(value) ?? ''
  return json.length > 300 ? `${json.slice(0, 300)}…` : json
}
const clock = (at: number) => {
  const d = new Date(at)
  const pad = (n: number, width = 2) => String(n).padStart(width, '0')
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`
}

/** Newest first: a new row goes on top, so the latest is always in view without scrolling. */
function render(entry: Entry): void {
  const row = el('tr', `entry ${entry.kind}`)
  row.dataset.channel = entry.channel
  row.dataset.type = entry.type
  const payload = entry.kind === 'event' ? (entry.data as OtherFrame).payload : (entry.data as { message: string }).message
  const cells = [clock(entry.at), entry.seq ?? '', entry.channel, entry.type, entry.id.slice(0, 8), typeof payload === 'string' ? payload : compact(payload)]
  const names = ['time', 'seq', 'channel', 'type', 'id', 'payload']
  cells.forEach((value, i) => {
    const cell = el('td', names[i], String(value))
    cell.title = i === 4 ? entry.id : String(value)
    row.append(cell)
  })
  row.addEventListener('click', () => toggleDetail(entry))
  entry.row = row
  row.hidden = !matches(entry)
  $('log-body').prepend(row)
}

function toggleDetail(entry: Entry): void {
  if (entry.detail) {
    entry.detail.remove()
    entry.detail = undefined
    entry.row?.classList.remove('open')
    return
  }
  const detail = el('tr', 'detail')
  const cell = el('td', undefined, JSON.stringify(entry.data, null, 2))
  cell.colSpan = 6
  detail.append(cell)
  entry.row?.after(detail)
  entry.row?.classList.add('open')
  entry.detail = detail
}

function matches(entry: Entry): boolean {
  const channel = $<HTMLSelectElement>('filter-channel').value
  const type = $<HTMLInputElement>('filter-type').value.trim().toLowerCase()
  return (!channel || entry.channel === channel) && (!type || entry.type.toLowerCase().includes(type))
}

function applyFilters(): void {
  for (const entry of entries) {
    if (!entry.row) continue
    entry.row.hidden = !matches(entry)
    if (entry.detail) entry.detail.hidden = entry.row.hidden
  }
  renderCount()
}

function renderCount(): void {
  const shown = entries.filter((e) => e.row && !e.row.hidden).length
  const held = entries.filter((e) => !e.row).length
  setText('log-count', `${shown} shown · ${entries.length} kept${held ? ` · ${held} held while paused` : ''}`)
  $('log-empty').hidden = entries.length > 0
  $('pause').textContent = paused ? `Resume${held ? ` (${held} new)` : ''}` : 'Pause'
}

function setPaused(value: boolean): void {
  paused = value
  $('pause').setAttribute('aria-pressed', String(paused))
  if (!paused) for (const entry of entries) if (!entry.row) render(entry)
  renderCount()
}

const knownTypes = new Set<string>()
function learnType(type: string): void {
  if (knownTypes.has(type)) return
  knownTypes.add(type)
  const option = el('option')
  option.value = type
  $('type-list').append(option)
}

/** The channel filter and the channel suggestions follow the subscriptions (and keep channels seen in the log). */
function renderChannelLists(): void {
  const select = $<HTMLSelectElement>('filter-channel')
  const known = new Set([...channels.keys(), ...entries.map((e) => e.channel).filter(Boolean), select.value].filter(Boolean))
  const chosen = select.value
  select.replaceChildren(new Option('All channels', ''), ...[...known].sort().map((c) => new Option(c, c)))
  select.value = chosen
  $('channel-list').replaceChildren(...[...channels.keys()].map((c) => new Option(c, c)))
  $('sub-empty').hidden = channels.size > 0
}

// ── connection and server panels ──────────────────────────────────────────

const ago = (at: number) => `${Math.max(0, Math.round((Date.now() - at) / 1000))} s ago`

function renderConnection(state: ConnectionInfo): void {
  const pill = $('status-pill')
  pill.dataset.status = state.status
  pill.textContent = state.status
  setText('c-status', state.status)
  setText('c-transport', state.transport)
  setText('c-url', `${url.replace(/^http/, 'ws')}/ws`)
  setText('c-reconnects', restarts ? `${state.reconnects} (+${restarts} manual)` : state.reconnects)
  setText('c-pending', state.pendingRequests)
  setText('c-epoch', state.epoch)
  setText('c-error', state.lastError)
  $('c-error').classList.toggle('error-text', Boolean(state.lastError))
  const hb = state.heartbeat
  setText('c-heartbeat', hb.lastError ? `failing: ${hb.lastError}` : hb.lastOkAt ? `ok, ${clock(hb.lastOkAt)} (${ago(hb.lastOkAt)})` : 'not yet')
  $('c-heartbeat').classList.toggle('error-text', Boolean(hb.lastError))
  if (state.status !== lastStatus) {
    lastStatus = state.status
    note('status', `${state.status}${state.transport ? ` over ${state.transport}` : ''}`)
    // Fresh figures as soon as the socket is up (the stats request needs it), not at the next tick.
    if (state.status === 'open') void refreshAfterNow()
  }
  if (state.lastError && state.lastError !== lastError) note('error', state.lastError)
  lastError = state.lastError
}

/** One refresh at a time; callers during one share it. */
let refreshing: Promise<void> | null = null
function refreshStats(): Promise<void> {
  refreshing ??= loadStats().finally(() => {
    refreshing = null
  })
  return refreshing
}

/** A refresh that starts after now: waits out the one under way, if any. */
const refreshAfterNow = () => (refreshing ?? Promise.resolve()).then(refreshStats)

async function loadStats(): Promise<void> {
  const current = client
  if (!current) return
  try {
    health = await current.health()
    statsError = null
    if (current.state.status === 'open' && current.state.transport === 'websocket') {
      const started = performance.now()
      stats = await current.request<Stats>('stats', undefined, { timeoutMs: 5000 })
      statsRtt = Math.round(performance.now() - started)
    }
    statsUpdatedAt = Date.now()
  } catch (error) {
    statsError = (error as Error).message
  }
  renderServer()
  if (client) renderConnection(client.state)
}

function renderServer(): void {
  setText('s-connections', health?.connections)
  setText('s-channels', health?.channels)
  setText('s-events', health?.eventsStored)
  setText('s-uptime', health ? formatUptime(health.uptime) : null)
  setText('s-lastseq', stats?.lastSeq)
  setText('s-rtt', statsRtt === null ? null : `${statsRtt} ms`)
  setText('s-principal', principal.orgId ? `${principal.orgId} / ${principal.userId || '?'}` : 'unknown (API key: type the orgId below)')
  setText('s-error', statsError)
  $('s-error').classList.toggle('error-text', Boolean(statsError))
  $('s-updated').textContent = statsUpdatedAt ? `updated ${clock(statsUpdatedAt)}` : ''
  for (const [channelId, { item }] of channels) {
    const count = stats?.entities?.[channelId]
    item.title = count === undefined ? channelId : `${channelId}: ${count} live entities`
    const cursor = client?.cursor(channelId)
    if (cursor !== undefined) item.querySelector('.cursor')!.textContent = `cursor ${cursor}`
  }
}

function formatUptime(seconds: number): string {
  const h = Math.floor(seconds / 3600)
  const m = Math.floor((seconds % 3600) / 60)
  return h ? `${h} h ${m} min` : m ? `${m} min ${seconds % 60} s` : `${seconds} s`
}

// ── forms and actions ─────────────────────────────────────────────────────

function onSubscribe(event: SubmitEvent): void {
  event.preventDefault()
  const channelId = $<HTMLInputElement>('sub-channel').value.trim()
  const sinceText = $<HTMLInputElement>('sub-since').value.trim()
  const since = sinceText === '' ? undefined : Number(sinceText)
  const result = $('sub-result')
  if (!isChannelId(channelId)) return void (result.textContent = `"${channelId}" is not a channel id (kind:name, e.g. org:local)`)
  if (since !== undefined && !(Number.isInteger(since) && since >= 0)) return void (result.textContent = 'since must be a whole number ≥ 0')
  result.textContent = ''
  subscribe(channelId, since)
  $<HTMLInputElement>('sub-channel').value = ''
  $<HTMLInputElement>('sub-since').value = ''
}

async function onPublish(event: SubmitEvent): Promise<void> {
  event.preventDefault()
  const result = $('pub-result')
  result.className = 'result'
  let payload: unknown
  try {
    payload = JSON.parse($<HTMLTextAreaElement>('pub-payload').value)
  } catch (error) {
    return fail(`payload is not JSON: ${(error as Error).message}`)
  }
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) return fail('payload must be a JSON object')
  const channel = $<HTMLInputElement>('pub-channel').value.trim()
  const orgId = $<HTMLInputElement>('pub-org').value.trim()
  const test = {
    id: uuid(),
    type: $<HTMLInputElement>('pub-type').value.trim(),
    orgId,
    userId: $<HTMLInputElement>('pub-user').value.trim(),
    timestamp: Date.now(),
    payload: payload as Record<string, unknown>,
    // Naming channels replaces the derived ones: keep the organisation's channel too.
    ...(channel ? { channels: [...new Set([`org:${orgId}`, channel])] } : {}),
  }
  try {
    const answer = await client!.ingest(test as never)
    result.textContent = `published ${test.type} ${test.id.slice(0, 8)}: stored ${answer.stored}, duplicates ${answer.duplicates}`
    note('publish', `${test.type} ${test.id} stored`, channel)
    void refreshAfterNow()
  } catch (error) {
    fail(`publish failed: ${(error as Error).message}`)
  }
  function fail(message: string) {
    result.textContent = message
    result.className = 'result error-text'
    note('error', message)
  }
}

function diagnostics() {
  return {
    generatedAt: new Date().toISOString(),
    page: location.href,
    userAgent: navigator.userAgent,
    authMode,
    principal,
    clientId,
    manualReconnects: restarts,
    client: client?.state ?? null,
    cursors: Object.fromEntries([...channels.keys()].map((c) => [c, client?.cursor(c) ?? null])),
    health,
    stats,
    statsRttMs: statsRtt,
    statsError,
    log: {
      paused,
      kept: entries.length,
      last: entries.slice(-DIAGNOSTIC_ENTRIES).map(({ row: _r, detail: _d, ...entry }) => ({ ...entry, at: new Date(entry.at).toISOString() })),
    },
  }
}

/** Copies to the clipboard (a textarea and execCommand where the Clipboard API is unavailable or refused), and shows it. */
async function copyDiagnostics(): Promise<void> {
  await refreshAfterNow()
  const json = JSON.stringify(diagnostics(), null, 2)
  $('diagnostics-json').textContent = json
  let copied = false
  try {
    await navigator.clipboard.writeText(json)
    copied = true
  } catch {
    const area = el('textarea')
    area.value = json
    document.body.append(area)
    area.select()
    try {
      copied = document.execCommand('copy')
    } catch {}
    area.remove()
  }
  setText('diagnostics-note', copied ? '— copied to the clipboard' : '— select the text below and copy it')
  const dialog = $<HTMLDialogElement>('diagnostics')
  if (!dialog.open) dialog.showModal()
}

// ── start ─────────────────────────────────────────────────────────────────

const storedToken = () => (authMode === 'jwt' ? (sessionStorage.getItem(TOKEN_KEY) ?? undefined) : undefined)

/** A JWT's claims name the principal (`org`, `sub`); an API key's cannot be read here, so the user types its orgId. */
function principalFromToken(token: string): { orgId: string; userId: string } {
  try {
    const claims = JSON.parse(atob(token.split('.')[1]!.replace(/-/g, '+').replace(/_/g, '/'))) as { org?: unknown; sub?: unknown }
    return { orgId: typeof claims.org === 'string' ? claims.org : '', userId: typeof claims.sub === 'string' ? claims.sub : '' }
  } catch {
    return { orgId: '', userId: '' }
  }
}

function open(token: string | undefined): void {
  if (token) principal = principalFromToken(token)
  $<HTMLInputElement>('pub-org').value = principal.orgId
  $<HTMLInputElement>('pub-user').value = principal.userId || 'debug-console'
  $('signin').hidden = true
  $('app').hidden = false
  $('sign-out').hidden = authMode !== 'jwt'
  $('reconnect').hidden = false
  $('copy-diagnostics').hidden = false
  startClient(token)
  renderServer()
  void refreshStats()
}

function showSignIn(): void {
  $('app').hidden = true
  $('signin').hidden = false
  $('reconnect').hidden = true
  $('copy-diagnostics').hidden = true
  $('sign-out').hidden = true
  const pill = $('status-pill')
  pill.dataset.status = 'closed'
  pill.textContent = 'signed out'
  $('token').focus()
}

$('subscribe-form').addEventListener('submit', onSubscribe)
$('publish-form').addEventListener('submit', (event) => void onPublish(event))
$('filter-channel').addEventListener('change', applyFilters)
$('filter-type').addEventListener('input', applyFilters)
$('pause').addEventListener('click', () => setPaused(!paused))
$('clear').addEventListener('click', () => {
  for (const entry of entries.splice(0)) {
    entry.row?.remove()
    entry.detail?.remove()
  }
  renderCount()
})
$('reconnect').addEventListener('click', restart)
$('copy-diagnostics').addEventListener('click', () => void copyDiagnostics())
$('diagnostics-close').addEventListener('click', () => $<HTMLDialogElement>('diagnostics').close())
$('signin-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const token = $<HTMLInputElement>('token').value.trim()
  if (!token) return
  sessionStorage.setItem(TOKEN_KEY, token)
  $<HTMLInputElement>('token').value = ''
  open(token)
})
$('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY)
  stopStateListener()
  client?.close()
  client = null
  for (const channelId of [...channels.keys()]) unsubscribeChannel(channelId)
  showSignIn()
})
window.addEventListener('beforeunload', () => client?.close())
setInterval(() => void refreshStats(), STATS_EVERY_MS)

setText('header-url', url)
renderCount()
renderChannelLists()
if (authMode === 'jwt' && !storedToken()) showSignIn()
else open(storedToken())
