// Store paths between peers: the path-info protocol says what a closure holds, the nar protocol
// streams the paths a receiver lacks. Both sides live here because they share one contract: NARs
// arrive in closure order (references first), each checked against its NarHash while it streams.
//
// path-info: 1. requester writes {roots}; 2. server replies {infos (closure, references first), missing}.
// nar:       1. requester writes {paths}; 2. for each path the server writes a header {path, info}
//            followed by exactly info.narSize bytes of NAR, or a header {path, error} and nothing.
import { Hash } from '../../protocols/nix/hash.ts'
import {
  MAX_REPLY_BYTES, MAX_REQUEST_BYTES, NAR_IDLE_TIMEOUT_MS, PROTOCOL_NAR, PROTOCOL_PATH_INFO, REPLY_TIMEOUT_MS
} from '../../protocols/mesh/constants.ts'
import {
  validateNarHeader, validateNarRequest, validatePathInfoReply, validatePathInfoRequest, type PathInfoMessage
} from '../../protocols/mesh/messages.ts'
import { ProtocolError } from '../../protocols/mesh/stream-channel.ts'
import type { PathInfo, StoreBackend } from '../nix/store-backend.ts'
import type { MeshNetwork } from './network.ts'
import type { Logger } from '../log.ts'

export class PathUnavailable extends Error {
  override name = 'PathUnavailable'
}

export function toMessage (info: PathInfo): PathInfoMessage {
  return {
    path: info.path,
    narHash: info.narHash.toNix32(),
    narSize: info.narSize,
    references: info.references,
    ...(info.deriver !== undefined ? { deriver: info.deriver } : {}),
    signatures: info.signatures,
    ...(info.ca !== undefined ? { ca: info.ca } : {})
  }
}

/** Serves this node's store to peers. */
export async function serveStore (network: MeshNetwork, store: StoreBackend, log: Logger): Promise<void> {
  await network.handle(PROTOCOL_PATH_INFO, async (channel, peer) => {
    const req = await channel.readMessage(validatePathInfoRequest, { maxBytes: MAX_REQUEST_BYTES, timeoutMs: REPLY_TIMEOUT_MS })
    const valid = await store.isValid(req.roots)
    const missing = req.roots.filter(r => !valid.has(r))
    const closure = valid.size > 0 ? await store.closure([...valid]) : []
    const infos = await store.queryPathInfos(closure)
    const ordered = closure.map(p => infos.get(p)).filter((i): i is PathInfo => i !== undefined).map(toMessage)
    log.debug(`path-info for ${peer}: ${ordered.length} paths, ${missing.length} missing`)
    await channel.writeMessage({ infos: ordered, missing })
  })

  await network.handle(PROTOCOL_NAR, async (channel, peer) => {
    const req = await channel.readMessage(validateNarRequest, { maxBytes: MAX_REQUEST_BYTES, timeoutMs: REPLY_TIMEOUT_MS })
    for (const path of req.paths) {
      const info = await store.queryPathInfo(path)
      if (info === null) {
        await channel.writeMessage({ path, error: 'not valid in this store' })
        continue
      }
      await channel.writeMessage({ path, info: toMessage(info) })
      let sent = 0
      for await (const chunk of store.exportNar(path)) {
        await channel.write(chunk)
        sent += chunk.byteLength
      }
      if (sent !== info.narSize) throw new ProtocolError(`NAR of ${path} was ${sent} bytes, registered as ${info.narSize}`)
    }
    log.debug(`sent ${req.paths.length} NARs to ${peer}`)
  })
}

export interface FetchResult {
  /** Paths imported into the local store. */
  imported: string[]
  bytes: number
}

/**
 * Makes the closure of `roots` valid in the local store, fetching what is missing from `peer`.
 * Throws PathUnavailable when the peer lacks a root, NarHashMismatch (from the store) when a NAR
 * is not what its header claimed.
 */
export async function fetchClosure (network: MeshNetwork, store: StoreBackend, peer: string, roots: string[], signal?: AbortSignal): Promise<FetchResult> {
  const already = await store.isValid(roots)
  const wanted = roots.filter(r => !already.has(r))
  if (wanted.length === 0) return { imported: [], bytes: 0 }

  // 1. Ask what the closure holds.
  const infoChannel = await network.open(peer, PROTOCOL_PATH_INFO, signal)
  let reply
  try {
    await infoChannel.writeMessage({ roots: wanted }, signal)
    reply = await infoChannel.readMessage(validatePathInfoReply, { maxBytes: MAX_REPLY_BYTES, timeoutMs: REPLY_TIMEOUT_MS, signal })
  } finally {
    await infoChannel.close()
  }
  if (reply.missing.length > 0) throw new PathUnavailable(`${peer} does not have ${reply.missing.join(', ')}`)
  // A reply that neither describes a root nor calls it missing would have us import other paths.
  const described = new Map(reply.infos.map(i => [i.path, i]))
  const undescribed = wanted.filter(r => !described.has(r))
  if (undescribed.length > 0) throw new ProtocolError(`${peer} answered path-info without describing ${undescribed.join(', ')}`)

  // 2. Fetch what we lack, references first.
  const have = await store.isValid(reply.infos.map(i => i.path))
  const needed = reply.infos.filter(i => !have.has(i.path))
  if (needed.length === 0) return { imported: [], bytes: 0 }
  let bytes = 0
  await pullNars(network, peer, needed.map(i => i.path), async (info, nar) => {
    // The NAR is checked against its header's hash: that must be the hash path-info gave.
    const said = described.get(info.path)
    if (said === undefined || said.narHash !== info.narHash || said.narSize !== info.narSize) {
      throw new ProtocolError(`NAR header from ${peer} for ${info.path} contradicts its path-info`)
    }
    await store.importNar({
      path: info.path,
      narHash: Hash.parse(info.narHash),
      narSize: info.narSize,
      references: info.references,
      ...(info.deriver !== undefined ? { deriver: info.deriver } : {})
    }, nar, { signal })
    bytes += info.narSize
  }, signal)
  return { imported: needed.map(i => i.path), bytes }
}

/** What to do with each NAR as it arrives; it must read `nar` to its end (or throw). */
export type NarConsumer = (info: PathInfoMessage, nar: AsyncIterable<Uint8Array>) => Promise<void>

/**
 * Streams the NARs of `paths` from `peer` over one nar stream, handing each to `consume` in
 * order. Throws PathUnavailable when the peer cannot send one; any error aborts the stream.
 */
export async function pullNars (network: MeshNetwork, peer: string, paths: string[], consume: NarConsumer, signal?: AbortSignal): Promise<void> {
  const channel = await network.open(peer, PROTOCOL_NAR, signal)
  try {
    await channel.writeMessage({ paths }, signal)
    for (const expected of paths) {
      const header = await channel.readMessage(validateNarHeader, { maxBytes: MAX_REQUEST_BYTES, timeoutMs: NAR_IDLE_TIMEOUT_MS, signal })
      if (header.path !== expected) throw new ProtocolError(`expected NAR of ${expected}, got ${header.path}`)
      if (header.info === undefined) throw new PathUnavailable(`${peer} cannot send ${header.path}: ${header.error ?? 'no reason given'}`)
      if (header.info.path !== header.path) throw new ProtocolError(`NAR header for ${header.path} describes ${header.info.path}`)
      const nar = channel.readRaw(header.info.narSize, { idleTimeoutMs: NAR_IDLE_TIMEOUT_MS, signal })
      await consume(header.info, nar)
      // A consumer may skip a NAR (the path became valid meanwhile): read past it to the next header.
      for await (const _ of nar) {}
    }
    await channel.close()
  } catch (err) {
    channel.abort(err as Error)
    throw err
  }
}
