// What the builder socket (builder-socket.ts) asks of the node behind it: the store it shows to
// Nix's build-remote, and the builds it runs. The socket speaks the wire; this is the node's side.
import type { BasicDerivation, BuildReply, ClientBuildOptions } from '../../protocols/nix/daemon-server-wire.ts'
import type { ImportBatchResult, ImportInfo, NarEntry, PathInfo } from '../nix/store-backend.ts'

export type { BasicDerivation, BasicOutput, BuildReply, ClientBuildOptions } from '../../protocols/nix/daemon-server-wire.ts'

export interface BuildRequest {
  drvPath: string
  derivation: BasicDerivation
  /** 0 normal, 1 repair, 2 check (BuildMode). */
  buildMode: number
  options: ClientBuildOptions
}

export interface BuilderStore {
  /** The path's registration, or null when neither the socket's root nor the node's store has it. */
  queryPathInfo: (path: string) => Promise<PathInfo | null>
  isValid: (paths: string[]) => Promise<Set<string>>
  /** Imports NARs the client uploads (its inputs) into the node's store, checked as any import is. */
  importNars: (infos: ImportInfo[], nars: AsyncIterable<NarEntry>) => Promise<ImportBatchResult>
  exportNar: (path: string) => AsyncIterable<Uint8Array>
  /**
   * Builds one derivation and, on success, leaves its outputs under the socket's root
   * (`<root>/nix/store/…`, where a `unix://…?root=` store makes Nix read them) with their
   * registrations answerable by queryPathInfo. Log lines go to onLog as they come.
   */
  build: (request: BuildRequest, onLog: (line: string) => void, signal: AbortSignal) => Promise<BuildReply>
}
