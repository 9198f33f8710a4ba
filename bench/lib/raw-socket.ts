import type { Socket } from 'bun'

/** A loader connection parsed straight out of TCP chunks (raw-ws.ts, raw-sse.ts). */
export interface RawConnection<C> {
  socket: Socket<C> | null
  feed(chunk: Uint8Array): void
  ended(): void
  fail(error: Error): void
}

/**
 * Connects `conn` to host:port, lets `greet` send its opening request once the socket is open,
 * and resolves when `conn` reports (through the callbacks given to `wait`) that the server agreed.
 */
export function openRaw<C extends RawConnection<C>>(
  host: string,
  port: number,
  conn: C,
  wait: (resolve: (conn: C) => void, reject: (error: Error) => void) => void,
  greet: (conn: C) => void,
): Promise<C> {
  return new Promise<C>((resolve, reject) => {
    wait(resolve, reject)
    Bun.connect<C>({
      hostname: host,
      port,
      data: conn,
      socket: {
        open(socket) {
          socket.data.socket = socket
          greet(socket.data)
        },
        data(socket, chunk) {
          socket.data.feed(chunk)
        },
        close(socket) {
          socket.data.ended()
        },
        error(socket, error) {
          socket.data.fail(error)
        },
        connectError(socket, error) {
          socket.data.fail(error)
        },
      },
    }).catch(reject)
  })
}
