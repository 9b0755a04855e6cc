// Where a data directory's builder socket, its root and the machines file for nix.conf are.
import { join } from 'node:path'

export interface BuilderPaths {
  /** The Unix socket speaking Nix's daemon protocol (root only). */
  socket: string
  /** The `root` of the socket's store URI: outputs wait in `<root>/nix/store` for Nix to copy them. */
  root: string
  /** What nix.conf's `builders = @FILE` names; the node rewrites it as the mesh changes. */
  machinesFile: string
}

export function builderPaths (dataDir: string): BuilderPaths {
  return { socket: join(dataDir, 'builder.sock'), root: join(dataDir, 'builder-root'), machinesFile: join(dataDir, 'nix-machines') }
}
