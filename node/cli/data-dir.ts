// Where a node keeps its state: --data-dir, else $MESHBUILD_DATA_DIR, else $XDG_DATA_HOME/meshbuild
// (~/.local/share/meshbuild). Every command that talks to a node takes the same option.
import { homedir } from 'node:os'
import { join } from 'node:path'
import type { Options } from 'yargs'

export function defaultDataDir (env: NodeJS.ProcessEnv = process.env): string {
  if (env.MESHBUILD_DATA_DIR !== undefined && env.MESHBUILD_DATA_DIR !== '') return env.MESHBUILD_DATA_DIR
  const xdg = env.XDG_DATA_HOME !== undefined && env.XDG_DATA_HOME !== '' ? env.XDG_DATA_HOME : join(homedir(), '.local', 'share')
  return join(xdg, 'meshbuild')
}

export const dataDirOption: Options = {
  type: 'string',
  describe: 'The node\'s data directory (env MESHBUILD_DATA_DIR)',
  default: defaultDataDir(),
  defaultDescription: '$MESHBUILD_DATA_DIR or ~/.local/share/meshbuild'
}
