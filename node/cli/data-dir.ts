// Where a node keeps its state: --data-dir, else $MESHBUILD_DATA_DIR, else $STATE_DIRECTORY (set by
// systemd for a unit with StateDirectory=, so a node run as a service keeps its state in
// /var/lib/meshbuild, or ~/.local/state/meshbuild for a user unit), else $XDG_DATA_HOME/meshbuild
// (~/.local/share/meshbuild). Every command that talks to a node takes the same option.
import { homedir } from 'node:os'
import { join } from 'node:path'
import type { Options } from 'yargs'

export function defaultDataDir (env: NodeJS.ProcessEnv = process.env): string {
  if (env.MESHBUILD_DATA_DIR !== undefined && env.MESHBUILD_DATA_DIR !== '') return env.MESHBUILD_DATA_DIR
  // systemd joins several StateDirectory= entries with ':'; the unit names one, and the first is ours.
  const stateDir = env.STATE_DIRECTORY?.split(':')[0]
  if (stateDir !== undefined && stateDir !== '') return stateDir
  const xdg = env.XDG_DATA_HOME !== undefined && env.XDG_DATA_HOME !== '' ? env.XDG_DATA_HOME : join(homedir(), '.local', 'share')
  return join(xdg, 'meshbuild')
}

export const dataDirOption: Options = {
  type: 'string',
  describe: 'The node\'s data directory (env MESHBUILD_DATA_DIR)',
  default: defaultDataDir(),
  defaultDescription: '$MESHBUILD_DATA_DIR, else systemd\'s $STATE_DIRECTORY, else ~/.local/share/meshbuild'
}
