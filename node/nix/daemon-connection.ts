// One connection to the local Nix daemon over its worker protocol: as root, a `nix-daemon
// --stdio` child in its own process group (a trusted local store without a socket). Requests go
// one at a time; the wire format is protocols/nix/daemon-wire.ts.
import { spawn, type ChildProcess } from 'node:child_process'
import { Hash } from '../../protocols/nix/hash.ts'
import { isStorePath, NIX_STORE_DIR } from '../../protocols/nix/store-path.ts'
import {
  WireWriter, WireReader, readStderr, readServerHello, DaemonProtocolError,
  WORKER_MAGIC_1, PROTOCOL_VERSION, OP_QUERY_VALID_PATHS, OP_QUERY_PATH_INFO
} from '../../protocols/nix/daemon-wire.ts'
import { nixEnv, type NixSettings } from './nix-config.ts'
import { InvalidStorePath, type PathInfo } from './store-backend.ts'

/** The minor version from which the server sends its Nix version after the handshake. */
const MINOR_SENDS_NIX_VERSION = 33
const MINOR_MASK = 0xff
const STDERR_TAIL_CHARS = 2000

export class DaemonConnectionLost extends Error {
  override name = 'DaemonConnectionLost'
}

export class DaemonConnection {
  readonly serverVersion: number
  readonly nixVersion: string
  private readonly child: ChildProcess
  private readonly reader: WireReader
  private readonly stderrText: { text: string }
  private chain: Promise<unknown> = Promise.resolve()

  private constructor (child: ChildProcess, reader: WireReader, stderrText: { text: string }, serverVersion: number, nixVersion: string) {
    this.child = child
    this.reader = reader
    this.stderrText = stderrText
    this.serverVersion = serverVersion
    this.nixVersion = nixVersion
  }

  static async open (options: { settings?: NixSettings } = {}): Promise<DaemonConnection> {
    const child = spawn('nix-daemon', ['--stdio'], { env: nixEnv(options.settings), detached: true, stdio: ['pipe', 'pipe', 'pipe'] })
    const stderrText = { text: '' }
    child.stderr?.on('data', (d: Buffer) => { stderrText.text = (stderrText.text + d.toString()).slice(-STDERR_TAIL_CHARS) })
    child.on('error', () => {})
    const stdout = child.stdout
    if (stdout == null) throw new DaemonProtocolError('nix-daemon has no stdout')
    const reader = new WireReader(stdout[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>)
    try {
      child.stdin?.write(new WireWriter().u64(WORKER_MAGIC_1).toBytes())
      const server = await readServerHello(reader)
      const version = Math.min(server, PROTOCOL_VERSION)
      child.stdin?.write(new WireWriter().u64(version).u64(0).u64(0).toBytes())
      const nixVersion = (version & MINOR_MASK) >= MINOR_SENDS_NIX_VERSION ? await reader.readString('server Nix version') : ''
      await readStderr(reader)
      return new DaemonConnection(child, reader, stderrText, version, nixVersion)
    } catch (err) {
      killGroup(child)
      throw lost(err, child, stderrText.text)
    }
  }

  private request<T> (body: Uint8Array, reply: (r: WireReader) => Promise<T>): Promise<T> {
    const run = async (): Promise<T> => {
      try {
        this.child.stdin?.write(body)
        await readStderr(this.reader)
        return await reply(this.reader)
      } catch (err) {
        throw lost(err, this.child, this.stderrText.text)
      }
    }
    const result = this.chain.then(run, run)
    this.chain = result.catch(() => {})
    return result
  }

  private check (path: string): void {
    if (!isStorePath(path)) throw new InvalidStorePath(path, NIX_STORE_DIR)
  }

  async isValid (paths: string[]): Promise<Set<string>> {
    for (const p of paths) this.check(p)
    const valid = await this.request(new WireWriter().u64(OP_QUERY_VALID_PATHS).strings(paths).bool(false).toBytes(),
      async (r) => await r.readStrings('valid paths'))
    return new Set(valid)
  }

  async queryPathInfo (path: string): Promise<PathInfo | null> {
    this.check(path)
    return await this.request(new WireWriter().u64(OP_QUERY_PATH_INFO).string(path).toBytes(), async (r) => {
      if (!(await r.readBool('path info valid'))) return null
      const deriver = await r.readString('deriver')
      const narHash = Hash.parse(await r.readString('narHash'), 'sha256')
      const references = (await r.readStrings('references')).sort()
      await r.readU64('registration time')
      const narSize = await r.readU64('narSize')
      await r.readBool('ultimate')
      const signatures = await r.readStrings('signatures')
      const ca = await r.readString('ca')
      const info: PathInfo = { path, narHash, narSize, references, signatures }
      if (deriver !== '') info.deriver = deriver
      if (ca !== '') info.ca = ca
      return info
    })
  }

  close (): void { killGroup(this.child) }
}

function killGroup (child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return
  try { process.kill(-child.pid, 'SIGKILL') } catch { /* already gone */ }
}

function lost (err: unknown, child: ChildProcess, stderrTail: string): Error {
  if (!(err instanceof DaemonProtocolError) || !/closed while reading/.test(err.message)) return err as Error
  const exit = child.exitCode !== null ? `exit code ${child.exitCode}` : child.signalCode !== null ? `signal ${child.signalCode}` : 'closed its output'
  return new DaemonConnectionLost(`nix-daemon --stdio (${exit}): ${err.message}${stderrTail !== '' ? `; its stderr: ${stderrTail.trim()}` : ''}`)
}
