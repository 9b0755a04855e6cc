// `meshbuild nar dump-path PATH` and `meshbuild nar restore DIR`: the NAR codec on the command
// line, byte-compatible with `nix-store --dump` and `nix-store --restore`.
import { fstatSync, read } from 'node:fs'
import { Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import type { Argv, CommandModule } from 'yargs'
import { ChunkPool, encodeNar } from '../../../protocols/nix/nar-encoder.ts'
import { NarFormatError, NarFileChangedError, NarUnsupportedFileError } from '../../../protocols/nix/nar-format.ts'
import { NarRestoreTargetExistsError, restoreNar } from '../../../protocols/nix/nar-restore.ts'
import { CommandFailed, ExitCode } from '../exit-codes.ts'

/** Exit code after SIGINT/SIGTERM, as shells report a signal death (128 + SIGINT). */
const INTERRUPTED = 130
const STDIN = 0
/** stdin is read in pieces of this size. */
const READ_CHUNK = 1024 * 1024
const fsRead = promisify(read)

interface DumpArgs { path: string }
interface RestoreArgs { dir: string }

const dumpPathCommand: CommandModule<object, DumpArgs> = {
  command: 'dump-path <path>',
  describe: 'Write the NAR serialisation of PATH to stdout (same bytes as nix-store --dump)',
  builder: (y: Argv) => y
    .positional('path', { type: 'string', demandOption: true, describe: 'file, symlink or directory to archive (symlinks are not followed)' })
    .example('$0 nar dump-path ./result > out.nar', 'archive a tree')
    .example('$0 nar dump-path /nix/store/…-hello | sha256sum', 'hash the NAR without storing it') as Argv<DumpArgs>,
  handler: async (args) => {
    try {
      const pool = new ChunkPool()
      await writeChunks(process.stdout, encodeNar(args.path, { pool }), pool)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (err instanceof NarUnsupportedFileError || err instanceof NarFileChangedError) throw new CommandFailed(err.message)
      if (code === 'ENOENT' || code === 'EACCES' || code === 'ENOTDIR') throw new CommandFailed(`cannot archive '${args.path}': ${(err as Error).message}`)
      if (code === 'EPIPE') throw new CommandFailed('', ExitCode.failure) // the reader went away; nothing to say
      throw err
    }
  }
}

const restoreCommand: CommandModule<object, RestoreArgs> = {
  command: 'restore <dir>',
  describe: 'Read a NAR from stdin and write it to DIR, which must not exist (like nix-store --restore)',
  builder: (y: Argv) => y
    .positional('dir', { type: 'string', demandOption: true, describe: 'where to create the tree (or file, or symlink)' })
    .epilog('The tree is built beside DIR and renamed into place only when the whole NAR was valid; on bad input nothing is left behind and the exit code is 1.')
    .example('$0 nar restore ./out < some.nar', 'unpack a NAR') as Argv<RestoreArgs>,
  handler: async (args) => {
    const abort = new AbortController()
    const stop = (): void => { abort.abort(new Error('interrupted')) }
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
    try {
      await restoreNar(stdinChunks(abort.signal), args.dir, { signal: abort.signal })
    } catch (err) {
      if (abort.signal.aborted) {
        process.stderr.write(`meshbuild: restore of '${args.dir}' interrupted; nothing was written\n`)
        // A read of stdin may still be waiting in the thread pool and would keep us alive.
        process.exit(INTERRUPTED)
      }
      if (err instanceof NarFormatError) throw new CommandFailed(`invalid NAR on stdin: ${err.message}; nothing was written to '${args.dir}'`)
      if (err instanceof NarRestoreTargetExistsError) throw new CommandFailed(err.message)
      const e = err as NodeJS.ErrnoException
      if (typeof e.code === 'string') throw new CommandFailed(`cannot restore to '${args.dir}': ${e.message}`)
      throw err
    } finally {
      process.off('SIGINT', stop)
      process.off('SIGTERM', stop)
    }
  }
}

export const narCommand: CommandModule = {
  command: 'nar <command>',
  describe: 'Write and read NAR archives (nix-store --dump / --restore)',
  builder: (y: Argv) => y
    .command(dumpPathCommand)
    .command(restoreCommand)
    .demandCommand(1, 'Name a nar command: dump-path or restore.'),
  handler: () => {}
}

/**
 * Writes every chunk to `out` (stdout), one write in flight: the next chunk is read from disk
 * while the previous one is being written, and a chunk goes back to the pool once its write
 * callback says the kernel has it, so memory stays at a few chunks. Backpressure is the callback:
 * nothing more is read until the reader of the pipe has taken the previous chunk.
 * (Not fs.write on fd 1: by the time a command runs, stdout is usually a non-blocking pipe
 * — loading yargs touches process.stdout — and thread-pool writes then spin on EAGAIN.)
 */
async function writeChunks (out: NodeJS.WritableStream, chunks: AsyncIterable<Uint8Array>, pool: ChunkPool): Promise<void> {
  // The write callback carries the error; without a listener the 'error' event would crash us.
  out.on('error', () => {})
  let inflight: Promise<void> | undefined
  for await (const chunk of chunks) {
    await inflight
    inflight = new Promise<void>((resolve, reject) => {
      out.write(chunk, err => {
        if (err != null) { reject(err); return }
        pool.release(chunk)
        resolve()
      })
    })
    inflight.catch(() => {}) // awaited on the next turn; this only keeps it from counting as unhandled meanwhile
  }
  await inflight
}

/**
 * Reads `fd` to its end in two alternating buffers, the next read running while the consumer
 * works on the current chunk. A chunk is valid only until the next is asked for (restoreNar
 * copies what it keeps), which keeps memory at two buffers whatever the input size.
 */
async function * readFdChunks (fd: number, signal: AbortSignal): AsyncGenerator<Uint8Array> {
  const buffers = [Buffer.allocUnsafeSlow(READ_CHUNK), Buffer.allocUnsafeSlow(READ_CHUNK)]
  const readInto = async (buf: Buffer): Promise<number> => {
    for (;;) {
      try {
        return (await fsRead(fd, buf, 0, buf.length, null)).bytesRead
      } catch (err) {
        // A non-blocking descriptor with nothing to read yet: wait a little.
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err
        await sleep(1)
      }
    }
  }
  let which = 0
  let next = readInto(buffers[which]!)
  for (;;) {
    const n = await next
    signal.throwIfAborted()
    if (n === 0) return
    const chunk = buffers[which]!.subarray(0, n)
    which ^= 1
    next = readInto(buffers[which]!)
    next.catch(() => {}) // awaited on the next turn
    yield chunk
  }
}

/**
 * stdin as chunks that are valid until the next is asked for. A pipe or socket is read by the
 * event loop straight into one reused buffer (net.Socket `onread`, paused between chunks): no
 * thread-pool trip per 64 KiB pipe read and no garbage buffer per read. Anything else (a
 * file, a terminal) is read with fs.read in two alternating buffers.
 */
function stdinChunks (signal: AbortSignal): AsyncIterable<Uint8Array> {
  const st = fstatSync(STDIN)
  if (!st.isFIFO() && !st.isSocket()) return readFdChunks(STDIN, signal)
  return socketChunks(STDIN, signal)
}

async function * socketChunks (fd: number, signal: AbortSignal): AsyncGenerator<Uint8Array> {
  const buffer = Buffer.allocUnsafeSlow(READ_CHUNK)
  let waiting: { resolve: (n: number) => void, reject: (err: unknown) => void } | undefined
  let ended = false
  let failure: Error | undefined
  const socket = new Socket({
    fd,
    readable: true,
    writable: false,
    onread: {
      buffer,
      callback: (n: number) => {
        waiting?.resolve(n)
        waiting = undefined
        return false // pause until the consumer is done with this chunk
      }
    }
  })
  socket.on('end', () => { ended = true; waiting?.resolve(0) })
  socket.on('error', (err: Error) => { failure = err; waiting?.reject(err) })
  const onAbort = (): void => { waiting?.reject(signal.reason) }
  signal.addEventListener('abort', onAbort)
  try {
    for (;;) {
      if (failure != null) throw failure
      if (ended) return
      const next = new Promise<number>((resolve, reject) => { waiting = { resolve, reject } })
      socket.resume()
      const n = await next
      if (n === 0) return
      yield buffer.subarray(0, n)
    }
  } finally {
    signal.removeEventListener('abort', onAbort)
    socket.destroy()
  }
}
