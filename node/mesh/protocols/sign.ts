// The sign protocol, both ends (wire contract: protocols/mesh/request-protocols.ts SIGN).
// 1. a worker writes {paths}: what it built, with its signatures, references first;
// 2. the signer pulls the NARs it lacks over nar, stores them, and replies {stored, rejected}.
import type { SignOffer, SignReply } from '../../../protocols/mesh/messages.ts'
import { SIGN } from '../../../protocols/mesh/request-protocols.ts'
import type { Signer } from '../../signer/signer.ts'
import type { Logger } from '../../log.ts'
import type { MeshNetwork } from '../network.ts'
import { request, serve, type RequestOptions, type Unserve } from '../rpc.ts'
import { pullNars } from '../store-transfer.ts'

/** The signer's side: checks the offer, pulls its NARs from the offering peer, stores them. */
export async function serveSign (network: MeshNetwork, signer: Signer, log: Logger): Promise<Unserve> {
  return await serve(network, SIGN, async (from, offer) => {
    log.info(`${from} offers ${offer.paths.length} path(s)`)
    return await signer.handleOffer(from, offer, async (paths, consume) => { await pullNars(network, from, paths, consume) })
  })
}

/** The worker's side: offers `offer` to the signer `peer`. */
export async function requestSign (network: MeshNetwork, peer: string, offer: SignOffer, options: RequestOptions = {}): Promise<SignReply> {
  return await request(network, peer, SIGN, offer, options)
}
