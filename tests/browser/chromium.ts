import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type BrowserContext, chromium } from 'playwright-core'

/**
 * Debian's chromium, driven by playwright-core (no browser download works here). CI installs it
 * (.ci/run); without it the browser tests fail, unless SWITCHBOARD_SKIP_BROWSER=1 says to skip them.
 */
export const CHROMIUM = process.env.SWITCHBOARD_CHROMIUM ?? '/usr/bin/chromium'
export const chromiumMissing = !existsSync(CHROMIUM)
export const skipBrowser = chromiumMissing && process.env.SWITCHBOARD_SKIP_BROWSER === '1'
if (skipBrowser) console.warn(`browser tests skipped: no chromium at ${CHROMIUM} and SWITCHBOARD_SKIP_BROWSER=1`)

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
]

/** A fresh browser with its own profile in a temp dir, at a laptop's screen size; `close` removes both. */
export async function launchBrowser(): Promise<{ context: BrowserContext; close(): Promise<void> }> {
  if (chromiumMissing) {
    throw new Error(`no chromium at ${CHROMIUM}: install it (apt-get install -y chromium) or set SWITCHBOARD_SKIP_BROWSER=1 to skip the browser tests`)
  }
  const profile = mkdtempSync(join(tmpdir(), 'switchboard-chromium-'))
  try {
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      viewport: { width: 1366, height: 768 },
      timeout: 15_000,
    })
    return {
      context,
      async close() {
        await context.close()
        rmSync(profile, { recursive: true, force: true })
      },
    }
  } catch (error) {
    rmSync(profile, { recursive: true, force: true })
    throw error
  }
}
