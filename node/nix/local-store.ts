// Which StoreBackend a node uses for the local Nix store. The daemon's worker protocol by
// default (docs/decisions.md): as root a `nix-daemon --stdio` child of our own (a trusted local
// store, no socket needed), otherwise the system daemon's socket. MESHBUILD_STORE_BACKEND=cli
// selects the CLI backend, one Nix process per operation.
import { CliStore } from './cli-store.ts'
import { DEFAULT_DAEMON_SOCKET } from './daemon-connection.ts'
import { DaemonStore } from './daemon-store.ts'
import type { NixSettings } from './nix-config.ts'
import type { StoreBackend } from './store-backend.ts'

export type StoreBackendKind = 'daemon' | 'cli'
export const STORE_BACKEND_ENV = 'MESHBUILD_STORE_BACKEND'

export interface LocalStore extends StoreBackend {
  readonly kind: StoreBackendKind
  /** Ends what the backend keeps open (the daemon connections). */
  close: () => void
}

export interface LocalStoreInit {
  settings?: NixSettings
  kind?: StoreBackendKind
  env?: NodeJS.ProcessEnv
  uid?: number
}

export function storeBackendKind (env: NodeJS.ProcessEnv = process.env): StoreBackendKind {
  const value = env[STORE_BACKEND_ENV] ?? 'daemon'
  if (value !== 'daemon' && value !== 'cli') throw new Error(`${STORE_BACKEND_ENV} must be 'daemon' or 'cli', not '${value}'`)
  return value
}

export function openLocalStore (init: LocalStoreInit = {}): LocalStore {
  const env = init.env ?? process.env
  const kind = init.kind ?? storeBackendKind(env)
  const settings = init.settings ?? {}
  if (kind === 'cli') return Object.assign(new CliStore({ settings }), { kind, close: () => {} })
  const root = (init.uid ?? process.getuid?.()) === 0
  const store = root
    ? new DaemonStore({ settings })
    : new DaemonStore({ settings, socketPath: env.NIX_DAEMON_SOCKET_PATH ?? DEFAULT_DAEMON_SOCKET })
  return Object.assign(store, { kind })
}
