// `meshbuild nix-config`: the nix.conf lines that make plain Nix build through the mesh, via the
// builder socket of the node on this machine (join --serve-builder). They name the machines file
// the node keeps in step with the mesh, rather than the socket itself, so the systems, features
// and job count Nix sees follow the peers, and a stopped node leaves Nix building locally.
import { connect } from 'node:net'
import { readFile } from 'node:fs/promises'
import type { Argv, CommandModule } from 'yargs'
import { builderPaths } from '../../builder/builder-paths.ts'
import { dataDirOption } from '../data-dir.ts'

/** Where Debian's nix-bin (and most installs) read nix.conf. */
const NIX_CONF = '/etc/nix/nix.conf'

interface NixConfigArgs {
  'data-dir': string
  json: boolean
}

/** Whether something answers on the Unix socket at `path` within a second. */
async function answers (path: string): Promise<boolean> {
  return await new Promise(resolve => {
    const s = connect(path)
    const done = (ok: boolean): void => { s.destroy(); resolve(ok) }
    s.once('connect', () => { done(true) })
    s.once('error', () => { done(false) })
    setTimeout(() => { done(false) }, 1000).unref()
  })
}

export const nixConfigCommand: CommandModule<object, NixConfigArgs> = {
  command: 'nix-config',
  describe: 'Print the nix.conf lines that make plain nix-build use the mesh as a remote builder',
  builder: (y: Argv) => y
    .option('data-dir', dataDirOption)
    .option('json', { type: 'boolean', default: false, describe: 'Print one JSON object: the lines, the machines file and what it says, whether the socket answers' })
    .example('$0 nix-config >> /etc/nix/nix.conf', 'then restart nix-daemon, with a node running `meshbuild join --serve-builder`') as unknown as Argv<NixConfigArgs>,
  handler: async (args) => {
    const paths = builderPaths(args['data-dir'])
    const lines = [`builders = @${paths.machinesFile}`]
    const machines = await readFile(paths.machinesFile, 'utf8').catch(() => undefined)
    const serving = await answers(paths.socket)
    if (args.json) {
      process.stdout.write(`${JSON.stringify({ lines, nixConf: NIX_CONF, machinesFile: paths.machinesFile, machines: machines ?? null, socket: paths.socket, root: paths.root, serving }, null, 2)}\n`)
      return
    }
    process.stdout.write([
      `# meshbuild: plain Nix builds through the mesh. Add to ${NIX_CONF}, then restart nix-daemon if one runs.`,
      `# The node keeps ${paths.machinesFile} in step with the mesh; an empty or missing file means Nix builds locally.`,
      ...lines,
      ''
    ].join('\n'))
    if (!serving) process.stderr.write(`note: no node serves ${paths.socket} now; start one with: meshbuild join --serve-builder --data-dir ${args['data-dir']}\n`)
    else if (machines !== undefined) process.stderr.write(`the machines file now says: ${machines.trim() === '' ? '(empty: no peer builds)' : machines.trim()}\n`)
  }
}
