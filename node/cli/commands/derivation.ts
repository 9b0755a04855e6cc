// `meshbuild derivation show DRV...`: the JSON `nix show-derivation` (Nix 2.8) prints, read
// straight from the .drv files without asking Nix.
import { realpath, stat } from 'node:fs/promises'
import { resolve } from 'node:path'
import type { Argv, CommandModule } from 'yargs'
import { CommandFailed, ExitCode } from '../exit-codes.ts'
import {
  DerivationFormatError,
  derivationsToJson,
  isDerivationPath,
  readDerivation,
  type Derivation
} from '../../../protocols/nix/derivation.ts'

interface ShowArgs {
  drv?: string[]
  recursive: boolean
}

const showCommand: CommandModule<object, ShowArgs> = {
  command: 'show <drv..>',
  describe: 'Print derivations as JSON, as `nix show-derivation` does',
  builder: (y: Argv) => y
    .positional('drv', { type: 'string', describe: 'Store derivation (.drv) paths' })
    .option('recursive', {
      alias: 'r',
      type: 'boolean',
      default: false,
      describe: 'Also print every input derivation, recursively'
    })
    .example('$0 derivation show /nix/store/…-hello.drv', 'One derivation')
    .example('$0 derivation show -r /nix/store/…-hello.drv', 'It and its whole build-time closure') as unknown as Argv<ShowArgs>,
  handler: async (args) => {
    // yargs reports a missing DRV itself, yet still runs the handler.
    const paths = (args.drv ?? []).filter(p => typeof p === 'string')
    if (paths.length === 0) throw new CommandFailed('', ExitCode.usage)
    const drvs = await loadDerivations(paths, args.recursive)
    const out = derivationsToJson(drvs)
    await new Promise<void>((resolve, reject) => {
      process.stdout.write(out, err => { if (err != null) reject(err); else resolve() })
    })
  }
}

export const derivationCommand: CommandModule = {
  command: 'derivation <command>',
  describe: 'Read Nix store derivations (.drv files)',
  builder: (y: Argv) => y.command(showCommand).demandCommand(1, 'Name a derivation subcommand; see --help.'),
  handler: () => {}
}

/**
 * Reads the named derivations and, with `recursive`, every derivation they reach: the input
 * derivations and any .drv among the input sources, which is the part of the store closure
 * `nix show-derivation -r` prints.
 */
export async function loadDerivations (paths: string[], recursive: boolean): Promise<Map<string, Derivation>> {
  const drvs = new Map<string, Derivation>()
  const queue: string[] = []
  for (const p of paths) queue.push(await derivationPath(p))
  for (let i = 0; i < queue.length; i++) {
    const path = queue[i] ?? ''
    if (drvs.has(path)) continue
    const drv = await load(path)
    drvs.set(path, drv)
    if (!recursive) continue
    for (const input of drv.inputDrvs.keys()) queue.push(input)
    for (const src of drv.inputSrcs) if (isDerivationPath(src)) queue.push(src)
  }
  return drvs
}

/** The absolute path of a named .drv; a symlink from outside the store is followed into it, as Nix does. */
async function derivationPath (given: string): Promise<string> {
  let path = resolve(given)
  const storeDir = process.env.NIX_STORE_DIR ?? '/nix/store'
  try {
    if (!path.startsWith(`${storeDir}/`)) path = await realpath(path)
    const st = await stat(path)
    if (!st.isFile()) throw new CommandFailed(`'${given}' is not a derivation (.drv) file`)
  } catch (err) {
    if (err instanceof CommandFailed) throw err
    throw new CommandFailed(`derivation '${given}' does not exist`)
  }
  if (!isDerivationPath(path)) throw new CommandFailed(`'${given}' is not a derivation (.drv) file`)
  return path
}

async function load (path: string): Promise<Derivation> {
  try {
    return await readDerivation(path)
  } catch (err) {
    if (err instanceof DerivationFormatError) throw new CommandFailed(err.message)
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') throw new CommandFailed(`derivation '${path}' does not exist`)
    throw new CommandFailed(`cannot read derivation '${path}': ${(err as Error).message}`)
  }
}
