// `meshbuild path-info PATH...`: the narinfo meshbuild would publish for each valid store path —
// the NAR uncompressed, so URL is `nar/<nix32 of NarHash>.nar` and FileHash/FileSize equal
// NarHash/NarSize, as `nix copy --to 'file://DIR?compression=none'` writes it — optionally
// signed with a Nix secret key file.
import { realpath } from 'node:fs/promises'
import type { Argv, CommandModule } from 'yargs'
import { openLocalStore } from '../../nix/local-store.ts'
import type { PathInfo } from '../../nix/store-backend.ts'
import { encodeNix32 } from '../../../protocols/nix/nix32.ts'
import { formatNarinfo, sortedUnique, type NarInfo } from '../../../protocols/nix/narinfo.ts'
import { signNarinfo } from '../../../protocols/nix/signature.ts'
import { KeyFormatError, readSecretKeyFile, type SecretKey } from '../../../protocols/nix/signing-key.ts'
import { isStorePath, NIX_STORE_DIR, storePathBaseName, storePathFromBaseName } from '../../../protocols/nix/store-path.ts'
import { CommandFailed, UsageError } from '../exit-codes.ts'

/** The compression meshbuild publishes NARs with: none, so a NAR's file hash is its NarHash. */
export const PUBLISHED_COMPRESSION = 'none'

interface PathInfoArgs {
  paths: string[]
  'sign-key'?: string
  json: boolean
}

/** One path as `--json` prints it; store paths are full paths, as `nix path-info --json` prints them. */
export interface PathInfoJsonEntry {
  storePath: string
  url: string
  compression: string
  /** `sha256:<nix32>` */
  narHash: string
  narSize: number
  references: string[]
  deriver: string | null
  signatures: string[]
  ca: string | null
}

/** The narinfo for a valid path's registration, NAR uncompressed, unsigned. */
export function narinfoForPath (info: PathInfo): NarInfo {
  const narinfo: NarInfo = {
    storePath: info.path,
    url: `nar/${encodeNix32(info.narHash.digest)}.nar`,
    compression: PUBLISHED_COMPRESSION,
    fileHash: info.narHash,
    fileSize: info.narSize,
    narHash: info.narHash,
    narSize: info.narSize,
    references: info.references.map(r => storePathBaseName(r)),
    sigs: [...info.signatures]
  }
  if (info.deriver != null) narinfo.deriver = storePathBaseName(info.deriver)
  if (info.ca != null) narinfo.ca = info.ca
  return narinfo
}

export function pathInfoJson (narinfo: NarInfo): PathInfoJsonEntry {
  return {
    storePath: narinfo.storePath,
    url: narinfo.url,
    compression: narinfo.compression,
    narHash: narinfo.narHash.toNix32(),
    narSize: narinfo.narSize,
    references: sortedUnique(narinfo.references).map(r => storePathFromBaseName(r)),
    deriver: narinfo.deriver != null ? storePathFromBaseName(narinfo.deriver) : null,
    signatures: sortedUnique(narinfo.sigs),
    ca: narinfo.ca ?? null
  }
}

/** A store path as given, or what a symlink to one (`./result`) points at; undefined otherwise. */
async function resolveStorePath (arg: string): Promise<string | undefined> {
  if (isStorePath(arg)) return arg
  try {
    const target = await realpath(arg)
    return isStorePath(target) ? target : undefined
  } catch {
    return undefined
  }
}

async function readKey (path: string): Promise<SecretKey> {
  try {
    return await readSecretKeyFile(path)
  } catch (err) {
    if (err instanceof KeyFormatError) throw new CommandFailed(err.message)
    throw new CommandFailed(`cannot read secret key file ${path}: ${(err as Error).message}`)
  }
}

export const pathInfoCommand: CommandModule<object, PathInfoArgs> = {
  command: 'path-info <paths..>',
  describe: 'Print the narinfo meshbuild would publish for valid store paths (uncompressed NAR), optionally signed',
  builder: (y: Argv) => y
    .positional('paths', { type: 'string', array: true, demandOption: true, describe: 'store paths (or symlinks to them, like ./result)' })
    .option('sign-key', { type: 'string', describe: 'Nix secret key file (name:base64, as nix-store --generate-binary-cache-key or meshbuild key generate write it) to add a signature with' })
    .option('json', { type: 'boolean', default: false, describe: 'Print a JSON array instead of narinfo text' })
    .epilog([
      'Each narinfo describes the NAR uncompressed: URL nar/<nix32 of NarHash>.nar, Compression none, FileHash and FileSize equal to NarHash and NarSize. Signatures the store already holds are kept; --sign-key adds one over the path\'s fingerprint.',
      'Several paths print several narinfos, separated by a blank line, in the order given.',
      '--json prints an array of {storePath, url, compression, narHash (sha256:<nix32>), narSize, references, deriver, signatures, ca}; references and deriver are full store paths (/nix/store/<hash>-<name>), not the base names narinfo text uses; deriver and ca are null when absent.',
      'Exit 1, printing nothing, if any path is not valid in the local store or the key file cannot be read or parsed.'
    ].join('\n\n'))
    .example('$0 path-info ./result --sign-key cache.sec', 'the signed narinfo of a build result')
    .example('$0 path-info $(nix-store -qR ./result) --json', 'a whole closure, as JSON') as unknown as Argv<PathInfoArgs>,
  handler: async (args) => {
    if (!Array.isArray(args.paths) || args.paths.length === 0) throw new UsageError('Name at least one store path.')
    // 1. The key first: a bad key file is the user's to fix before Nix is asked anything.
    const key = args['sign-key'] != null ? await readKey(args['sign-key']) : undefined

    // 2. Every argument must name a store path, and every path must be valid: all or nothing.
    const paths: string[] = []
    const notStorePaths: string[] = []
    for (const arg of args.paths.map(String)) {
      const path = await resolveStorePath(arg)
      if (path === undefined) notStorePaths.push(arg)
      else if (!paths.includes(path)) paths.push(path)
    }
    if (notStorePaths.length > 0) {
      throw new CommandFailed(`not a store path in ${NIX_STORE_DIR}: ${notStorePaths.map(p => `'${p}'`).join(', ')}`)
    }
    const store = openLocalStore()
    const infos = await store.queryPathInfos(paths).finally(() => { store.close() })
    const invalid = paths.filter(p => !infos.has(p))
    if (invalid.length > 0) {
      throw new CommandFailed(`not valid in the local store: ${invalid.map(p => `'${p}'`).join(', ')}`)
    }

    // 3. One narinfo per path, in the order given, signed if asked.
    const narinfos = paths.map(p => {
      const info = infos.get(p)
      if (info === undefined) throw new CommandFailed(`not valid in the local store: '${p}'`)
      const narinfo = narinfoForPath(info)
      return key != null ? signNarinfo(narinfo, key) : narinfo
    })
    process.stdout.write(args.json
      ? `${JSON.stringify(narinfos.map(pathInfoJson))}\n`
      : narinfos.map(formatNarinfo).join('\n'))
  }
}
