/** The package entry for embedding programs: `import { createRealtimeServer } from 'switchboard'`. */
export { createRealtimeServer, type PublishInput, type RealtimeServer, type RealtimeServerOptions } from './server'
export { type Config, ConfigError, defaultConfig, loadConfig } from './config'
export { CloseCode, WsErrorCode } from './errors'
export { createLogger, type Logger } from './log'
export type { App } from './app'
export * from './model'
