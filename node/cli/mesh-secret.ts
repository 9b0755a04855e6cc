// Mesh secrets: the files that decide who is in a mesh (docs/decisions.md, "Membership is closed
// by default"). `key generate-mesh-secret` writes one; `join` reads one, or makes its own in the
// data dir, or with --open uses the public one.
import { randomBytes } from 'node:crypto'
import { mkdir, open } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { OPEN_MESH_SECRET } from '../../protocols/mesh/constants.ts'
import { CommandFailed, UsageError } from './exit-codes.ts'

export const MESH_SECRET_BYTES = 32
/** Shorter secrets are refused: a guessable one makes the mesh open to whoever guesses it. */
export const MIN_MESH_SECRET_LENGTH = 16
/** A secret file is a line of text; a bigger one is a wrong file (a key, a tarball). */
export const MAX_MESH_SECRET_LENGTH = 4096
export const MESH_SECRET_FILE_MODE = 0o600
const DATA_DIR_MODE = 0o700
/** Where a node started with no secret keeps the one it made. */
export const GENERATED_SECRET_FILE = 'mesh.secret'
export const MESH_SECRET_FILE_ENV = 'MESHBUILD_MESH_SECRET_FILE'
/** Read by meshbuild before closed membership; now refused, so nobody is moved to another mesh unawares. */
export const OLD_MESH_SECRET_ENV = 'MESHBUILD_MESH_SECRET'

export type Membership = 'closed' | 'open'

export interface MeshSecret {
  secret: string
  membership: Membership
  /** The file it came from (absolute); undefined with --open. */
  file?: string
  /** How it was chosen, for the start-up message. */
  source: 'option' | 'env' | 'data-dir' | 'generated' | 'open'
}

export function newMeshSecretText (): string {
  return randomBytes(MESH_SECRET_BYTES).toString('base64') + '\n'
}

/** Writes a new secret to `path` (mode 0600); never overwrites: an existing file is another mesh's. */
export async function writeNewMeshSecret (path: string): Promise<void> {
  let file
  try {
    file = await open(path, 'wx', MESH_SECRET_FILE_MODE)
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    if (e.code === 'EEXIST') throw new CommandFailed(`${path} already exists; a mesh secret is never overwritten (it would cut this machine off its mesh): remove it first or choose another file`)
    throw new CommandFailed(`cannot write ${path}: ${e.message}`)
  }
  try {
    await file.chmod(MESH_SECRET_FILE_MODE) // open's mode is masked by the umask
    await file.writeFile(newMeshSecretText())
  } finally {
    await file.close()
  }
}

/** Reads and checks a secret file; any problem is a UsageError naming the file. */
export async function readMeshSecretFile (path: string): Promise<string> {
  let text: string
  try {
    const handle = await open(path, 'r')
    try {
      const size = (await handle.stat()).size
      if (size > MAX_MESH_SECRET_LENGTH) throw new UsageError(`mesh secret file ${path} is ${size} bytes, more than ${MAX_MESH_SECRET_LENGTH}: not a mesh secret (make one with 'meshbuild key generate-mesh-secret FILE')`)
      text = await handle.readFile('utf8')
    } finally {
      await handle.close()
    }
  } catch (err) {
    if (err instanceof UsageError) throw err
    const e = err as NodeJS.ErrnoException
    const why = e.code === 'ENOENT' ? 'does not exist' : e.code === 'EACCES' ? 'is not readable by this user' : e.code === 'EISDIR' ? 'is a directory' : e.message
    throw new UsageError(`mesh secret file ${path} ${why} (make one with 'meshbuild key generate-mesh-secret FILE')`)
  }
  const secret = text.trim()
  if (secret === '') throw new UsageError(`mesh secret file ${path} is empty (make one with 'meshbuild key generate-mesh-secret FILE')`)
  if (secret.length < MIN_MESH_SECRET_LENGTH) throw new UsageError(`mesh secret file ${path} holds ${secret.length} characters, fewer than ${MIN_MESH_SECRET_LENGTH}: too easy to guess (make one with 'meshbuild key generate-mesh-secret FILE')`)
  return secret
}

/**
 * Chooses the secret `join` uses, in this order: --open, --mesh-secret-file, $MESHBUILD_MESH_SECRET_FILE,
 * else <data-dir>/mesh.secret, made on first start.
 */
export async function resolveMeshSecret (options: { file?: string, open: boolean, dataDir: string, env?: NodeJS.ProcessEnv }): Promise<MeshSecret> {
  const env = options.env ?? process.env
  if (env[OLD_MESH_SECRET_ENV] !== undefined && env[OLD_MESH_SECRET_ENV] !== '') {
    throw new UsageError(`${OLD_MESH_SECRET_ENV} is no longer read (a secret in the environment leaks into every process the node starts): put the secret in a file and pass --mesh-secret-file FILE or set ${MESH_SECRET_FILE_ENV}=FILE`)
  }
  const envFile = env[MESH_SECRET_FILE_ENV] !== '' ? env[MESH_SECRET_FILE_ENV] : undefined
  if (options.open) {
    if (options.file !== undefined) throw new UsageError('--open and --mesh-secret-file exclude each other: an open mesh has no secret')
    return { secret: OPEN_MESH_SECRET, membership: 'open', source: 'open' }
  }
  if (options.file !== undefined) {
    const file = resolve(options.file)
    return { secret: await readMeshSecretFile(file), membership: 'closed', file, source: 'option' }
  }
  if (envFile !== undefined) {
    const file = resolve(envFile)
    return { secret: await readMeshSecretFile(file), membership: 'closed', file, source: 'env' }
  }
  const file = resolve(join(options.dataDir, GENERATED_SECRET_FILE))
  // As MeshNode.start makes it; the secret is made before the node starts.
  await mkdir(options.dataDir, { recursive: true, mode: DATA_DIR_MODE })
  let source: MeshSecret['source'] = 'data-dir'
  try {
    await writeNewMeshSecret(file)
    source = 'generated'
  } catch (err) {
    // EEXIST: made on an earlier start; anything else shows up when reading it below.
    if (!(err instanceof CommandFailed)) throw err
  }
  return { secret: await readMeshSecretFile(file), membership: 'closed', file, source }
}

/** The one command that adds another machine to the mesh of this secret file. */
export function addMachineCommand (file: string): string {
  return `meshbuild join --mesh-secret-file ${file}`
}

/** What `join` says on start about membership, one line per entry: [level, text]. */
export function membershipMessages (s: MeshSecret): Array<['info' | 'warn', string]> {
  if (s.membership === 'open') {
    return [
      ['warn', 'OPEN MESH (--open): this node uses the public mesh secret. ANY meshbuild node on this network started with --open can join, take jobs and return their outputs, and submit derivations that this machine builds. Use it only on a network where you trust every machine.']
    ]
  }
  const file = s.file ?? ''
  const made = s.source === 'generated' ? `made a new mesh secret in ${file}` : `mesh secret from ${file}`
  const lines: Array<['info' | 'warn', string]> = [['info', `closed mesh: ${made}; only nodes with this secret can connect`]]
  if (s.source === 'generated' || s.source === 'data-dir') {
    lines.push(['info', `to add another machine to this mesh, copy ${file} to it (mode 0600, e.g. to the same path) and run there: ${addMachineCommand(file)}`])
  }
  return lines
}
