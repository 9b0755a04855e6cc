// The designated signing node's check of what workers offer. For each offered path not yet in the
// cache it (1) requires a signature by a key it trusts, (2) requires every reference to be in the
// cache or accepted before it in the same offer (Nix relies on a narinfo's references being
// there), (3) pulls the NAR, which the cache re-hashes while storing, and (4) publishes it with
// the cache key's signature. Anything that fails is refused, logged and kept for `status`.
import { Hash } from '../../protocols/nix/hash.ts'
import type { NarInfo } from '../../protocols/nix/narinfo.ts'
import { checkDetached, signNarinfo, type SignatureFailure } from '../../protocols/nix/signature.ts'
import { formatPublicKey, publicKeyOf, type PublicKey, type SecretKey } from '../../protocols/nix/signing-key.ts'
import { storePathBaseName } from '../../protocols/nix/store-path.ts'
import type { PathInfoMessage, SignOffer, SignReply } from '../../protocols/mesh/messages.ts'
import type { NarConsumer } from '../mesh/store-transfer.ts'
import { pathFingerprint } from './offer.ts'
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
  /** Keys from --trusted-keys; when absent, `meshKeys()` decides. */
  trustedKeys?: PublicKey[]
  /** Keys announced by the mesh's nodes (this one included), trusted when no file is given. */
  meshKeys: () => PublicKey[]
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
    return this.init.trustedKeys ?? this.init.meshKeys()
  }

  trustPolicy (): string {
    return this.init.trustedKeys !== undefined ? 'trusted-keys file' : 'keys of the mesh\'s nodes'
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
      const why = this.signatureProblem(info, trusted)
      // Trusting the mesh's keys, an unknown key may be a peer whose beacon has not arrived yet:
      // defer rather than refuse. A keys file is final.
      if (why !== undefined) { reject(info.path, why, this.init.trustedKeys !== undefined || !why.startsWith('signed only by untrusted')); continue }
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

  /** Why no signature of `info` verifies with a trusted key, or undefined when one does. */
  private signatureProblem (info: PathInfoMessage, trusted: PublicKey[]): string | undefined {
    const sigs = info.signatures ?? []
    if (sigs.length === 0) return 'it carries no signature'
    let fp: string
    try {
      fp = pathFingerprint({ path: info.path, narHash: Hash.parse(info.narHash), narSize: info.narSize, references: info.references })
    } catch (err) {
      return `its metadata is malformed: ${(err as Error).message}`
    }
    const failures: SignatureFailure[] = []
    for (const sig of sigs) {
      const check = checkDetached(fp, sig, trusted)
      if (check.ok) return undefined
      failures.push(check)
    }
    const untrusted = failures.filter(f => f.problem === 'untrusted-key').map(f => f.keyName)
    const invalid = failures.filter(f => f.problem === 'invalid').map(f => f.keyName)
    if (invalid.length > 0) return `its signature by ${invalid.join(', ')} does not match its NarHash, NarSize and references`
    if (untrusted.length > 0) return `signed only by untrusted key(s) ${untrusted.join(', ')} (trusting ${this.trustPolicy()}: ${trusted.map(k => k.name).join(', ') || 'none'})`
    return 'its signatures are malformed'
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
