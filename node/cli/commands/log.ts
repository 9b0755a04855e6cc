// `meshbuild log DRV|OUTPUT [-f]`: a build's log from whichever peer built or is building it,
// through the local node (control op 'log'); -f follows a running build until it ends.
import { realpath } from 'node:fs/promises'
import type { Argv, CommandModule } from 'yargs'
import { ControlError, controlRequest, NodeUnavailable } from '../../control/control-client.ts'
import type { LogEnd } from '../../control/control-protocol.ts'
import { dataDirOption } from '../data-dir.ts'
import { CommandFailed, ExitCode, UsageError } from '../exit-codes.ts'

interface LogArgs {
  path: string
  'data-dir': string
  follow: boolean
}

const STORE_DIR = '/nix/store/'

export const logCommand: CommandModule<object, LogArgs> = {
  command: 'log <path>',
  describe: 'Print the build log of a derivation (or of the derivation of an output), from whichever peer built it',
  builder: (y: Argv) => y
    .positional('path', { type: 'string', describe: 'A .drv path, an output path, or a symlink to one (./result)', demandOption: true })
    .option('data-dir', dataDirOption)
    .option('follow', { alias: 'f', type: 'boolean', default: false, describe: 'Follow a running build\'s log until it ends; exit 1 if it failed' })
    .example('$0 log /nix/store/…-hello-2.12.drv', 'the whole log (its last 4 MiB)')
    .example('$0 log -f ./result', 'follow the build of an output') as unknown as Argv<LogArgs>,
  handler: async (args) => {
    const path = await storePathOf(args.path)
    let end: LogEnd | undefined
    try {
      for await (const r of controlRequest(args['data-dir'], { op: 'log', path, ...(args.follow ? { follow: true } : {}) })) {
        if ('log' in r) {
          if (r.log.lines.length > 0) process.stdout.write(`${r.log.lines.join('\n')}\n`)
        } else if ('logEnd' in r) {
          end = r.logEnd
        }
      }
    } catch (err) {
      if (err instanceof NodeUnavailable) throw new CommandFailed(err.message, ExitCode.unavailable)
      if (err instanceof ControlError) throw new CommandFailed(err.message)
      throw err
    }
    if (end === undefined) throw new CommandFailed(`lost the node while reading the log of ${path}`, ExitCode.unavailable)
    if (end.skippedBytes !== undefined && end.skippedBytes > 0) process.stderr.write(`(the first ${end.skippedBytes} bytes of the log were not shown)\n`)
    if (args.follow && end.outcome === 'failed') throw new CommandFailed(`the build of ${path} failed`)
  }
}

/** The store path `arg` names: itself, the store path a file under it belongs to, or a symlink's target. */
async function storePathOf (arg: string): Promise<string> {
  let p = arg
  if (!p.startsWith(STORE_DIR)) {
    try {
      p = await realpath(arg)
    } catch {
      throw new UsageError(`${arg} is not a store path, nor a link to one`)
    }
  }
  if (!p.startsWith(STORE_DIR)) throw new UsageError(`${arg} is not in ${STORE_DIR}`)
  // /nix/store/<hash>-<name>/bin/x -> /nix/store/<hash>-<name>
  const base = p.slice(STORE_DIR.length).split('/')[0] ?? ''
  return `${STORE_DIR}${base}`
}
