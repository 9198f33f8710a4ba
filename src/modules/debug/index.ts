import { fileURLToPath } from 'node:url'
import { Elysia } from 'elysia'
import type { Config } from '../../config'
import type { Logger } from '../../log'
import { debugAccess } from './access'

const PAGE_HTML = fileURLToPath(new URL('../../debug/page.html', import.meta.url))
const PAGE_SCRIPT = fileURLToPath(new URL('../../debug/page.ts', import.meta.url))

/**
 * The page's script: src/debug/page.ts and the typed client, bundled for browsers once per process
 * (at the first request, so servers that never serve the console never pay for a build). A failed
 * build is not kept: the next request tries again.
 */
let script: Promise<string> | undefined

async function buildScript(): Promise<string> {
  const result = await Bun.build({ entrypoints: [PAGE_SCRIPT], target: 'browser', format: 'esm', minify: true })
  if (!result.success || result.outputs.length !== 1) {
    throw new Error(result.logs.map((log) => String(log.message ?? log)).join('\n') || 'no output')
  }
  return result.outputs[0]!.text()
}

let template: Promise<string> | undefined

const escapeAttribute = (value: string) =>
  value.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!)

/** The page's own `<style>` is allowed by its hash; no other inline style or script runs. */
function securityPolicy(html: string): string {
  const css = /<style>([\s\S]*?)<\/style>/.exec(html)?.[1] ?? ''
  const hash = new Bun.CryptoHasher('sha256').update(css).digest('base64')
  return [
    "default-src 'none'",
    "script-src 'self'",
    `style-src 'sha256-${hash}'`,
    "connect-src 'self'",
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ')
}

const text = (status: number, body: string) =>
  new Response(body, { status, headers: { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' } })

/**
 * GET /debug (the console) and GET /debug/app.js (its script), seed 003's debug page.
 *
 * In `none` mode both are served to loopback only (see access.ts); the page is told the local
 * principal, so its test events carry the right orgId/userId. In `jwt` mode both are public: the
 * page asks for a token and everything it shows comes from the API under that token.
 */
export function debugModule(config: Config, log: Logger) {
  const mode = config.auth.mode
  const principal = config.auth.mode === 'none' ? { orgId: config.auth.orgId, userId: config.auth.userId } : { orgId: '', userId: '' }
  const page = (template ??= Bun.file(PAGE_HTML).text()).then((html) => {
    const rendered = html
      .replace('{{authMode}}', () => mode)
      .replace('{{orgId}}', () => escapeAttribute(principal.orgId))
      .replace('{{userId}}', () => escapeAttribute(principal.userId))
    return { html: rendered, policy: securityPolicy(rendered) }
  })
  // A rejected template read would otherwise be reported as unhandled before the first request.
  page.catch(() => {})

  const refused = (request: Request, server: { requestIP(request: Request): { address: string } | null } | null) => {
    const host = request.headers.get('host') ?? new URL(request.url).host
    const access = debugAccess(mode, server?.requestIP(request)?.address, host)
    return access.allowed ? null : text(403, access.reason)
  }

  return new Elysia({ name: 'debug' })
    .get('/debug', async ({ request, server }) => {
      const refusal = refused(request, server)
      if (refusal) return refusal
      try {
        const { html, policy } = await page
        return new Response(html, {
          headers: {
            'content-type': 'text/html; charset=utf-8',
            'cache-control': 'no-store',
            'content-security-policy': policy,
            'x-content-type-options': 'nosniff',
            'referrer-policy': 'no-referrer',
          },
        })
      } catch (error) {
        log.error('debug_page_failed', { error: String(error) })
        return text(500, 'the debug console page could not be read; see the server log')
      }
    })
    .get('/debug/app.js', async ({ request, server }) => {
      const refusal = refused(request, server)
      if (refusal) return refusal
      try {
        const body = await (script ??= buildScript())
        return new Response(body, {
          headers: { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' },
        })
      } catch (error) {
        script = undefined
        log.error('debug_bundle_failed', { error: String(error) })
        return text(500, 'the debug console script could not be built; see the server log')
      }
    })
}
