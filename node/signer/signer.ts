// The designated signing node's check of what workers offer. For each offered path not yet in the
// cache it (1) requires a signature by a key it trusts, (2) requires every reference to be in the
// cache or accepted before it in the same offer (Nix relies on a narinfo's references being
// there), (3) pulls the NAR, which the cache re-hashes while storing, and (4) publishes it with
// the cache key's signature. Anything that fails is refused, logged and kept for `status`.
import { Hash } from '../../protocols/nix/hash.ts'
import type { NarInfo } from '../../protocols/nix/narinfo.ts'
import { signNarinfo } from '../../protocols/nix/signature.ts'
import { formatPublicKey, publicKeyOf, type PublicKey, type SecretKey } from '../../protocols/nix/signing-key.ts'
import { storePathBaseName } from '../../protocols/nix/store-path.ts'
import type { NarConsumer, PathInfoMessage, SignOffer, SignReply } from '../../protocols/mesh/messages.ts'
import { signatureProblem } from '../../protocols/mesh/path-trust.ts'
import type { Logger } from '../log.ts'

/** What the signer needs of the cache it fills. */
export interface SignerCache {
  missing: (paths: string[]) => Promise<string[]>
  add: (info: NarInfo, nar: AsyncIterable<Uint8Array>, options?: { signal?: AbortSignal }) => Promise<unknown>
}

/** Streams the NARs of `paths`, in order, into `consume`. */
export type NarSource = (paths: string[], consume: NarConsumer) => Promise<void>

export interface Rejection {
  path: string
  from: string
  reason: string
  permanent: boolean
  at: string
}

export interface SignerInit {
  cache: SignerCache
  cacheKey: SecretKey
  /** Keys from --trusted-keys (none when not given). Announced keys are never trusted. */
  trustedKeys?: PublicKey[]
  /** This node's own key: what the signer built itself it trusts without being told. */
  selfKey: PublicKey
  log: Logger
}

const KEPT_REJECTIONS = 50

export class Signer {
  private readonly init: SignerInit
  private readonly recent: Rejection[] = []
  private queue: Promise<unknown> = Promise.resolve()
  readonly counters = { stored: 0, rejected: 0 }

  constructor (init: SignerInit) {
    this.init = init
  }

  /** The keys whose signatures make a worker's output acceptable. */
  trusted (): PublicKey[] {
    const self = this.init.selfKey
    const given = (this.init.trustedKeys ?? []).filter(k => !(k.name === self.name && Buffer.from(k.key).equals(Buffer.from(self.key))))
    return [self, ...given]
  }

  trustPolicy (): string {
    return this.init.trustedKeys !== undefined ? 'the --trusted-keys file and its own node key' : 'only its own node key (no --trusted-keys given)'
  }

  rejections (): Rejection[] {
    return [...this.recent]
  }

  /** Handles one offer; offers are taken one at a time so two never store the same path at once. */
  async handleOffer (from: string, offer: SignOffer, source: NarSource): Promise<SignReply> {
    const run = this.queue.then(async () => await this.process(from, offer, source))
    this.queue = run.catch(() => {})
    return await run
  }

  private async process (from: string, offer: SignOffer, source: NarSource): Promise<SignReply> {
    const trusted = this.trusted()
    const offered = offer.paths.map(i => i.path)
    const refs = offer.paths.flatMap(i => i.references)
    const absent = new Set(await this.init.cache.missing([...new Set([...offered, ...refs])]))
    const stored: string[] = []
    const rejected: SignReply['rejected'] = []
    const reject = (path: string, reason: string, permanent: boolean): void => {
      rejected.push({ path, reason, permanent })
      this.note({ path, from, reason, permanent, at: new Date().toISOString() })
    }

    // 1–2. Signatures and references, in closure order.
    const accepted = new Map<string, PathInfoMessage>()
    for (const info of offer.paths) {
      if (!absent.has(info.path)) { stored.push(info.path); continue }
      const why = signatureProblem(info, { keys: trusted, policy: this.trustPolicy() })
      // The trusted keys come from this node's configuration only, so a refusal is final.
      if (why !== undefined) { reject(info.path, why, true); continue }
      const missingRef = info.references.find(r => r !== info.path && absent.has(r) && !accepted.has(r))
      if (missingRef !== undefined) { reject(info.path, `its reference ${missingRef} is not in the cache`, false); continue }
      accepted.set(info.path, info)
    }
    if (accepted.size === 0) return { stored, rejected }

    // 3–4. Pull, re-hash while storing, publish with the cache's signature.
    const done = new Set<string>()
    try {
      await source([...accepted.keys()], async (header, nar) => {
        const info = accepted.get(header.path)
        if (info === undefined) throw new Error(`sent ${header.path}, which was not asked for`)
        const narinfo = this.cacheNarinfo(info)
        try {
          await this.init.cache.add(narinfo, nar)
        } catch (err) {
          // Only a NAR that is not what the worker signed is refused for good; a broken
          // transfer is worth another offer.
          const e = err as Error
          if (e.name === 'NarHashMismatch') reject(info.path, `NAR refused: ${e.message}`, true)
          throw err
        }
        done.add(info.path)
        stored.push(info.path)
        this.counters.stored++
        this.init.log.info(`cached ${info.path} from ${from}`)
      })
    } catch (err) {
      const e = err as Error
      this.init.log.warn(`pulling NARs from ${from} stopped: ${e.message}`)
      for (const path of accepted.keys()) {
        if (!done.has(path) && !rejected.some(r => r.path === path)) reject(path, `not stored: the transfer stopped (${e.message})`, false)
      }
    }
    return { stored, rejected }
  }

  private cacheNarinfo (info: PathInfoMessage): NarInfo {
    return cacheNarinfo(info, this.init.cacheKey)
  }

  private note (r: Rejection): void {
    this.counters.rejected++
    this.init.log.warn(`refused ${r.path} from ${r.from}: ${r.reason}`)
    this.recent.push(r)
    if (this.recent.length > KEPT_REJECTIONS) this.recent.shift()
  }

  publicCacheKey (): string {
    return formatPublicKey(publicKeyOf(this.init.cacheKey))
  }
}

/**
 * The narinfo the cache publishes for a path, signed with the cache key; the cache fills in URL,
 * Compression, FileHash and FileSize when it stores the NAR.
 */
export function cacheNarinfo (info: Pick<PathInfoMessage, 'path' | 'narHash' | 'narSize' | 'references' | 'deriver' | 'ca'>, cacheKey: SecretKey): NarInfo {
  return signNarinfo({
    storePath: info.path,
    url: '',
    compression: 'none',
    narHash: Hash.parse(info.narHash),
    narSize: info.narSize,
    references: info.references.map(r => storePathBaseName(r)),
    ...(info.deriver !== undefined ? { deriver: storePathBaseName(info.deriver) } : {}),
    sigs: [],
    ...(info.ca !== undefined ? { ca: info.ca } : {})
  }, cacheKey)
}
