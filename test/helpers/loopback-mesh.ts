// A real MeshNode on loopback (this machine's Nix store, no mDNS) and a rogue member connected to
// it: the in-process setting of the tests that play a lying or broken peer against a node.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { MeshNode, type NodeOptions } from '../../node/mesh/mesh-node.ts'
import { MeshNetwork } from '../../node/mesh/network.ts'
import { createLogger, type Logger } from '../../node/log.ts'
import { execText } from '../../node/nix/exec.ts'
import { waitFor } from './wait.ts'

export const LOCAL_SYSTEM = (await execText('nix-instantiate', ['--eval', '--expr', 'builtins.currentSystem'])).trim().replace(/"/g, '')

/** A node with one slot for this machine's system, listening on 127.0.0.1 only. */
export async function startLoopbackNode (dir: string, meshSecret: string, options: Partial<NodeOptions> & { log: Logger }): Promise<MeshNode> {
  return await MeshNode.start({
    dataDir: join(dir, 'node'),
    listen: ['/ip4/127.0.0.1/tcp/0'],
    mdns: false,
    capabilities: { systems: [LOCAL_SYSTEM], features: [], mandatoryFeatures: [] },
    maxJobs: 1,
    speedFactor: 1,
    meshSecret,
    minFreeDiskBytes: 0,
    ...options
  })
}

/** A bare MeshNetwork holding the node's secret, started and connected to the node. */
export async function startRogue (node: MeshNode, meshSecret: string, log: Logger = createLogger('rogue', 'error')): Promise<MeshNetwork> {
  const rogue = new MeshNetwork({
    privateKey: await generateKeyPair('Ed25519'),
    listen: ['/ip4/127.0.0.1/tcp/0'],
    meshSecret,
    mdns: false,
    bootstrap: [node.network.addresses()[0] ?? assert.fail('the node listens nowhere')],
    log
  })
  await rogue.start()
  await waitFor(() => node.network.connectedPeers().includes(rogue.peerId), 10_000, 'the rogue to connect')
  return rogue
}
