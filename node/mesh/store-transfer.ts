// Store paths between peers: the path-info protocol says what a closure holds, the nar protocol
// streams the paths a receiver lacks. Both sides live here because they share one contract: NARs
// arrive in closure order (references first), each checked against its NarHash while it streams.
//
// path-info: 1. requester writes {roots, withInputs?}; 2. server replies {infos (closure, references
//            first), missing, inputs?}. With withInputs, the outputs of the input derivations of
//            every .drv root are described too (listed in `inputs`; in `missing` where absent), so
//            a worker gets a job's .drv closure and its inputs in one round.
// nar:       1. requester writes {paths}; 2. for each path the server writes a header {path, info}
//            followed by exactly info.narSize bytes of NAR, or a header {path, error} and nothing.
import { inputDrvPaths, outputPaths } from '../../protocols/nix/derivation.ts'
import { readDerivationCached } from '../nix/derivation-cache.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import { MAX_LIST_ITEMS, MAX_REQUEST_BYTES, NAR_IDLE_TIMEOUT_MS } from '../../protocols/mesh/constants.ts'
import { validateNarHeader, type NarConsumer, type PathInfoMessage } from '../../protocols/mesh/messages.ts'
import { NAR, PATH_INFO } from '../../protocols/mesh/request-protocols.ts'
import { toMessage } from '../nix/path-info-message.ts'
import { ProtocolError } from '../../protocols/mesh/stream-channel.ts'
import type { ImportInfo, NarEntry, PathInfo, StoreBackend } from '../nix/store-backend.ts'
import type { MeshNetwork } from './network.ts'
import { openRequest, request, serve, serveStream, type Unserve } from './rpc.ts'
import { requireTrusted, signServed, type PathTrust } from '../../protocols/mesh/path-trust.ts'
import type { SecretKey } from '../../protocols/nix/signing-key.ts'
import type { Logger } from '../log.ts'

export class PathUnavailable extends Error {
  override name = 'PathUnavailable'
}

/** The peer describes a root with another NAR hash than the one expected of it; nothing was fetched. */
export class UnexpectedNarHash extends Error {
  override name = 'UnexpectedNarHash'
}

/**
 * The outputs of the input derivations of `drvPaths`: what a build of them needs besides their
 * .drv closure. Read from the .drv files; a .drv that is not here (or not readable) adds nothing.
 */
export async function inputOutputs (drvPaths: string[]): Promise<string[]> {
  const out = new Set<string>()
  for (const drvPath of drvPaths) {
    if (!drvPath.endsWith('.drv')) continue
    try {
      const drv = await readDerivationCached(drvPath)
      for (const inputDrv of inputDrvPaths(drv)) {
        const outs = outputPaths(await readDerivationCached(inputDrv))
        for (const name of drv.inputDrvs.get(inputDrv) ?? []) {
          const p = outs.get(name)
          if (p !== undefined && p !== '') out.add(p)
        }
      }
    } catch {}
  }
  return [...out]
}

/**
 * Serves this node's store to peers. Every path info served (path-info replies and NAR headers)
 * carries a signature by `key`, the node's key, made on the fly: a receiver imports only what a
 * key it trusts vouches for, and the serving member's announced key is the one it knows.
 */
export async function serveStore (network: MeshNetwork, store: StoreBackend, log: Logger, key?: SecretKey): Promise<Unserve> {
  const served = (info: PathInfo): PathInfoMessage => key === undefined ? toMessage(info) : signServed(toMessage(info), key)
  const unservePathInfo = await serve(network, PATH_INFO, async (peer, req) => {
    // The .drv files are read before Nix says they are valid: an invalid one is reported missing
    // below, and the requester then gives up on it, whatever inputs it named.
    const roots = new Set(req.roots)
    const inputs = req.withInputs === true
      ? (await inputOutputs(req.roots)).filter(p => !roots.has(p)).slice(0, MAX_LIST_ITEMS)
      : []
    const { infos, missing } = await store.closureInfos([...req.roots, ...inputs])
    log.debug(`path-info for ${peer}: ${infos.length} paths, ${missing.length} missing${req.withInputs === true ? `, ${inputs.length} inputs` : ''}`)
    return { infos: infos.map(served), missing, ...(req.withInputs === true ? { inputs } : {}) }
  })

  const unserveNar = await serveStream(network, NAR, async (peer, req, channel) => {
    // One query for the whole request; each NAR is then one nix-store --dump.
    const infos = await store.queryPathInfos(req.paths)
    for (const path of req.paths) {
      const info = infos.get(path)
      if (info === undefined) {
        await channel.writeMessage({ path, error: 'not valid in this store' })
        continue
      }
      await channel.writeMessage({ path, info: served(info) })
      let sent = 0
      for await (const chunk of store.exportNar(path, { knownValid: true })) {
        await channel.write(chunk)
        sent += chunk.byteLength
        network.countNarBytes('sent', peer, chunk.byteLength)
      }
      if (sent !== info.narSize) throw new ProtocolError(`NAR of ${path} was ${sent} bytes, registered as ${info.narSize}`)
    }
    log.debug(`sent ${req.paths.length} NARs to ${peer}`)
  })
  return async () => { await unservePathInfo(); await unserveNar() }
}

export interface FetchResult {
  /** Paths imported into the local store. */
  imported: string[]
  bytes: number
  /** Every path the peer described that is now valid here (imported or valid before). */
  present: string[]
  /** With `withInputs`: input outputs the peer does not have (the roots themselves never are). */
  missing: string[]
}

export interface FetchOptions {
  /** Also fetch the outputs of the input derivations of every .drv root, in the same round. */
  withInputs?: boolean
  /**
   * The keys one of which must have signed every path imported (checked on the path-info reply,
   * before anything is fetched; UntrustedPath otherwise). Without it nothing is checked: the
   * node always passes it, only tests of the transfer itself leave it out.
   */
  trust?: PathTrust
  /** Root path -> the NAR hash (`sha256:<nix32>`) it must have, checked before anything is fetched. */
  expectNarHashes?: Record<string, string>
}

/**
 * Makes the closure of `roots` valid in the local store, fetching what is missing from `peer`.
 * Throws PathUnavailable when the peer lacks a root, NarHashMismatch (from the store) when a NAR
 * is not what its path-info claimed; paths imported before the failing one stay imported.
 * With `options.trust`, throws UntrustedPath, having imported nothing, when a path it would
 * import carries no valid signature by one of those keys.
 */
export async function fetchClosure (network: MeshNetwork, store: Pick<StoreBackend, 'isValid' | 'importNars'>, peer: string, roots: string[], signal?: AbortSignal, options: FetchOptions = {}): Promise<FetchResult> {
  if (roots.length === 0) return { imported: [], bytes: 0, present: [], missing: [] }
  // 1. Ask what the closure holds. No local check first: what is fetched is almost never here
  //    yet, and the check of the whole closure below covers the roots.
  const reply = await request(network, peer, PATH_INFO, { roots, ...(options.withInputs === true ? { withInputs: true } : {}) }, signal !== undefined ? { signal } : {})
  const asked = new Set(roots)
  const inputs = options.withInputs === true ? (reply.inputs ?? []) : []
  const missingRoots = reply.missing.filter(m => asked.has(m))
  if (missingRoots.length > 0) throw new PathUnavailable(`${peer} does not have ${missingRoots.join(', ')}`)
  const missingInputs = reply.missing.filter(m => !asked.has(m))
  const inputSet = new Set(inputs)
  const unasked = missingInputs.find(m => !inputSet.has(m))
  if (unasked !== undefined) throw new ProtocolError(`${peer} answered path-info calling ${unasked} missing, which was not asked for`)
  // A reply that neither describes a root nor calls it missing would have us import other paths;
  // so would one describing paths outside the closure of what was asked.
  const described = new Map(reply.infos.map(i => [i.path, i]))
  const undescribed = roots.filter(r => !described.has(r))
  if (undescribed.length > 0) throw new ProtocolError(`${peer} answered path-info without describing ${undescribed.join(', ')}`)
  const stray = outsideClosure(described, [...roots, ...inputs.filter(i => described.has(i))])
  if (stray !== undefined) throw new ProtocolError(`${peer} answered path-info describing ${stray}, outside the closure asked for`)
  // A checked build's outputs must be the ones two builders agreed on: a peer that reported one
  // hash and serves another is refused before a byte of it is imported.
  for (const [path, hash] of Object.entries(options.expectNarHashes ?? {})) {
    const said = described.get(path)?.narHash
    if (said !== undefined && said !== hash) throw new UnexpectedNarHash(`${peer} serves ${path} with NAR hash ${said}, not the agreed ${hash}`)
  }

  // 2. Fetch what we lack, references first, into the store in one batch.
  const have = await store.isValid(reply.infos.map(i => i.path))
  const needed = reply.infos.filter(i => !have.has(i.path))
  // Only what a trusted key vouches for enters the store: every path checked before the first NAR.
  if (options.trust !== undefined) requireTrusted(needed, options.trust, peer)
  const present = reply.infos.map(i => i.path)
  if (needed.length === 0) return { imported: [], bytes: 0, present, missing: missingInputs }
  const nars = async function * (): AsyncGenerator<NarEntry> {
    for await (const { info, nar } of receiveNars(network, peer, needed.map(i => i.path), signal)) {
      // The NAR is checked against path-info's hash: the header must say the same.
      const said = described.get(info.path)
      if (said === undefined || said.narHash !== info.narHash || said.narSize !== info.narSize) {
        throw new ProtocolError(`NAR header from ${peer} for ${info.path} contradicts its path-info`)
      }
      yield { path: info.path, nar }
    }
  }
  try {
    await store.importNars(needed.map(importInfo), nars(), signal !== undefined ? { signal } : {})
  } catch (err) {
    penaliseBadData(network, peer, err)
    throw err
  }
  return { imported: needed.map(i => i.path), bytes: needed.reduce((n, i) => n + i.narSize, 0), present, missing: missingInputs }
}

function importInfo (info: PathInfoMessage): ImportInfo {
  return {
    path: info.path,
    narHash: Hash.parse(info.narHash),
    narSize: info.narSize,
    references: info.references,
    ...(info.deriver !== undefined ? { deriver: info.deriver } : {}),
    // Kept in the receiving store, as `nix copy` keeps them (the CLI backend cannot).
    ...(info.signatures !== undefined ? { signatures: info.signatures } : {}),
    ...(info.ca !== undefined ? { ca: info.ca } : {})
  }
}

/** A described path not reachable from `roots` through described references, if any. */
function outsideClosure (described: Map<string, PathInfoMessage>, roots: string[]): string | undefined {
  const seen = new Set<string>()
  const todo = [...roots]
  for (let p = todo.pop(); p !== undefined; p = todo.pop()) {
    if (seen.has(p)) continue
    seen.add(p)
    for (const r of described.get(p)?.references ?? []) if (!seen.has(r)) todo.push(r)
  }
  for (const p of described.keys()) if (!seen.has(p)) return p
  return undefined
}


/**
 * Streams the NARs of `paths` from `peer` over one nar stream, handing each to `consume` in
 * order. Throws PathUnavailable when the peer cannot send one; any error aborts the stream.
 */
export async function pullNars (network: MeshNetwork, peer: string, paths: string[], consume: NarConsumer, signal?: AbortSignal): Promise<void> {
  for await (const { info, nar } of receiveNars(network, peer, paths, signal)) {
    try {
      await consume(info, nar)
    } catch (err) {
      penaliseBadData(network, peer, err)
      throw err
    }
  }
}

/** A NAR whose bytes are not the NarHash/NarSize its sender claimed: the sender is cut off. */
function penaliseBadData (network: MeshNetwork, peer: string, err: unknown): void {
  const e = err as Error
  if (e.name === 'NarHashMismatch') network.penalise(peer, `served a NAR that does not match its hash: ${e.message.slice(0, 300)}`)
}

/**
 * The NARs of `paths` from `peer` over one nar stream, in order, each with its header's info.
 * Whatever of a NAR the consumer leaves unread is skipped before the next header is read.
 * Throws PathUnavailable when the peer cannot send one; an error, or a consumer that stops
 * early, aborts the stream.
 */
export async function * receiveNars (network: MeshNetwork, peer: string, paths: string[], signal?: AbortSignal): AsyncGenerator<{ info: PathInfoMessage, nar: AsyncIterable<Uint8Array> }> {
  const channel = await openRequest(network, peer, NAR, { paths }, signal !== undefined ? { signal } : {})
  let failure: Error = new Error('the NAR consumer stopped early')
  let done = false
  try {
    for (const expected of paths) {
      const header = await channel.readMessage(validateNarHeader, { maxBytes: MAX_REQUEST_BYTES, timeoutMs: NAR_IDLE_TIMEOUT_MS, signal })
      if (header.path !== expected) throw new ProtocolError(`expected NAR of ${expected}, got ${header.path}`)
      if (header.info === undefined) throw new PathUnavailable(`${peer} cannot send ${header.path}: ${header.error ?? 'no reason given'}`)
      if (header.info.path !== header.path) throw new ProtocolError(`NAR header for ${header.path} describes ${header.info.path}`)
      let left = header.info.narSize
      const raw = channel.readRaw(left, { idleTimeoutMs: NAR_IDLE_TIMEOUT_MS, signal })
      const nar = (async function * () {
        for await (const chunk of raw) {
          left -= chunk.byteLength
          network.countNarBytes('received', peer, chunk.byteLength)
          yield chunk
        }
      })()
      yield { info: header.info, nar }
      // A consumer may skip a NAR, or close it without reading (the path became valid meanwhile):
      // read past what is left of it from the channel itself, so the next header is found.
      if (left > 0) for await (const chunk of channel.readRaw(left, { idleTimeoutMs: NAR_IDLE_TIMEOUT_MS, signal })) network.countNarBytes('received', peer, chunk.byteLength)
    }
    await channel.close()
    done = true
  } catch (err) {
    failure = err as Error
    throw err
  } finally {
    if (!done) channel.abort(failure)
  }
}
