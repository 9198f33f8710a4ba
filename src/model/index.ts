/** The wire model shared by server and client: zod values and the types derived from them. */
export * from './channels'
export * from './events'
export * from './http'
export * from './protocol'
export * from './state'
