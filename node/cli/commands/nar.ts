// `meshbuild nar dump-path PATH` and `meshbuild nar restore DIR`: the NAR codec on the command
// line, byte-compatible with `nix-store --dump` and `nix-store --restore`.
import { fstatSync, read, readSync, writeSync } from 'node:fs'
import { Socket } from 'node:net'
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import type { Argv, CommandModule } from 'yargs'
import type { ChunkPool } from '../../../protocols/nix/nar-encoder.ts'
import { CommandFailed, ExitCode } from '../exit-codes.ts'

/** Exit code after SIGINT/SIGTERM, as shells report a signal death (128 + SIGINT). */
const INTERRUPTED = 130
const STDIN = 0
const STDOUT = 1
/**
 * Bytes per NAR chunk written to stdout. Measured on the bench tree: 128 KiB took 0.72 s,
 * 1 MiB 0.92 s, 32 KiB 0.76 s: a chunk that stays in the CPU cache between the read from the
 * file and the write to the pipe, and not so small that the per-chunk calls add up.
 */
const DUMP_CHUNK = 128 * 1024
/** stdin is read in pieces of at most this size (a pipe gives 64 KiB at a time). */
const READ_CHUNK = 256 * 1024
/** Synchronous reads between two turns of the event loop, so that signals are seen. */
const READS_PER_TURN = 64
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
  handler: async (args) => { await dumpPath(args.path) }
}

const restoreCommand: CommandModule<object, RestoreArgs> = {
  command: 'restore <dir>',
  describe: 'Read a NAR from stdin and write it to DIR, which must not exist (like nix-store --restore)',
  builder: (y: Argv) => y
    .positional('dir', { type: 'string', demandOption: true, describe: 'where to create the tree (or file, or symlink)' })
    .epilog('The tree is built beside DIR and renamed into place only when the whole NAR was valid; on bad input nothing is left behind and the exit code is 1.')
    .example('$0 nar restore ./out < some.nar', 'unpack a NAR') as Argv<RestoreArgs>,
  handler: async (args) => { await restore(args.dir) }
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
 * The two plain forms, `nar dump-path PATH` and `nar restore DIR` with no options, run without
 * the argument parser: they sit in pipelines where start-up counts, and loading yargs and the
 * other commands costs ~100 ms, a sixth of archiving the bench's GiB. False for anything else
 * (options, --help, other commands), which the caller then hands to yargs; errors are thrown
 * as the yargs handlers throw them (CommandFailed).
 */
export async function runPlainNarCommand (argv: readonly string[]): Promise<boolean> {
  if (argv.length !== 3 || argv[0] !== 'nar') return false
  const operand = argv[2]!
  if (operand === '' || operand.startsWith('-')) return false
  if (argv[1] === 'dump-path') await dumpPath(operand)
  else if (argv[1] === 'restore') await restore(operand)
  else return false
  return true
}

/** `nar dump-path PATH`: the NAR of PATH on stdout. */
async function dumpPath (path: string): Promise<void> {
  // Loaded here, not at start-up: every other command would pay for parsing the codec.
  const { ChunkPool, encodeNarSync } = await import('../../../protocols/nix/nar-encoder.ts')
  try {
    const pool = new ChunkPool(DUMP_CHUNK)
    await writeStdout(encodeNarSync(path, { pool }), pool)
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    if (e.name === 'NarUnsupportedFileError' || e.name === 'NarFileChangedError') throw new CommandFailed(e.message)
    if (e.code === 'ENOENT' || e.code === 'EACCES' || e.code === 'ENOTDIR') throw new CommandFailed(`cannot archive '${path}': ${e.message}`)
    if (e.code === 'EPIPE') throw new CommandFailed('', ExitCode.failure) // the reader went away; nothing to say
    throw err
  }
}

/** `nar restore DIR`: the NAR on stdin written to DIR, all or nothing. */
async function restore (dir: string): Promise<void> {
  const { NarRestore } = await import('../../../protocols/nix/nar-restore.ts')
  const abort = new AbortController()
  const stop = (): void => { abort.abort(new Error('interrupted')) }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  try {
    const restoring = await NarRestore.start(dir, { signal: abort.signal })
    try {
      await readStdin(chunk => { restoring.push(chunk) }, abort.signal)
      abort.signal.throwIfAborted()
      await restoring.finish()
    } catch (err) {
      await restoring.abandon()
      throw err
    }
  } catch (err) {
    if (abort.signal.aborted) {
      process.stderr.write(`meshbuild: restore of '${dir}' interrupted; nothing was written\n`)
      // A read of stdin may still be waiting in the thread pool and would keep us alive.
      process.exit(INTERRUPTED)
    }
    const e = err as NodeJS.ErrnoException
    if (e.name === 'NarFormatError') throw new CommandFailed(`invalid NAR on stdin: ${e.message}; nothing was written to '${dir}'`)
    if (e.name === 'NarRestoreTargetExistsError') throw new CommandFailed(e.message)
    if (typeof e.code === 'string') throw new CommandFailed(`cannot restore to '${dir}': ${e.message}`)
    throw err
  } finally {
    process.off('SIGINT', stop)
    process.off('SIGTERM', stop)
  }
}

/**
 * Writes the chunks to stdout with blocking write(2) calls, each chunk going back to the pool
 * once written, so memory stays at one or two chunks. A blocking write sleeps in the kernel
 * until the reader has taken the data, as nix-store's own writes do: no event-loop turn per
 * 64 KiB pipe buffer. By the time a command runs, stdout is usually a non-blocking pipe
 * (loading yargs touches process.stdout), so it is switched back to blocking first; where that
 * cannot be done the stream's own writes wait for room instead.
 */
async function writeStdout (chunks: Iterable<Buffer>, pool: ChunkPool): Promise<void> {
  const blocking = stdoutBlocking()
  for (const chunk of chunks) {
    let done = 0
    while (done < chunk.length) {
      if (!blocking) {
        await streamWrite(process.stdout, chunk.subarray(done))
        break
      }
      try {
        done += writeSync(STDOUT, chunk, done)
      } catch (err) {
        // Someone sharing the descriptor made it non-blocking again: wait for room through the stream.
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err
        await streamWrite(process.stdout, chunk.subarray(done))
        break
      }
    }
    pool.release(chunk)
  }
}

/** Makes fd 1 blocking if it is a pipe or socket; true if writes to it now block. */
function stdoutBlocking (): boolean {
  const st = fstatSync(STDOUT)
  if (!st.isFIFO() && !st.isSocket()) return true // a file, a terminal (Node keeps TTYs blocking) or a device
  // net.Socket does not expose this; its libuv handle does (uv_stream_set_blocking).
  const handle = (process.stdout as unknown as { _handle?: { setBlocking?: (on: boolean) => number } })._handle
  return typeof handle?.setBlocking === 'function' && handle.setBlocking(true) === 0
}

/** One write through the stream, resolved when the kernel has the bytes. */
async function streamWrite (out: NodeJS.WritableStream, data: Uint8Array): Promise<void> {
  // The write callback carries the error; without a listener the 'error' event would crash us.
  if (out.listenerCount('error') === 0) out.on('error', () => {})
  await new Promise<void>((resolve, reject) => {
    out.write(data, err => { if (err != null) reject(err); else resolve() })
  })
}

/**
 * Reads stdin to its end, handing each piece to `consume` before reading the next (a piece is
 * valid only during the call, its buffer is reused).
 */
async function readStdin (consume: (chunk: Buffer) => void, signal: AbortSignal): Promise<void> {
  const st = fstatSync(STDIN)
  if (st.isFIFO() || st.isSocket()) await readPipe(STDIN, consume, signal)
  else if (st.isFile()) await readRegularFile(STDIN, consume, signal)
  else for await (const chunk of readFdChunks(STDIN, signal)) consume(chunk)
}

/** A regular file: plain synchronous reads, a turn of the event loop now and then. */
async function readRegularFile (fd: number, consume: (chunk: Buffer) => void, signal: AbortSignal): Promise<void> {
  const buffer = Buffer.allocUnsafeSlow(READ_CHUNK)
  for (let reads = 1; ; reads++) {
    const n = readSync(fd, buffer, 0, buffer.length, null)
    if (n === 0) return
    consume(buffer.subarray(0, n))
    if (reads % READS_PER_TURN === 0) await nextTurn()
    signal.throwIfAborted()
  }
}

/**
 * A pipe or socket: synchronous reads while data is waiting, the event loop only when the pipe
 * is empty. A synchronous read costs one system call; going through the event loop for each
 * 64 KiB a pipe holds cost an epoll wait, a callback and a promise, which added up to a third
 * of nix-store's whole restore time. The descriptor is non-blocking (the Socket made it so),
 * so a read never hangs the process: it fails with EAGAIN, and then the Socket waits for data
 * (reading it into its own buffer) while signals and timers run.
 */
async function readPipe (fd: number, consume: (chunk: Buffer) => void, signal: AbortSignal): Promise<void> {
  const buffer = Buffer.allocUnsafeSlow(READ_CHUNK)
  const socketBuffer = Buffer.allocUnsafeSlow(READ_CHUNK)
  let waiting: { resolve: (n: number) => void, reject: (err: unknown) => void } | undefined
  /** Bytes the socket read into socketBuffer while nobody waited (it starts reading at once). */
  let pending = 0
  let ended = false
  let failure: Error | undefined
  const socket = new Socket({
    fd,
    readable: true,
    writable: false,
    onread: {
      buffer: socketBuffer,
      callback: (n: number) => {
        if (waiting != null) waiting.resolve(n)
        else pending = n
        waiting = undefined
        return false // pause until this piece is consumed
      }
    }
  })
  socket.on('end', () => { ended = true; waiting?.resolve(0) })
  socket.on('error', (err: Error) => { failure = err; waiting?.reject(err) })
  const onAbort = (): void => { waiting?.reject(signal.reason) }
  signal.addEventListener('abort', onAbort)
  try {
    for (let reads = 1; ; reads++) {
      signal.throwIfAborted()
      if (pending > 0) {
        const n = pending
        pending = 0
        consume(socketBuffer.subarray(0, n))
        continue
      }
      let n = -1
      try {
        n = readSync(fd, buffer, 0, buffer.length, null)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err
      }
      if (n === 0) return
      if (n > 0) {
        consume(buffer.subarray(0, n))
        if (reads % READS_PER_TURN === 0) await nextTurn()
        continue
      }
      // The pipe is empty: wait for the writer.
      if (failure != null) throw failure
      if (ended) return
      const got = await new Promise<number>((resolve, reject) => {
        waiting = { resolve, reject }
        socket.resume()
      })
      if (got === 0) return
      consume(socketBuffer.subarray(0, got))
    }
  } finally {
    signal.removeEventListener('abort', onAbort)
    socket.destroy()
  }
}

/**
 * Reads `fd` (a terminal, a device) to its end through the thread pool in two alternating
 * buffers, the next read running while the consumer works on the current chunk.
 */
async function * readFdChunks (fd: number, signal: AbortSignal): AsyncGenerator<Buffer> {
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
