/**
 * The typed Switchboard client, for browsers and Bun: `import { createRealtimeClient } from 'switchboard/client'`.
 * It imports only the shared model (zod), Eden, and `type App` (erased at build time).
 */
export { createRealtimeClient, type RealtimeClient, type RealtimeClientOptions, RpcCallError, type SubscribeOptions } from './realtime-client'
export { RealtimeHttpError } from './http'
export type { LiveChange, LiveChannel, LiveSnapshot } from './live'
export { backoffDelay, type BackoffOptions, DEFAULT_BACKOFF } from './backoff'
export { type Clock, systemClock } from './clock'
export type { CallOrigin, ConnectionInfo, ConnectionStatus, CustomTypes, KnownFrame, MethodMap, OtherFrame } from './types'
export * from '../model'
