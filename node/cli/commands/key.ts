// `meshbuild key`: make Nix signing keys and derive public keys from secret ones. The files are
// those of `nix-store --generate-binary-cache-key NAME SEC PUB`: `name:base64`, no newline,
// the secret one readable by its owner only. Also makes mesh secrets (mesh-secret.ts).
import { open } from 'node:fs/promises'
import { resolve } from 'node:path'
import type { Argv, CommandModule } from 'yargs'
import { CommandFailed, UsageError } from '../exit-codes.ts'
import { MESH_SECRET_BYTES, addMachineCommand, writeNewMeshSecret } from '../mesh-secret.ts'
import {
  KeyFormatError, checkKeyName, formatPublicKey, formatSecretKey, generateKeyPair, publicKeyOf, readSecretKeyFile
} from '../../../protocols/nix/signing-key.ts'

const SECRET_FILE_MODE = 0o600
const PUBLIC_FILE_MODE = 0o644

interface GenerateArgs {
  name: string
  'secret-file': string
  'public-file': string
  force: boolean
}

interface PublicArgs {
  'secret-file': string
}

/** Writes `text` to `path`; refuses an existing file unless `force`, and sets `mode` either way. */
async function writeKeyFile (path: string, text: string, mode: number, force: boolean): Promise<void> {
  let file
  try {
    // 'wx' fails if the file exists, atomically: no window in which we would clobber one.
    file = await open(path, force ? 'w' : 'wx', mode)
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    if (e.code === 'EEXIST') throw new CommandFailed(`${path} already exists; pass --force to overwrite it`)
    throw new CommandFailed(`cannot write ${path}: ${e.message}`)
  }
  try {
    // An overwritten file keeps its old mode unless we set it.
    await file.chmod(mode)
    await file.writeFile(text)
  } finally {
    await file.close()
  }
}

async function exists (path: string): Promise<boolean> {
  try {
    await (await open(path, 'r')).close()
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ENOENT'
  }
}

const generateCommand: CommandModule<object, GenerateArgs> = {
  command: 'generate <name>',
  describe: 'Make an ed25519 key pair in Nix\'s format (like nix-store --generate-binary-cache-key) and print the public key',
  builder: (y: Argv) => y
    .positional('name', { type: 'string', demandOption: true, describe: 'Key name, e.g. cache.example.org-1' })
    .option('secret-file', { type: 'string', demandOption: true, describe: 'Where to write the secret key (mode 0600)' })
    .option('public-file', { type: 'string', demandOption: true, describe: 'Where to write the public key' })
    .option('force', { type: 'boolean', default: false, describe: 'Overwrite existing files' }) as unknown as Argv<GenerateArgs>,
  handler: async (args) => {
    // yargs has already reported a missing required option but may still call us.
    if (typeof args['secret-file'] !== 'string' || typeof args['public-file'] !== 'string') throw new UsageError('')
    try {
      checkKeyName(args.name)
    } catch (err) {
      throw new UsageError((err as Error).message)
    }
    if (args['secret-file'] === args['public-file']) throw new UsageError('--secret-file and --public-file name the same file')
    // Check both before writing either, so a refusal leaves nothing half made.
    if (!args.force) {
      for (const path of [args['secret-file'], args['public-file']]) {
        if (await exists(path)) throw new CommandFailed(`${path} already exists; pass --force to overwrite it`)
      }
    }
    const { secretKey, publicKey } = generateKeyPair(args.name)
    await writeKeyFile(args['secret-file'], formatSecretKey(secretKey), SECRET_FILE_MODE, args.force)
    await writeKeyFile(args['public-file'], formatPublicKey(publicKey), PUBLIC_FILE_MODE, args.force)
    process.stdout.write(`${formatPublicKey(publicKey)}\n`)
  }
}

const publicCommand: CommandModule<object, PublicArgs> = {
  command: 'public',
  describe: 'Print the public key of a secret key file (like nix key convert-secret-to-public)',
  builder: (y: Argv) => y
    .option('secret-file', { type: 'string', demandOption: true, describe: 'The secret key file' }) as unknown as Argv<PublicArgs>,
  handler: async (args) => {
    if (typeof args['secret-file'] !== 'string') throw new UsageError('')
    let key
    try {
      key = await readSecretKeyFile(args['secret-file'])
    } catch (err) {
      if (err instanceof KeyFormatError) throw new CommandFailed(err.message)
      throw new CommandFailed(`cannot read ${args['secret-file']}: ${(err as Error).message}`)
    }
    process.stdout.write(`${formatPublicKey(publicKeyOf(key))}\n`)
  }
}

interface MeshSecretArgs {
  file: string
}

const meshSecretCommand: CommandModule<object, MeshSecretArgs> = {
  command: 'generate-mesh-secret <file>',
  describe: `Make a mesh secret file (${MESH_SECRET_BYTES} random bytes, base64, mode 0600); only nodes given the same file form a mesh. Never overwrites a file`,
  builder: (y: Argv) => y
    .positional('file', { type: 'string', demandOption: true, describe: 'Where to write the secret (must not exist)' })
    .example('$0 key generate-mesh-secret /etc/meshbuild/mesh.secret', 'then copy the file to every machine and run: meshbuild join --mesh-secret-file /etc/meshbuild/mesh.secret') as unknown as Argv<MeshSecretArgs>,
  handler: async (args) => {
    if (typeof args.file !== 'string' || args.file === '') throw new UsageError('name the file to write')
    await writeNewMeshSecret(args.file)
    process.stdout.write(`wrote ${args.file}; copy it to every machine of the mesh (keep it mode 0600) and run there: ${addMachineCommand(resolve(args.file))}\n`)
  }
}

export const keyCommand: CommandModule = {
  command: 'key <command>',
  describe: 'Make Nix signing keys and mesh secrets, and show public keys',
  builder: (y: Argv) => y
    .command(generateCommand)
    .command(publicCommand)
    .command(meshSecretCommand)
    .demandCommand(1, 'Name a key command: generate, public or generate-mesh-secret.'),
  handler: () => {}
}
